// Other servers' signing keys: fetched directly from `/_matrix/key/v2/server`, or through notary
// servers (`/_matrix/key/v2/query`) when the server cannot be reached; checked (server name,
// self-signature); kept in memory and in the database until `valid_until_ts`, which the spec caps at
// 7 days after we fetched it; refetched when an unknown key ID appears (at most every few seconds
// per server, so forged key IDs cannot make us hammer a peer).
// https://spec.matrix.org/latest/server-server-api/#retrieving-server-keys

import { eq, sql } from "drizzle-orm";
import type { Logger } from "pino";
import { z } from "zod";
import { schema, type Database } from "../../schema/db.ts";
import { Base64Error, decodeBase64, encodeUnpaddedBase64 } from "../protocol/base64.ts";
import { canonicalJson } from "../protocol/canonical-json.ts";
import { type SigningKey, verifyJsonSignature } from "../protocol/signing.ts";
import type { FederationHttpClient } from "./http-client.ts";

/** The spec: "the lesser of this field and 7 days into the future". */
export const MAX_KEY_VALIDITY_MS = 7 * 24 * 3600_000;
/** A server whose key we just failed to find is not asked again sooner than this. */
const REFETCH_INTERVAL_MS = 10_000;
const MEMORY_LIMIT = 20_000;

export interface VerifyKey {
  key: Uint8Array;
  /** Capped: never more than 7 days after it was fetched. */
  validUntilTs: number;
  /** Set for keys the server lists under old_verify_keys: valid only for what was signed before. */
  expiredTs?: number;
}

const keyResponseSchema = z.object({
  server_name: z.string(),
  valid_until_ts: z.number().int(),
  verify_keys: z.record(z.string(), z.object({ key: z.string() })),
  old_verify_keys: z.record(z.string(), z.object({ key: z.string(), expired_ts: z.number().int() })).optional(),
  signatures: z.record(z.string(), z.record(z.string(), z.string())),
});

export type ServerKeyResponse = z.infer<typeof keyResponseSchema>;

export class KeyResponseError extends Error {}

/**
 * Checks a `/_matrix/key/v2/server` response for `serverName`: its shape, that it names that
 * server, and that it is signed by the server with at least one of its own current keys, every
 * such signature valid. Returns the keys it lists (validity capped at `fetchedTs` + 7 days).
 */
export function checkKeyResponse(json: unknown, serverName: string, fetchedTs: number): Map<string, VerifyKey> {
  const parsed = keyResponseSchema.safeParse(json);
  if (!parsed.success) throw new KeyResponseError(`${serverName}: malformed key response`);
  const response = parsed.data;
  if (response.server_name !== serverName) {
    throw new KeyResponseError(`${serverName}: the key response is for ${JSON.stringify(response.server_name)}`);
  }
  const validUntilTs = Math.min(response.valid_until_ts, fetchedTs + MAX_KEY_VALIDITY_MS);
  const keys = new Map<string, VerifyKey>();
  const decode = (keyId: string, b64: string): Uint8Array => {
    try {
      const key = decodeBase64(b64);
      if (key.length !== 32) throw new KeyResponseError(`${serverName}: key ${keyId} is not 32 bytes`);
      return key;
    } catch (err) {
      if (err instanceof Base64Error) throw new KeyResponseError(`${serverName}: key ${keyId} is not base64`);
      throw err;
    }
  };
  for (const [keyId, { key, expired_ts }] of Object.entries(response.old_verify_keys ?? {})) {
    if (!keyId.startsWith("ed25519:")) continue;
    keys.set(keyId, { key: decode(keyId, key), validUntilTs: Math.min(expired_ts, validUntilTs), expiredTs: expired_ts });
  }
  let signed = false;
  const ownSignatures = Object.hasOwn(response.signatures, serverName) ? (response.signatures[serverName] ?? {}) : {};
  for (const [keyId, { key }] of Object.entries(response.verify_keys)) {
    if (!keyId.startsWith("ed25519:")) continue;
    const publicKey = decode(keyId, key);
    keys.set(keyId, { key: publicKey, validUntilTs });
    if (Object.hasOwn(ownSignatures, keyId)) {
      if (!verifyJsonSignature(response, serverName, keyId, publicKey)) {
        throw new KeyResponseError(`${serverName}: bad self-signature by ${keyId}`);
      }
      signed = true;
    }
  }
  if (!signed) throw new KeyResponseError(`${serverName}: the key response is not signed by any of its keys`);
  return keys;
}

