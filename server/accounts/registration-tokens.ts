// Registration tokens kept in the database and managed through the admin API, in Synapse's shape:
// https://element-hq.github.io/synapse/latest/usage/administration/admin_api/registration_tokens.html
// (The `registration_tokens` of the configuration are still accepted too, without limits.)
//
// A token is valid while it has not expired and pending + completed < uses_allowed. Passing the
// `m.login.registration_token` stage takes one `pending` use (atomically, so two sessions cannot
// both take the last use); the registration that follows turns it into a `completed` one.
// https://spec.matrix.org/latest/client-server-api/#token-authenticated-registration
import { randomInt } from "node:crypto";
import { and, eq, gt, isNull, lt, or, type SQL, sql } from "drizzle-orm";
import { type Database, schema } from "../../schema/db.ts";
import { MatrixError, notFound } from "../http/errors.ts";

export interface RegistrationToken {
  token: string;
  uses_allowed: number | null;
  pending: number;
  completed: number;
  /** Milliseconds since the epoch; null: never expires. */
  expiry_time: number | null;
}

/** The characters Synapse allows in a token (the spec's "unreserved" URI characters). */
export const TOKEN_PATTERN = /^[A-Za-z0-9._~-]{1,64}$/;
const TOKEN_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._~-";

export class RegistrationTokens {
  constructor(
    private readonly db: Database,
    private readonly now: () => number,
  ) {}

  /** Every token, or only the valid (`true`) or invalid (`false`) ones. */
  async list(valid?: boolean): Promise<RegistrationToken[]> {
    const t = schema.registrationTokens;
    const where = valid === undefined ? undefined : valid ? this.usable() : sql`not (${this.usable()})`;
    const rows = await this.db.select().from(t).where(where).orderBy(t.token);
    return rows.map(tokenJson);
  }

  async get(token: string): Promise<RegistrationToken> {
    const t = schema.registrationTokens;
    const [row] = await this.db.select().from(t).where(eq(t.token, token));
    if (!row) throw notFound("No such registration token");
    return tokenJson(row);
  }

  /** Creates a token: the one given, or a random one of `length` characters. 400 M_INVALID_PARAM when it exists. */
  async create(options: { token?: string; length?: number; usesAllowed: number | null; expiryTime: number | null }): Promise<RegistrationToken> {
    if (options.expiryTime !== null && options.expiryTime < this.now()) {
      throw new MatrixError(400, "M_INVALID_PARAM", "expiry_time must not be in the past");
    }
    const t = schema.registrationTokens;
    for (let attempt = 0; attempt < 5; attempt++) {
      const token = options.token ?? randomToken(options.length ?? 16);
      const [row] = await this.db
        .insert(t)
        .values({ token, usesAllowed: options.usesAllowed, expiryTime: options.expiryTime })
        .onConflictDoNothing()
        .returning();
      if (row) return tokenJson(row);
      if (options.token !== undefined) throw new MatrixError(400, "M_INVALID_PARAM", `Token already in use: ${options.token}`);
    }
    throw new MatrixError(400, "M_INVALID_PARAM", "No unused token of this length was found; ask for a longer one");
  }

  /** Changes `uses_allowed` and/or `expiry_time` (null removes the limit); undefined leaves it. */
  async update(token: string, change: { usesAllowed?: number | null; expiryTime?: number | null }): Promise<RegistrationToken> {
    if (change.expiryTime != null && change.expiryTime < this.now()) {
      throw new MatrixError(400, "M_INVALID_PARAM", "expiry_time must not be in the past");
    }
    const t = schema.registrationTokens;
    const set: Partial<typeof t.$inferInsert> = {};
    if (change.usesAllowed !== undefined) set.usesAllowed = change.usesAllowed;
    if (change.expiryTime !== undefined) set.expiryTime = change.expiryTime;
    if (Object.keys(set).length === 0) return this.get(token);
    const [row] = await this.db.update(t).set(set).where(eq(t.token, token)).returning();
    if (!row) throw notFound("No such registration token");
    return tokenJson(row);
  }

  async delete(token: string): Promise<void> {
    const t = schema.registrationTokens;
    const deleted = await this.db.delete(t).where(eq(t.token, token)).returning({ token: t.token });
    if (deleted.length === 0) throw notFound("No such registration token");
  }

  /** Whether the token could be used now (`GET /register/m.login.registration_token/validity`). */
  async isValid(token: string): Promise<boolean> {
    const t = schema.registrationTokens;
    const [row] = await this.db.select({ token: t.token }).from(t).where(and(eq(t.token, token), this.usable()));
    return row !== undefined;
  }

  /** Takes one pending use of a valid token; false when the token is unknown, expired or used up. */
  async reserve(token: string): Promise<boolean> {
    const t = schema.registrationTokens;
    const taken = await this.db
      .update(t)
      .set({ pending: sql`${t.pending} + 1` })
      .where(and(eq(t.token, token), this.usable()))
      .returning({ token: t.token });
    return taken.length > 0;
  }

  /** A registration completed with a token whose use `reserve` took: pending becomes completed. */
  async complete(token: string): Promise<void> {
    const t = schema.registrationTokens;
    await this.db
      .update(t)
      .set({ pending: sql`greatest(${t.pending} - 1, 0)`, completed: sql`${t.completed} + 1` })
      .where(eq(t.token, token));
  }

  /** Gives back a pending use that will never complete (its UIA session expired unused). */
  async release(token: string): Promise<void> {
    const t = schema.registrationTokens;
    await this.db.update(t).set({ pending: sql`greatest(${t.pending} - 1, 0)` }).where(eq(t.token, token));
  }

  private usable(): SQL {
    const t = schema.registrationTokens;
    return and(
      or(isNull(t.usesAllowed), lt(sql`${t.pending} + ${t.completed}`, t.usesAllowed)),
      or(isNull(t.expiryTime), gt(t.expiryTime, this.now())),
    )!;
  }
}

function randomToken(length: number): string {
  let token = "";
  for (let i = 0; i < length; i++) token += TOKEN_ALPHABET[randomInt(TOKEN_ALPHABET.length)];
  return token;
}

function tokenJson(row: typeof schema.registrationTokens.$inferSelect): RegistrationToken {
  return { token: row.token, uses_allowed: row.usesAllowed, pending: row.pending, completed: row.completed, expiry_time: row.expiryTime };
}
