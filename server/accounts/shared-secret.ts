// Shared-secret registration, compatible with Synapse's admin API, so `register_new_matrix_user`
// works unchanged: https://element-hq.github.io/synapse/latest/admin_api/register_api.html
//
// GET hands out a nonce; POST carries it with `mac` = hex HMAC-SHA1, keyed with the shared secret,
// over `nonce \0 username \0 password \0 (admin|notadmin)` [`\0 user_type`]. A nonce works once and
// for NONCE_MS; nonces live in the database so the POST may reach another process than the GET.
import { createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import { and, eq, gte, lt } from "drizzle-orm";
import { type Database, schema } from "../../schema/db.ts";
import { forbidden, MatrixError } from "../http/errors.ts";

const NONCE_MS = 60_000;

export interface SharedSecretRequest {
  nonce: string;
  username: string;
  password: string;
  admin?: boolean;
  user_type?: string | null;
  mac: string;
}

export class SharedSecretRegistration {
  constructor(
    private readonly db: Database,
    private readonly now: () => number,
    private readonly secret: string | undefined,
  ) {}

  get enabled(): boolean {
    return this.secret !== undefined;
  }

  async nonce(): Promise<string> {
    this.checkEnabled();
    const t = schema.registrationNonces;
    const now = this.now();
    await this.db.delete(t).where(lt(t.createdTs, now - NONCE_MS));
    const nonce = randomBytes(32).toString("hex");
    await this.db.insert(t).values({ nonce, createdTs: now });
    return nonce;
  }

  /** Uses up the nonce and checks the MAC; throws 403 M_FORBIDDEN for an unknown, used or expired nonce or a wrong MAC. */
  async verify(req: SharedSecretRequest): Promise<void> {
    this.checkEnabled();
    const t = schema.registrationNonces;
    const used = await this.db
      .delete(t)
      .where(and(eq(t.nonce, req.nonce), gte(t.createdTs, this.now() - NONCE_MS)))
      .returning({ nonce: t.nonce });
    if (used.length === 0) throw forbidden("Unrecognised or already used nonce");
    const expected = sharedSecretMac(this.secret!, req);
    const given = Buffer.from(req.mac.toLowerCase(), "utf8");
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) throw forbidden("HMAC incorrect");
  }

  private checkEnabled(): void {
    // Synapse answers 400 when no secret is configured.
    if (!this.enabled) throw new MatrixError(400, "M_UNKNOWN", "Shared secret registration is not enabled");
  }
}

/** The MAC a client computes (exported for tests and tools). */
export function sharedSecretMac(secret: string, req: Omit<SharedSecretRequest, "mac">): Buffer {
  const parts = [req.nonce, req.username, req.password, req.admin ? "admin" : "notadmin"];
  if (req.user_type) parts.push(req.user_type);
  return Buffer.from(createHmac("sha1", secret).update(parts.join("\u0000")).digest("hex"), "utf8");
}
