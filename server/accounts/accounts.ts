// User accounts: creation, passwords, login, devices, profiles, deactivation.
// https://spec.matrix.org/latest/client-server-api/#client-authentication
// https://spec.matrix.org/latest/client-server-api/#device-management
// https://spec.matrix.org/latest/client-server-api/#profiles
import { ErasedUsers } from "./erased-users.ts";
import { randomInt } from "node:crypto";
import { and, asc, desc, eq, ilike, inArray, isNotNull, isNull, or, type SQL, sql } from "drizzle-orm";
import type { Logger } from "pino";
import { type Database, schema } from "../../schema/db.ts";
import { forbidden, MatrixError, notFound } from "../http/errors.ts";
import type { AuditLog, AuditSource } from "./audit.ts";
import { MAX_PASSWORD_LENGTH, type PasswordHasher } from "./passwords.ts";
import { type IssuedTokens, type Sessions, userLocked } from "./sessions.ts";
import { checkNewLocalpart, parseUserId, userIdOf } from "./user-id.ts";

export interface User {
  userId: string;
  isAdmin: boolean;
  isGuest: boolean;
  displayName: string | null;
  avatarUrl: string | null;
  createdTs: number;
  deactivatedTs: number | null;
  /** Locked by an admin: every request fails with 401 M_USER_LOCKED until unlocked. */
  locked: boolean;
  erasedTs: number | null;
}

/** A page of the admin API's user list (`GET /_synapse/admin/v2/users`). */
export interface UserListQuery {
  from: number;
  limit: number;
  guests: boolean;
  deactivated: boolean;
  /** A substring of the localpart or the displayname. */
  name?: string;
  /** A substring of the user ID. */
  userId?: string;
  orderBy: "name" | "is_guest" | "admin" | "deactivated" | "displayname" | "avatar_url" | "creation_ts" | "locked";
  dir: "f" | "b";
}

export interface Device {
  device_id: string;
  display_name?: string;
  last_seen_ip?: string;
  last_seen_ts?: number;
}

/** A device in the Synapse admin API's shape (`GET /_synapse/admin/v2/users/{userId}/devices`). */
export interface AdminDevice {
  device_id: string;
  display_name: string | null;
  last_seen_ip: string | null;
  last_seen_ts: number | null;
  last_seen_user_agent: string | null;
  user_id: string;
}

export interface Profile {
  displayname?: string;
  avatar_url?: string;
}

export interface LoginResult extends IssuedTokens {
  userId: string;
  deviceId: string;
}

export interface NewUser {
  localpart: string;
  /** No password: the account cannot log in with one (guests). */
  password?: string;
  /** Instead of `password`: one already hashed by `hashPassword`. */
  passwordHash?: string;
  admin?: boolean;
  guest?: boolean;
  /** Defaults to the localpart. */
  displayName?: string;
}

/**
 * Called after devices are deleted (logout, device deletion, password change, deactivation), once
 * their tokens are dead. The E2EE component hangs the deletion of the devices' keys and to-device
 * mailboxes here.
 */
export type DevicesDeletedListener = (userId: string, deviceIds: string[]) => Promise<void> | void;
/** Called after an account is deactivated (its devices already deleted); the push component drops its pushers. */
export type AccountDeactivatedListener = (userId: string) => Promise<void> | void;
/** Called after a device's display name changes; the E2EE component records a device-list change. */
export type DeviceRenamedListener = (userId: string, deviceId: string) => Promise<void> | void;
/** Called after a login created a new device; E2EE records a device-list change (the device is in the user's list now). */
export type DeviceCreatedListener = (userId: string, deviceId: string) => Promise<void> | void;
/** Called after an account is created or a guest account becomes a full one (the user directory lists it). */
export type AccountCreatedListener = (userId: string) => Promise<void> | void;
/** Called after a user's displayname or avatar changes; the rooms component updates membership events. */
export type ProfileChangedListener = (userId: string, profile: Profile) => Promise<void> | void;

const MAX_DISPLAYNAME_LENGTH = 256;
const MAX_AVATAR_URL_LENGTH = 1000;
const MAX_DEVICE_ID_LENGTH = 255;

