// Our own retired signing keys (`parley admin rotate-signing-key`): published under
// `old_verify_keys` with the time they stopped being used, so peers (and we) can still check what
// was signed with them before.
// https://spec.matrix.org/latest/server-server-api/#publishing-keys

import type { Database } from "../../schema/db.ts";
import { schema } from "../../schema/db.ts";
import { decodeBase64, encodeUnpaddedBase64 } from "../protocol/base64.ts";
import type { VerifyKey } from "./server-keys.ts";

export class OwnOldKeys {
  private cached?: Promise<Map<string, VerifyKey>>;

  constructor(private readonly db: Database) {}

  /** Key ID → key and `expiredTs`. Read once: keys are only retired while the key file changes, which needs a restart. */
  list(): Promise<Map<string, VerifyKey>> {
    this.cached ??= this.load().catch((err: unknown) => {
      this.cached = undefined;
      throw err;
    });
    return this.cached;
  }

  private async load(): Promise<Map<string, VerifyKey>> {
    const rows = await this.db.select().from(schema.ownOldVerifyKeys);
    return new Map(rows.map((r) => [r.keyId, { key: decodeBase64(r.verifyKey), validUntilTs: r.expiredTs, expiredTs: r.expiredTs }]));
  }

  /** Records a key we no longer sign with, expired at `expiredTs`. Retiring a key twice keeps the first time. */
  async retire(keyId: string, publicKey: Uint8Array, expiredTs: number): Promise<void> {
    await this.db
      .insert(schema.ownOldVerifyKeys)
      .values({ keyId, verifyKey: encodeUnpaddedBase64(publicKey), expiredTs })
      .onConflictDoNothing();
    this.cached = undefined;
  }
}

/** The `old_verify_keys` object of our key response. */
export function oldVerifyKeysJson(keys: Map<string, VerifyKey>): Record<string, { key: string; expired_ts: number }> {
  const out: Record<string, { key: string; expired_ts: number }> = {};
  for (const [keyId, k] of keys) out[keyId] = { key: encodeUnpaddedBase64(k.key), expired_ts: k.expiredTs ?? k.validUntilTs };
  return out;
}