export interface ServerKeyStoreOptions {
  db: Database;
  http: FederationHttpClient;
  serverName: string;
  signingKey: SigningKey;
  /** Our own retired keys (key ID → key), valid for what we signed before they expired. */
  ownOldKeys?(): Promise<Map<string, VerifyKey>>;
  /** Notary servers asked when a server cannot be reached itself (`trusted_key_servers`). */
  notaries: readonly string[];
  now(): number;
  logger: Logger;
}

export class ServerKeyStore {
  private readonly memory = new Map<string, Map<string, VerifyKey>>();
  private readonly inflight = new Map<string, Promise<void>>();
  private readonly lastFetch = new Map<string, number>();

  constructor(private readonly opts: ServerKeyStoreOptions) {}

  /**
   * The public key `serverName` signs with under `keyId`, valid at `validAt` (now for requests;
   * an event's origin_server_ts for events): a current key valid until then, or an old key that
   * expired after it. Undefined when no such key can be found.
   */
  async verifyKey(serverName: string, keyId: string, validAt = this.opts.now()): Promise<Uint8Array | undefined> {
    if (serverName === this.opts.serverName) return this.ownKey(keyId, validAt);
    const usable = (k: VerifyKey | undefined) =>
      k !== undefined && (k.expiredTs === undefined ? k.validUntilTs >= validAt : k.expiredTs > validAt);
    let known = this.memory.get(serverName)?.get(keyId);
    if (usable(known)) return known?.key;
    known = (await this.loadStored(serverName)).get(keyId);
    if (usable(known)) return known?.key;
    await this.refresh(serverName);
    known = this.memory.get(serverName)?.get(keyId);
    return usable(known) ? known?.key : undefined;
  }

  /**
   * The key responses we hold for a server, for notary answers. With key IDs asked for, the
   * responses that hold those keys (each key valid until at least its minimum, fetching the server
   * again when we hold a key too old or not at all); with none, every response, fetching again
   * when no current key is valid until `minimumValidUntilTs`. A key the server forgot since stays
   * answered from the response that held it (so a later response cannot make us forget it).
   */
  async storedResponses(serverName: string, minimumValidUntilTs: number, wantedKeys: ReadonlyMap<string, number> = new Map()): Promise<unknown[]> {
    const t = schema.remoteServerKeys;
    const read = () => this.opts.db.select().from(t).where(eq(t.serverName, serverName));
    let rows = await read();
    const satisfied = (held: typeof rows) =>
      wantedKeys.size === 0
        ? held.some((r) => r.expiredTs === null && r.validUntilTs >= minimumValidUntilTs)
        : [...wantedKeys].every(([keyId, min]) => held.some((r) => r.keyId === keyId && r.validUntilTs >= min));
    if (!satisfied(rows)) {
      // Asked for fresher keys than we hold: fetch now (concurrent asks share one fetch). What we
      // held before is still answered when the server cannot be reached.
      await this.refresh(serverName, true).catch(() => {});
      rows = await read();
    }
    if (wantedKeys.size > 0) rows = rows.filter((r) => wantedKeys.has(r.keyId));
    return [...new Set(rows.map((r) => r.responseJson))].map((text) => JSON.parse(text) as unknown);
  }

  private async ownKey(keyId: string, validAt: number): Promise<Uint8Array | undefined> {
    if (keyId === this.opts.signingKey.keyId) return this.opts.signingKey.publicKey;
    const old = (await this.opts.ownOldKeys?.())?.get(keyId);
    return old && (old.expiredTs ?? 0) > validAt ? old.key : undefined;
  }

  private async loadStored(serverName: string): Promise<Map<string, VerifyKey>> {
    const cached = this.memory.get(serverName);
    if (cached) return cached;
    const t = schema.remoteServerKeys;
    const rows = await this.opts.db.select().from(t).where(eq(t.serverName, serverName));
    const keys = new Map<string, VerifyKey>();
    for (const r of rows) {
      keys.set(r.keyId, {
        key: decodeBase64(r.verifyKey),
        validUntilTs: r.validUntilTs,
        ...(r.expiredTs === null ? {} : { expiredTs: r.expiredTs }),
      });
    }
    this.remember(serverName, keys);
    return keys;
  }