/** The columns of a user as the rest of the server sees them (never the password hash). */
const userColumns = {
  userId: schema.users.userId,
  isAdmin: schema.users.isAdmin,
  isGuest: schema.users.isGuest,
  displayName: schema.users.displayName,
  avatarUrl: schema.users.avatarUrl,
  createdTs: schema.users.createdTs,
  deactivatedTs: schema.users.deactivatedTs,
  locked: schema.users.locked,
  erasedTs: schema.users.erasedTs,
};

/** One connection of `/admin/whois`. */
export interface JsonConnection {
  ip: string;
  last_seen: number;
  user_agent: string;
}

export class Accounts {
  private readonly devicesDeletedListeners: DevicesDeletedListener[] = [];
  private readonly profileChangedListeners: ProfileChangedListener[] = [];
  private readonly deviceRenamedListeners: DeviceRenamedListener[] = [];
  private readonly deviceCreatedListeners: DeviceCreatedListener[] = [];
  private readonly accountCreatedListeners: AccountCreatedListener[] = [];
  private readonly deactivatedListeners: AccountDeactivatedListener[] = [];

  constructor(
    private readonly db: Database,
    readonly serverName: string,
    private readonly now: () => number,
    private readonly hasher: PasswordHasher,
    private readonly sessions: Sessions,
    private readonly audit: AuditLog,
    private readonly logger: Logger,
  ) {}

  onDevicesDeleted(listener: DevicesDeletedListener): void {
    this.devicesDeletedListeners.push(listener);
  }

  onDeactivated(listener: AccountDeactivatedListener): void {
    this.deactivatedListeners.push(listener);
  }

  onProfileChanged(listener: ProfileChangedListener): void {
    this.profileChangedListeners.push(listener);
  }

  onDeviceRenamed(listener: DeviceRenamedListener): void {
    this.deviceRenamedListeners.push(listener);
  }

  onDeviceCreated(listener: DeviceCreatedListener): void {
    this.deviceCreatedListeners.push(listener);
  }

  onAccountCreated(listener: AccountCreatedListener): void {
    this.accountCreatedListeners.push(listener);
  }

  // ---- Users -----------------------------------------------------------------------------------------

  async getUser(userId: string): Promise<User | undefined> {
    const [row] = await this.db
      .select(userColumns)
      .from(schema.users)
      .where(eq(schema.users.userId, userId));
    return row;
  }

  async listUsers(): Promise<User[]> {
    const u = schema.users;
    return this.db
      .select(userColumns)
      .from(u)
      .orderBy(asc(u.userId));
  }

  /** One page of users for the admin API, with the number of users matching the filters. */
  async listUsersPage(q: UserListQuery): Promise<{ users: User[]; total: number }> {
    const u = schema.users;
    const conditions: SQL[] = [];
    if (!q.guests) conditions.push(eq(u.isGuest, false));
    if (!q.deactivated) conditions.push(isNull(u.deactivatedTs));
    if (q.userId !== undefined) conditions.push(ilike(u.userId, `%${likeEscaped(q.userId)}%`));
    if (q.name !== undefined) {
      const pattern = `%${likeEscaped(q.name)}%`;
      // The localpart is the part of the user ID between "@" and the first ":".
      conditions.push(or(ilike(sql`split_part(substr(${u.userId}, 2), ':', 1)`, pattern), ilike(u.displayName, pattern))!);
    }
    const where = conditions.length ? and(...conditions) : undefined;
    const column = {
      name: u.userId,
      is_guest: u.isGuest,
      admin: u.isAdmin,
      deactivated: sql`(${u.deactivatedTs} is not null)`,
      displayname: u.displayName,
      avatar_url: u.avatarUrl,
      creation_ts: u.createdTs,
      locked: u.locked,
    }[q.orderBy];
    const order = q.dir === "b" ? desc : asc;
    const users = await this.db
      .select(userColumns)
      .from(u)
      .where(where)
      // The user ID breaks ties, so pages neither repeat nor skip users that sort alike.
      .orderBy(order(column), order(u.userId))
      .limit(q.limit)
      .offset(q.from);
    const [count] = await this.db.select({ n: sql<number>`count(*)::int` }).from(u).where(where);
    return { users, total: Number(count?.n ?? 0) };
  }

