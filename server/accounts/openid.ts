// OpenID tokens: a user proves who they are to another service (an integration manager, a widget),
// which asks the user's homeserver (`/federation/v1/openid/userinfo`). A token is good for that
// one exchange API and nothing else, and only for an hour.
// https://spec.matrix.org/latest/client-server-api/#openid
// https://spec.matrix.org/latest/server-server-api/#openid
import { randomBytes } from "node:crypto";
import { and, eq, gt, lt } from "drizzle-orm";
import { type Database, schema } from "../../schema/db.ts";
import { hashToken } from "./sessions.ts";

/** What Synapse gives (`openid_token_lifetime`'s default): an hour. */
export const OPENID_TOKEN_LIFETIME_MS = 3600_000;

export class OpenIdTokens {
  constructor(
    private readonly db: Database,
    private readonly now: () => number,
  ) {}

  /** A new token for `userId`; the database keeps only its hash. Expired tokens are swept on the way. */
  async issue(userId: string): Promise<{ accessToken: string; expiresInMs: number }> {
    const t = schema.openIdTokens;
    const now = this.now();
    await this.db.delete(t).where(lt(t.expiresTs, now));
    const accessToken = randomBytes(32).toString("base64url");
    await this.db.insert(t).values({ tokenHash: hashToken(accessToken), userId, expiresTs: now + OPENID_TOKEN_LIFETIME_MS });
    return { accessToken, expiresInMs: OPENID_TOKEN_LIFETIME_MS };
  }

  /** The user a token was issued to, while it has not expired. */
  async userOf(accessToken: string): Promise<string | undefined> {
    const t = schema.openIdTokens;
    const [row] = await this.db
      .select({ userId: t.userId })
      .from(t)
      .where(and(eq(t.tokenHash, hashToken(accessToken)), gt(t.expiresTs, this.now())));
    return row?.userId;
  }
}
