// Access and refresh tokens, and the Authenticator that turns an access token into a requester.
// https://spec.matrix.org/latest/client-server-api/#client-authentication
//
// Tokens are 256 random bits. The database keeps only their SHA-256 (hex): a leaked database does
// not let anyone act as a user. Looking a token up is one query on a unique index.
//
// A recently checked token is cached in this process for TOKEN_CACHE_MS. Revoking tokens (logout,
// device deletion, password change, deactivation) empties the cache entries at once in this process
// and tells the other processes on the same PostgreSQL through NOTIFY, so a revoked token stops
// working everywhere within milliseconds; if a notification were lost, the short lifetime of the
// cache still bounds how long another process could accept it.
import { createHash, randomBytes } from "node:crypto";
import { and, eq, inArray, isNull } from "drizzle-orm";
import type { Logger } from "pino";
import { type Database, type OpenedDatabase, schema } from "../../schema/db.ts";
import { MatrixError } from "../http/errors.ts";
import type { RequestInfo, Requester } from "../http/route.ts";
import type { Authenticator } from "../services.ts";

const TOKEN_CACHE_MS = 2_000;
const TOKEN_CACHE_MAX = 10_000;
/** A device's last_seen_* columns are written at most this often (unless its IP address changes). */
const LAST_SEEN_WRITE_MS = 60_000;
const REVOKED_CHANNEL = "parley_tokens_revoked";

export function hashToken(token: string): string {
  return createHash("sha256").update(token).digest("hex");
}

function newToken(prefix: string): string {
  return prefix + randomBytes(32).toString("base64url");
}

/**
 * "Servers MUST return M_USER_LOCKED with soft_logout: true" for a locked account's requests (and
 * its logins): the client keeps its data and may log in again once unlocked.
 * https://spec.matrix.org/v1.8/client-server-api/#account-locking
 */
export const userLocked = () => new MatrixError(401, "M_USER_LOCKED", "This account has been locked", { soft_logout: true });