  /**
   * Locks or unlocks an account (spec v1.8, account locking). The tokens stay, but the cached
   * lookups are dropped here and in other processes, so the next request of the user sees it.
   */
  async setLocked(userId: string, locked: boolean): Promise<void> {
    const u = schema.users;
    const updated = await this.db.update(u).set({ locked }).where(eq(u.userId, userId)).returning({ userId: u.userId });
    if (updated.length === 0) throw notFound("No such user");
    await this.sessions.dropCached(userId);
  }

  /**
   * Reactivates a deactivated account (the admin API's `deactivated: false`), with a new password:
   * deactivation removed the old one. Its profile, devices and (if erased) erasure stay gone.
   */
  async reactivate(userId: string, password: string, source: AuditSource): Promise<void> {
    checkPassword(password);
    const passwordHash = await this.hasher.hash(password);
    const u = schema.users;
    const updated = await this.db
      .update(u)
      .set({ deactivatedTs: null, passwordHash })
      .where(and(eq(u.userId, userId), isNotNull(u.deactivatedTs)))
      .returning({ userId: u.userId });
    if (updated.length === 0) throw notFound("No such deactivated user");
    await this.audit.record("registered", userId, source, { reactivated: true });
    await this.accountCreated(userId);
  }

  /** Throws 400 M_INVALID_USERNAME or M_USER_IN_USE unless `localpart` could be registered. */
  async checkUsernameAvailable(localpart: string): Promise<void> {
    checkNewLocalpart(localpart, this.serverName);
    if (await this.getUser(userIdOf(localpart, this.serverName))) throw userInUse();
  }

  /** A free localpart for an account registered without a username (and for guests): digits, as Synapse does. */
  async generateLocalpart(): Promise<string> {
    for (let attempt = 0; ; attempt++) {
      const localpart = String(randomInt(10 ** (6 + Math.min(attempt, 8)), 10 ** (7 + Math.min(attempt, 8))));
      if (!(await this.getUser(userIdOf(localpart, this.serverName)))) return localpart;
    }
  }

  /** A new password, checked and hashed (off the main thread), for `createUser` or `upgradeGuest`. */
  async hashPassword(password: string): Promise<string> {
    checkPassword(password);
    return this.hasher.hash(password);
  }

  async createUser(user: NewUser, source: AuditSource): Promise<string> {
    checkNewLocalpart(user.localpart, this.serverName);
    if (user.password !== undefined) checkPassword(user.password);
    const userId = userIdOf(user.localpart, this.serverName);
    const passwordHash = user.passwordHash ?? (user.password !== undefined ? await this.hasher.hash(user.password) : null);
    const inserted = await this.db
      .insert(schema.users)
      .values({
        userId,
        passwordHash,
        isAdmin: user.admin ?? false,
        isGuest: user.guest ?? false,
        displayName: user.displayName ?? user.localpart,
        createdTs: this.now(),
      })
      .onConflictDoNothing()
      .returning({ userId: schema.users.userId });
    if (inserted.length === 0) throw userInUse();
    await this.audit.record("registered", userId, source, {
      ...(user.admin ? { admin: true } : {}),
      ...(user.guest ? { guest: true } : {}),
    });
    await this.accountCreated(userId);
    return userId;
  }

  /**
   * Turns a guest account into a full account with a password, keeping its user ID
   * (https://spec.matrix.org/latest/client-server-api/#guest-access: "Guest users can also upgrade
   * their account by going through the ordinary register flow").
   */
  async upgradeGuest(userId: string, passwordHash: string, source: AuditSource): Promise<void> {
    const u = schema.users;
    const updated = await this.db
      .update(u)
      .set({ isGuest: false, passwordHash })
      .where(and(eq(u.userId, userId), eq(u.isGuest, true), isNull(u.deactivatedTs)))
      .returning({ userId: u.userId });
    if (updated.length === 0) throw forbidden("This account is not a guest account");
    await this.sessions.dropCached(userId);
    await this.audit.record("registered", userId, source, { upgraded_guest: true });
    await this.accountCreated(userId);
  }

