// The accounts component's tables: users (with their profile), devices, access/refresh tokens,
// user-interactive-auth sessions, shared-secret registration nonces and the security audit log.
// Owned by server/accounts/: no other component queries them.
import { sql } from "drizzle-orm";
import { bigint, bigserial, boolean, index, integer, jsonb, pgTable, primaryKey, text } from "drizzle-orm/pg-core";

export const users = pgTable("users", {
  /** The full user ID, `@localpart:server`. A deactivated user keeps its row, so the localpart stays taken. */
  userId: text("user_id").primaryKey(),
  /** Argon2id (PHC string). Null for guests and deactivated accounts: no password logs them in. */
  passwordHash: text("password_hash"),
  isAdmin: boolean("is_admin").notNull().default(false),
  isGuest: boolean("is_guest").notNull().default(false),
  displayName: text("display_name"),
  avatarUrl: text("avatar_url"),
  createdTs: bigint("created_ts", { mode: "number" }).notNull(),
  deactivatedTs: bigint("deactivated_ts", { mode: "number" }),
  /**
   * When the user was erased (deactivated with `erase: true`): from then on their messages are
   * shown redacted to users who were not joined when they were sent, and to other servers.
   */
  erasedTs: bigint("erased_ts", { mode: "number" }),
  /**
   * Locked by an admin: every request with the user's tokens fails with 401 M_USER_LOCKED and the
   * user cannot log in, until unlocked (spec v1.8, "Account locking"). Unlike deactivation, nothing
   * is deleted.
   */
  locked: boolean("locked").notNull().default(false),
}, (t) => [
  // The erased users, read whole (a short list) by the history-visibility filter.
  index("users_erased_idx").on(t.userId).where(sql`erased_ts is not null`),
]);

export const devices = pgTable(
  "devices",
  {
    userId: text("user_id").notNull(),
    deviceId: text("device_id").notNull(),
    displayName: text("display_name"),
    createdTs: bigint("created_ts", { mode: "number" }).notNull(),
    lastSeenTs: bigint("last_seen_ts", { mode: "number" }),
    lastSeenIp: text("last_seen_ip"),
    lastSeenUserAgent: text("last_seen_user_agent"),
  },
  (t) => [primaryKey({ columns: [t.userId, t.deviceId] })],
);

/**
 * One row per access token, stored as the SHA-256 of the token (hex); the token itself is never
 * stored. A row may carry a refresh token (also hashed): then the access token expires at
 * `expires_ts` and `/refresh` replaces the whole row.
 */
export const accessTokens = pgTable(
  "access_tokens",
  {
    id: bigserial("id", { mode: "number" }).primaryKey(),
    tokenHash: text("token_hash").notNull().unique(),
    refreshTokenHash: text("refresh_token_hash").unique(),
    userId: text("user_id").notNull(),
    deviceId: text("device_id").notNull(),
    createdTs: bigint("created_ts", { mode: "number" }).notNull(),
    /** Null: never expires (the client did not ask for a refresh token). */
    expiresTs: bigint("expires_ts", { mode: "number" }),
  },
  (t) => [index("access_tokens_device_idx").on(t.userId, t.deviceId)],
);

/**
 * User-interactive authentication sessions. Kept in the database (not in memory) so that with
 * several processes on one PostgreSQL, the second step of a flow may reach another process.
 */
export const uiaSessions = pgTable("uia_sessions", {
  sessionId: text("session_id").primaryKey(),
  /** What the session authorises, e.g. `register` or `delete_devices`: a session cannot be reused for another operation. */
  operation: text("operation").notNull(),
  /** The user the session authenticates, for operations by a logged-in user. */
  userId: text("user_id"),
  completed: jsonb("completed").$type<string[]>().notNull().default(sql`'[]'::jsonb`),
  createdTs: bigint("created_ts", { mode: "number" }).notNull(),
  /**
   * The request's parameters as a step gave them, so later steps may carry only `auth` (a password
   * is kept hashed, as `password_hash`).
   */
  params: jsonb("params").$type<Record<string, unknown>>(),
  /** For a completed session kept for retries: what the operation produced (the registered user ID). */
  result: text("result"),
  /**
   * The registration token (from the registration_tokens table) whose `m.login.registration_token`
   * stage this session completed: it holds one of the token's `pending` uses until registration.
   */
  registrationToken: text("registration_token"),
});

/**
 * Registration tokens made through the admin API (Synapse's shape): a token may be used
 * `uses_allowed` times (null: without limit) until `expiry_time` (ms; null: never). `pending`
 * counts UIA sessions that passed the token stage and have not registered yet, `completed` the
 * registrations made with it; a token is valid while pending + completed < uses_allowed.
 */
export const registrationTokens = pgTable("registration_tokens", {
  token: text("token").primaryKey(),
  usesAllowed: integer("uses_allowed"),
  pending: integer("pending").notNull().default(0),
  completed: integer("completed").notNull().default(0),
  expiryTime: bigint("expiry_time", { mode: "number" }),
});

/** Single-use nonces of Synapse-compatible shared-secret registration. */
export const registrationNonces = pgTable("registration_nonces", {
  nonce: text("nonce").primaryKey(),
  createdTs: bigint("created_ts", { mode: "number" }).notNull(),
});

/** Security events. Never holds a password or a token. */
export const auditLog = pgTable(
  "audit_log",
  {
    id: bigserial("id", { mode: "number" }).primaryKey(),
    ts: bigint("ts", { mode: "number" }).notNull(),
    /** `registered`, `login`, `login_failed`, `logout`, `password_changed`, `device_deleted`, `deactivated`, ... */
    event: text("event").notNull(),
    userId: text("user_id"),
    ip: text("ip"),
    userAgent: text("user_agent"),
    detail: jsonb("detail").$type<Record<string, unknown>>().notNull().default(sql`'{}'::jsonb`),
  },
  (t) => [index("audit_log_user_idx").on(t.userId, t.id)],
);

/**
 * OpenID tokens (`/user/{userId}/openid/request_token`): proof of a user's identity for other
 * services, exchanged through `/federation/v1/openid/userinfo`. Stored as SHA-256 (hex), like
 * access tokens; they expire.
 */
export const openIdTokens = pgTable(
  "openid_tokens",
  {
    tokenHash: text("token_hash").primaryKey(),
    userId: text("user_id").notNull(),
    expiresTs: bigint("expires_ts", { mode: "number" }).notNull(),
  },
  (t) => [index("openid_tokens_expires_idx").on(t.expiresTs)],
);