  private remember(serverName: string, keys: Map<string, VerifyKey>) {
    this.memory.delete(serverName);
    if (this.memory.size >= MEMORY_LIMIT) {
      const oldest = this.memory.keys().next().value;
      if (oldest !== undefined) this.memory.delete(oldest);
    }
    this.memory.set(serverName, keys);
  }

  /** Fetches a server's keys (once at a time per server, at most every REFETCH_INTERVAL_MS). */
  private refresh(serverName: string, force = false): Promise<void> {
    const running = this.inflight.get(serverName);
    if (running) return running;
    const last = this.lastFetch.get(serverName);
    if (!force && last !== undefined && this.opts.now() - last < REFETCH_INTERVAL_MS) return Promise.resolve();
    this.lastFetch.set(serverName, this.opts.now());
    if (this.lastFetch.size > MEMORY_LIMIT) {
      const oldest = this.lastFetch.keys().next().value;
      if (oldest !== undefined) this.lastFetch.delete(oldest);
    }
    const p = this.fetchAndStore(serverName).finally(() => this.inflight.delete(serverName));
    this.inflight.set(serverName, p);
    return p;
  }

  private async fetchAndStore(serverName: string): Promise<void> {
    const responses = await this.fetchDirect(serverName).catch(async (err: unknown) => {
      this.opts.logger.info({ server: serverName, err: String(err) }, "could not fetch server keys directly");
      return this.fetchThroughNotaries(serverName);
    });
    for (const { json, keys, fetchedTs } of responses) await this.store(serverName, json, keys, fetchedTs);
  }

  private async fetchDirect(serverName: string) {
    const res = await this.opts.http.request(serverName, { method: "GET", path: "/_matrix/key/v2/server", signed: false });
    if (res.status !== 200) throw new KeyResponseError(`${serverName}: key server answered ${res.status}`);
    const fetchedTs = this.opts.now();
    return [{ json: res.body, keys: checkKeyResponse(res.body, serverName, fetchedTs), fetchedTs }];
  }

  private async fetchThroughNotaries(serverName: string) {
    for (const notary of this.opts.notaries) {
      if (notary === serverName) continue;
      try {
        const res = await this.opts.http.request(notary, {
          method: "POST",
          path: "/_matrix/key/v2/query",
          body: { server_keys: { [serverName]: {} } },
        });
        const list = (res.body as { server_keys?: unknown } | undefined)?.server_keys;
        if (res.status !== 200 || !Array.isArray(list)) continue;
        const out = [];
        for (const json of list) {
          const fetchedTs = this.opts.now();
          const keys = checkKeyResponse(json, serverName, fetchedTs);
          // The notary vouches for the answer with its own signature.
          const notaryKeyIds = Object.keys((json as { signatures: Record<string, Record<string, string>> }).signatures[notary] ?? {});
          let vouched = false;
          for (const keyId of notaryKeyIds) {
            const notaryKey = await this.verifyKey(notary, keyId);
            if (notaryKey && verifyJsonSignature(json as object, notary, keyId, notaryKey)) vouched = true;
          }
          if (vouched) out.push({ json, keys, fetchedTs });
        }
        if (out.length > 0) return out;
      } catch (err) {
        this.opts.logger.info({ server: serverName, notary, err: String(err) }, "notary could not give server keys");
      }
    }
    return [];
  }

  private async store(serverName: string, json: unknown, keys: Map<string, VerifyKey>, fetchedTs: number) {
    const responseJson = canonicalJson(json);
    const t = schema.remoteServerKeys;
    const merged = new Map(await this.loadStored(serverName));
    const rows = [...keys].map(([keyId, k]) => {
      merged.set(keyId, k);
      return {
        serverName,
        keyId,
        verifyKey: encodeUnpaddedBase64(k.key),
        validUntilTs: k.validUntilTs,
        expiredTs: k.expiredTs ?? null,
        fetchedTs,
        responseJson,
      };
    });
    if (rows.length === 0) return;
    // An upsert, so two processes storing the same server's keys at once do not collide.
    await this.opts.db
      .insert(t)
      .values(rows)
      .onConflictDoUpdate({
        target: [t.serverName, t.keyId],
        set: {
          verifyKey: sql`excluded.verify_key`,
          validUntilTs: sql`excluded.valid_until_ts`,
          expiredTs: sql`excluded.expired_ts`,
          fetchedTs: sql`excluded.fetched_ts`,
          responseJson: sql`excluded.response_json`,
        },
      });
    this.remember(serverName, merged);
  }
}