  /**
   * The user a login names: a full user ID of this server, or a localpart. Localparts are compared
   * in lower case (they are stored so), as Synapse does. Undefined when it names no local user.
   */
  loginUserId(user: string): string | undefined {
    if (user.startsWith("@")) {
      const parsed = parseUserId(user);
      if (!parsed || parsed.serverName !== this.serverName) return undefined;
      return userIdOf(parsed.localpart.toLowerCase(), this.serverName);
    }
    if (user === "" || user.includes(":")) return undefined;
    return userIdOf(user.toLowerCase(), this.serverName);
  }

  /**
   * Checks a password login. Throws 403 M_FORBIDDEN for a wrong user or password (the same answer
   * for both, in the same time) and 403 M_USER_DEACTIVATED for a deactivated account; every
   * failure lands in the audit log.
   */
  async checkLogin(userId: string | undefined, password: string, source: AuditSource): Promise<string> {
    const row = userId ? await this.passwordRow(userId) : undefined;
    if (!row || row.passwordHash === null || password.length > MAX_PASSWORD_LENGTH) {
      await this.hasher.verifyNothing(password.slice(0, MAX_PASSWORD_LENGTH));
      // The attempted name is kept only when it names an account: a password typed into the
      // username field must not end up in the log.
      const reason = !row
        ? "unknown_user"
        : row.deactivatedTs !== null
          ? "deactivated"
          : row.passwordHash === null
            ? "no_password"
            : "wrong_password";
      await this.audit.record("login_failed", row?.userId, source, { reason });
      if (row?.deactivatedTs != null) throw new MatrixError(403, "M_USER_DEACTIVATED", "This account has been deactivated");
      throw invalidLogin();
    }
    if (!(await this.hasher.verify(row.passwordHash, password))) {
      await this.audit.record("login_failed", row.userId, source, { reason: "wrong_password" });
      throw invalidLogin();
    }
    if (row.locked) {
      // Only once the password is right, so the answer tells nothing to who does not know it.
      await this.audit.record("login_failed", row.userId, source, { reason: "locked" });
      throw userLocked();
    }
    if (this.hasher.needsRehash(row.passwordHash)) {
      await this.db
        .update(schema.users)
        .set({ passwordHash: await this.hasher.hash(password) })
        .where(eq(schema.users.userId, row.userId));
    }
    return row.userId;
  }

  /** True when `password` is the current password of the (active) account. */
  async verifyPassword(userId: string, password: string): Promise<boolean> {
    const row = await this.passwordRow(userId);
    if (!row || row.passwordHash === null || password.length > MAX_PASSWORD_LENGTH) {
      return this.hasher.verifyNothing(password.slice(0, MAX_PASSWORD_LENGTH));
    }
    return this.hasher.verify(row.passwordHash, password);
  }

  private async passwordRow(userId: string) {
    const u = schema.users;
    const [row] = await this.db
      .select({ userId: u.userId, passwordHash: u.passwordHash, deactivatedTs: u.deactivatedTs, locked: u.locked })
      .from(schema.users)
      .where(eq(schema.users.userId, userId));
    return row;
  }

  /**
   * Sets a new password. With `logoutDevices`, every device but `keepDeviceId` is deleted (and with
   * it its tokens), as `POST /account/password` does by default.
   */
  async setPassword(
    userId: string,
    newPassword: string,
    options: { logoutDevices: boolean; keepDeviceId?: string },
    source: AuditSource,
  ): Promise<void> {
    checkPassword(newPassword);
    const passwordHash = await this.hasher.hash(newPassword);
    const u = schema.users;
    const updated = await this.db
      .update(u)
      .set({ passwordHash })
      .where(and(eq(u.userId, userId), isNull(u.deactivatedTs)))
      .returning({ userId: u.userId });
    if (updated.length === 0) throw notFound("No such active user");
    await this.audit.record("password_changed", userId, source, { logout_devices: options.logoutDevices });
    if (options.logoutDevices) {
      const others = (await this.deviceIds(userId)).filter((id) => id !== options.keepDeviceId);
      await this.deleteDevices(userId, others, source, "password_changed");
    }
  }