/** The requests a locked account may still make: "except /logout and /logout/all" (spec v1.8). */
const LOCKED_USER_ALLOWED = /^\/_matrix\/client\/(?:v3|r0)\/logout(?:\/all)?(?:[?#]|$)/;

export interface IssuedTokens {
  accessToken: string;
  /** Present when the client asked for a refresh token; the access token then expires. */
  refreshToken?: string;
  expiresInMs?: number;
}

interface CachedToken {
  requester: Requester;
  locked: boolean;
  expiresTs: number | null;
  cachedAt: number;
}

export class Sessions implements Authenticator {
  private readonly db: Database;
  private readonly cache = new Map<string, CachedToken>();
  /** Bumped by every revocation: a lookup that overlapped one is not cached (it may be stale). */
  private revocations = 0;
  private readonly lastSeen = new Map<string, { ts: number; ip: string }>();
  private unlisten: (() => Promise<void>) | undefined;

  constructor(
    private readonly database: OpenedDatabase,
    private readonly now: () => number,
    private readonly accessTokenLifetimeMs: number,
    private readonly logger: Logger,
    /** How long a checked token is trusted without a lookup (tests lengthen it to take timing out of play). */
    private readonly tokenCacheMs = TOKEN_CACHE_MS,
  ) {
    this.db = database.db;
  }

  /** Starts listening for revocations made by other processes. */
  async start(): Promise<void> {
    this.unlisten = await this.database.listen(REVOKED_CHANNEL, (payload) => {
      try {
        const { u, d } = JSON.parse(payload) as { u: string; d: string[] | null };
        this.forget(u, d);
      } catch {
        this.cache.clear();
      }
    });
  }

  async stop(): Promise<void> {
    await this.unlisten?.().catch(() => {});
  }

  /**
   * A new access token (and refresh token when asked for) for an existing device. `validUntilTs`
   * (without refresh) makes a token that simply dies then: the admin API's login as a user.
   */
  async issue(userId: string, deviceId: string, withRefresh: boolean, validUntilTs?: number): Promise<IssuedTokens> {
    const accessToken = newToken("pat_");
    const refreshToken = withRefresh ? newToken("prt_") : undefined;
    const now = this.now();
    await this.db.insert(schema.accessTokens).values({
      tokenHash: hashToken(accessToken),
      refreshTokenHash: refreshToken ? hashToken(refreshToken) : null,
      userId,
      deviceId,
      createdTs: now,
      expiresTs: refreshToken ? now + this.accessTokenLifetimeMs : (validUntilTs ?? null),
    });
    return refreshToken
      ? { accessToken, refreshToken, expiresInMs: this.accessTokenLifetimeMs }
      : { accessToken };
  }

  /**
   * `POST /refresh`: swaps a refresh token for a new access token and a new refresh token. The old
   * pair dies at once, so a refresh token works exactly once; deleting its row is the atomic
   * "use", which two concurrent refreshes with the same token cannot both win.
   */
  async refresh(refreshToken: string): Promise<IssuedTokens & { userId: string; deviceId: string }> {
    const t = schema.accessTokens;
    const [used] = await this.db
      .delete(t)
      .where(eq(t.refreshTokenHash, hashToken(refreshToken)))
      .returning({ userId: t.userId, deviceId: t.deviceId, tokenHash: t.tokenHash });
    if (!used) throw new MatrixError(401, "M_UNKNOWN_TOKEN", "Unknown or already used refresh token", { soft_logout: false });
    this.revocations++;
    this.cache.delete(used.tokenHash);
    const issued = await this.issue(used.userId, used.deviceId, true);
    return { ...issued, userId: used.userId, deviceId: used.deviceId };
  }

  /** Revokes every token of the given devices of a user (all of them with `"all"`), here and in other processes. */
  async revokeDevices(userId: string, deviceIds: string[] | "all"): Promise<void> {
    const t = schema.accessTokens;
    if (deviceIds !== "all" && deviceIds.length === 0) return;
    await this.db
      .delete(t)
      .where(deviceIds === "all" ? eq(t.userId, userId) : and(eq(t.userId, userId), inArray(t.deviceId, deviceIds)));
    await this.dropCached(userId, deviceIds === "all" ? null : deviceIds);
  }

  /**
   * Drops cached lookups of a user's tokens, here and in other processes, after a change to what a
   * lookup returns (a guest becoming a full user).
   */
  async dropCached(userId: string, deviceIds: string[] | null = null): Promise<void> {
    this.forget(userId, deviceIds);
    const payload = JSON.stringify({ u: userId, d: deviceIds });
    await this.database
      .notify(REVOKED_CHANNEL, payload.length < 7000 ? payload : JSON.stringify({ u: userId, d: null }))
      .catch((err) => this.logger.warn({ err }, "could not announce a token revocation"));
  }

  async authenticate(accessToken: string, request: RequestInfo): Promise<Requester> {
    const tokenHash = hashToken(accessToken);
    const now = this.now();
    let entry = this.cache.get(tokenHash);
    if (!entry || now - entry.cachedAt > this.tokenCacheMs) {
      const revocationsBefore = this.revocations;
      entry = await this.lookup(tokenHash, now);
      if (entry && this.revocations === revocationsBefore) {
        this.cache.delete(tokenHash);
        if (this.cache.size >= TOKEN_CACHE_MAX) this.cache.delete(this.cache.keys().next().value!);
        this.cache.set(tokenHash, entry);
      }
    }
    if (!entry) throw new MatrixError(401, "M_UNKNOWN_TOKEN", "Unknown access token", { soft_logout: false });
    if (entry.locked && !LOCKED_USER_ALLOWED.test(request.rawTarget)) throw userLocked();
    if (entry.expiresTs !== null && entry.expiresTs <= now) {
      // The device is still logged in: the client should refresh (or log in again) without losing data.
      throw new MatrixError(401, "M_UNKNOWN_TOKEN", "The access token has expired", { soft_logout: true });
    }
    await this.noteLastSeen(entry.requester, request, now);
    return entry.requester;
  }

  private async lookup(tokenHash: string, now: number): Promise<CachedToken | undefined> {
    const t = schema.accessTokens;
    const u = schema.users;
    const [row] = await this.db
      .select({ id: t.id, userId: t.userId, deviceId: t.deviceId, expiresTs: t.expiresTs, isGuest: u.isGuest, locked: u.locked })
      .from(t)
      .innerJoin(u, eq(u.userId, t.userId))
      .where(and(eq(t.tokenHash, tokenHash), isNull(u.deactivatedTs)));
    if (!row) return undefined;
    return {
      requester: { userId: row.userId, deviceId: row.deviceId, isGuest: row.isGuest, sessionId: String(row.id) },
      locked: row.locked,
      expiresTs: row.expiresTs,
      cachedAt: now,
    };
  }

  private forget(userId: string, deviceIds: string[] | null): void {
    this.revocations++;
    for (const [hash, entry] of this.cache) {
      if (entry.requester.userId === userId && (deviceIds === null || deviceIds.includes(entry.requester.deviceId))) {
        this.cache.delete(hash);
      }
    }
  }

  /** Records when and from where a device was last seen: a write at most once a minute per device. */
  private async noteLastSeen(requester: Requester, request: RequestInfo, now: number): Promise<void> {
    const key = `${requester.userId}|${requester.deviceId}`;
    const seen = this.lastSeen.get(key);
    if (seen && now - seen.ts < LAST_SEEN_WRITE_MS && seen.ip === request.ip) return;
    if (this.lastSeen.size >= TOKEN_CACHE_MAX) this.lastSeen.clear();
    this.lastSeen.set(key, { ts: now, ip: request.ip });
    const d = schema.devices;
    await this.db
      .update(d)
      .set({ lastSeenTs: now, lastSeenIp: request.ip, lastSeenUserAgent: request.userAgent.slice(0, 512) })
      .where(and(eq(d.userId, requester.userId), eq(d.deviceId, requester.deviceId)));
  }
}