  /**
   * Deactivates an account: it can no longer log in, all its devices and tokens are deleted, its
   * profile is cleared. The row stays, so the localpart can never be registered again (user IDs are
   * in signed events for ever).
   */
  /**
   * Deactivates an account: no password, no profile, no devices. With `erase`, the user is also
   * erased (ErasedUsers): their messages are no longer shown to later joiners or other servers.
   */
  async deactivate(userId: string, source: AuditSource, options: { erase?: boolean } = {}): Promise<void> {
    const u = schema.users;
    const now = this.now();
    const updated = await this.db
      .update(u)
      .set({ deactivatedTs: now, passwordHash: null, displayName: null, avatarUrl: null, ...(options.erase ? { erasedTs: now } : {}) })
      .where(and(eq(u.userId, userId), isNull(u.deactivatedTs)))
      .returning({ userId: u.userId });
    if (updated.length === 0) throw notFound("No such active user");
    if (options.erase) ErasedUsers.of(this.db).invalidate();
    await this.deleteDevices(userId, await this.deviceIds(userId), source, "deactivated");
    await this.audit.record("deactivated", userId, source);
    for (const listener of this.deactivatedListeners) {
      try {
        await listener(userId);
      } catch (err) {
        this.logger.error({ err, userId }, "a deactivation hook failed");
      }
    }
    await this.profileChanged(userId, {});
  }

  async setAdmin(userId: string, admin: boolean): Promise<void> {
    const u = schema.users;
    const updated = await this.db.update(u).set({ isAdmin: admin }).where(eq(u.userId, userId)).returning();
    if (updated.length === 0) throw notFound("No such user");
  }

  // ---- Devices and login ---------------------------------------------------------------------------

  /**
   * Logs a user in on a device: a new one, or `deviceId` when given (created if it does not exist).
   * Logging in again on an existing device replaces its access token (spec, `/login` `device_id`).
   */
  async login(
    userId: string,
    options: { deviceId?: string; displayName?: string; refresh?: boolean; validUntilTs?: number; auditDetail?: Record<string, unknown> },
    source: AuditSource,
  ): Promise<LoginResult> {
    let deviceId = options.deviceId;
    if (deviceId !== undefined && (deviceId === "" || deviceId.length > MAX_DEVICE_ID_LENGTH)) {
      throw new MatrixError(400, "M_INVALID_PARAM", "Invalid device_id");
    }
    const d = schema.devices;
    let isNew = true;
    if (deviceId === undefined) {
      for (;;) {
        deviceId = generateDeviceId();
        const created = await this.db
          .insert(d)
          .values({ userId, deviceId, displayName: options.displayName ?? null, createdTs: this.now() })
          .onConflictDoNothing()
          .returning({ deviceId: d.deviceId });
        if (created.length) break;
      }
    } else {
      const created = await this.db
        .insert(d)
        .values({ userId, deviceId, displayName: options.displayName ?? null, createdTs: this.now() })
        .onConflictDoNothing()
        .returning({ deviceId: d.deviceId });
      isNew = created.length > 0;
      if (!isNew) await this.sessions.revokeDevices(userId, [deviceId]);
    }
    const tokens = await this.sessions.issue(userId, deviceId, options.refresh ?? false, options.validUntilTs);
    await this.audit.record("login", userId, source, { device_id: deviceId, ...options.auditDetail });
    if (isNew) {
      for (const listener of this.deviceCreatedListeners) {
        try {
          await listener(userId, deviceId);
        } catch (err) {
          this.logger.error({ err, userId }, "a device-created hook failed");
        }
      }
    }
    return { userId, deviceId, ...tokens };
  }

  /**
   * Creates a device with no access token: an application service managing its users' devices
   * (`PUT /devices/{deviceId}`, spec v1.17). False when the device already existed.
   */
  async createDevice(userId: string, deviceId: string, displayName: string | null): Promise<boolean> {
    if (deviceId === "" || deviceId.length > MAX_DEVICE_ID_LENGTH) throw new MatrixError(400, "M_INVALID_PARAM", "Invalid device_id");
    const d = schema.devices;
    const created = await this.db
      .insert(d)
      .values({ userId, deviceId, displayName, createdTs: this.now() })
      .onConflictDoNothing()
      .returning({ deviceId: d.deviceId });
    if (created.length === 0) return false;
    for (const listener of this.deviceCreatedListeners) {
      try {
        await listener(userId, deviceId);
      } catch (err) {
        this.logger.error({ err, userId }, "a device-created hook failed");
      }
    }
    return true;
  }

  /**
   * `GET /admin/whois/{userId}`: each device of the user, with its one session and the connection
   * last seen on it (address, time, user agent), if any.
   */
  async whois(userId: string): Promise<{ user_id: string; devices: Record<string, { sessions: Array<{ connections: JsonConnection[] }> }> }> {
    const d = schema.devices;
    const rows = await this.db.select().from(d).where(eq(d.userId, userId)).orderBy(asc(d.deviceId));
    const devices: Record<string, { sessions: Array<{ connections: JsonConnection[] }> }> = Object.create(null);
    for (const row of rows) {
      const connections: JsonConnection[] =
        row.lastSeenTs !== null ? [{ ip: row.lastSeenIp ?? "", last_seen: row.lastSeenTs, user_agent: row.lastSeenUserAgent ?? "" }] : [];
      devices[row.deviceId] = { sessions: [{ connections }] };
    }
    return { user_id: userId, devices };
  }

  /** The devices of a user as the admin API shows them: every column, null when unknown. */
  async adminDevices(userId: string): Promise<AdminDevice[]> {
    const d = schema.devices;
    const rows = await this.db.select().from(d).where(eq(d.userId, userId)).orderBy(asc(d.deviceId));
    return rows.map((row) => ({
      device_id: row.deviceId,
      display_name: row.displayName,
      last_seen_ip: row.lastSeenIp,
      last_seen_ts: row.lastSeenTs,
      last_seen_user_agent: row.lastSeenUserAgent,
      user_id: row.userId,
    }));
  }

  async listDevices(userId: string): Promise<Device[]> {
    const d = schema.devices;
    const rows = await this.db.select().from(d).where(eq(d.userId, userId)).orderBy(asc(d.deviceId));
    return rows.map(deviceJson);
  }

  async getDevice(userId: string, deviceId: string): Promise<Device> {
    const d = schema.devices;
    const [row] = await this.db
      .select()
      .from(d)
      .where(and(eq(d.userId, userId), eq(d.deviceId, deviceId)));
    if (!row) throw notFound("No such device");
    return deviceJson(row);
  }

  async renameDevice(userId: string, deviceId: string, displayName: string | null): Promise<void> {
    const d = schema.devices;
    const updated = await this.db
      .update(d)
      .set({ displayName })
      .where(and(eq(d.userId, userId), eq(d.deviceId, deviceId)))
      .returning({ deviceId: d.deviceId });
    if (updated.length === 0) throw notFound("No such device");
    for (const listener of this.deviceRenamedListeners) {
      try {
        await listener(userId, deviceId);
      } catch (err) {
        this.logger.error({ err, userId }, "a device-renamed hook failed");
      }
    }
  }

  private async deviceIds(userId: string): Promise<string[]> {
    const d = schema.devices;
    const rows = await this.db.select({ deviceId: d.deviceId }).from(d).where(eq(d.userId, userId));
    return rows.map((r) => r.deviceId);
  }

  /**
   * Deletes devices: first their tokens (which then fail at once with 401 M_UNKNOWN_TOKEN), then
   * the devices, then the devices-deleted hooks. Devices that do not exist are ignored.
   */
  async deleteDevices(userId: string, deviceIds: string[], source: AuditSource, reason = "deleted"): Promise<void> {
    if (deviceIds.length === 0) return;
    await this.sessions.revokeDevices(userId, deviceIds);
    const d = schema.devices;
    const deleted = await this.db
      .delete(d)
      .where(and(eq(d.userId, userId), inArray(d.deviceId, deviceIds)))
      .returning({ deviceId: d.deviceId });
    const ids = deleted.map((r) => r.deviceId);
    if (ids.length === 0) return;
    await this.audit.record(reason === "logout" ? "logout" : "device_deleted", userId, source, {
      device_ids: ids,
      ...(reason === "logout" || reason === "deleted" ? {} : { reason }),
    });
    for (const listener of this.devicesDeletedListeners) {
      try {
        await listener(userId, ids);
      } catch (err) {
        this.logger.error({ err, userId }, "a devices-deleted hook failed");
      }
    }
  }

  // ---- Profiles --------------------------------------------------------------------------------------

  /** The profile of a local user, or undefined when there is no such user. */
  async getProfile(userId: string): Promise<Profile | undefined> {
    const user = await this.getUser(userId);
    if (!user) return undefined;
    const profile: Profile = {};
    if (user.displayName !== null) profile.displayname = user.displayName;
    if (user.avatarUrl !== null) profile.avatar_url = user.avatarUrl;
    return profile;
  }

  async setDisplayName(userId: string, displayName: string | null): Promise<void> {
    if (displayName !== null && displayName.length > MAX_DISPLAYNAME_LENGTH) {
      throw new MatrixError(400, "M_INVALID_PARAM", `displayname is longer than ${MAX_DISPLAYNAME_LENGTH} characters`);
    }
    await this.updateProfile(userId, { displayName: displayName === "" ? null : displayName });
  }

  async setAvatarUrl(userId: string, avatarUrl: string | null): Promise<void> {
    if (avatarUrl !== null && avatarUrl.length > MAX_AVATAR_URL_LENGTH) {
      throw new MatrixError(400, "M_INVALID_PARAM", `avatar_url is longer than ${MAX_AVATAR_URL_LENGTH} characters`);
    }
    await this.updateProfile(userId, { avatarUrl: avatarUrl === "" ? null : avatarUrl });
  }

  private async updateProfile(userId: string, set: { displayName?: string | null; avatarUrl?: string | null }) {
    const u = schema.users;
    const [row] = await this.db
      .update(u)
      .set(set)
      .where(and(eq(u.userId, userId), isNull(u.deactivatedTs)))
      .returning({ displayName: u.displayName, avatarUrl: u.avatarUrl });
    if (!row) throw forbidden("This account cannot change its profile");
    await this.profileChanged(userId, {
      ...(row.displayName !== null ? { displayname: row.displayName } : {}),
      ...(row.avatarUrl !== null ? { avatar_url: row.avatarUrl } : {}),
    });
  }

  private async accountCreated(userId: string): Promise<void> {
    for (const listener of this.accountCreatedListeners) {
      try {
        await listener(userId);
      } catch (err) {
        this.logger.error({ err, userId }, "an account-created hook failed");
      }
    }
  }

  private async profileChanged(userId: string, profile: Profile): Promise<void> {
    for (const listener of this.profileChangedListeners) {
      try {
        await listener(userId, profile);
      } catch (err) {
        this.logger.error({ err, userId }, "a profile-changed hook failed");
      }
    }
  }
}

function checkPassword(password: string): void {
  if (password === "") throw new MatrixError(400, "M_WEAK_PASSWORD", "The password is empty");
  if (password.length > MAX_PASSWORD_LENGTH) {
    throw new MatrixError(400, "M_INVALID_PARAM", `The password is longer than ${MAX_PASSWORD_LENGTH} characters`);
  }
}

/** `s` matched literally by LIKE/ILIKE: its wildcards and the escape character escaped. */
function likeEscaped(s: string): string {
  return s.replace(/[\\%_]/g, (c) => `\\${c}`);
}

const userInUse = () => new MatrixError(400, "M_USER_IN_USE", "This username is taken");
const invalidLogin = () => forbidden("Invalid username or password");

const DEVICE_ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";
/** Ten capital letters, as Synapse makes them: 26^10 ≈ 1.4e14 possibilities. */
function generateDeviceId(): string {
  let id = "";
  for (let i = 0; i < 10; i++) id += DEVICE_ID_ALPHABET[randomInt(DEVICE_ID_ALPHABET.length)];
  return id;
}

function deviceJson(row: typeof schema.devices.$inferSelect): Device {
  const device: Device = { device_id: row.deviceId };
  if (row.displayName !== null) device.display_name = row.displayName;
  if (row.lastSeenIp !== null) device.last_seen_ip = row.lastSeenIp;
  if (row.lastSeenTs !== null) device.last_seen_ts = row.lastSeenTs;
  return device;
}
