// A user's own data on the server: account data (global, and later per room), filters and push rules.
// https://spec.matrix.org/latest/client-server-api/#client-config
// https://spec.matrix.org/latest/client-server-api/#filtering
// https://spec.matrix.org/latest/client-server-api/#push-rules-api
import { and, asc, eq, gt, inArray, lte, sql } from "drizzle-orm";
import { type Database, schema, type Tx } from "../../schema/db.ts";
import { MatrixError, notFound } from "../http/errors.ts";
import type { Ruleset } from "../pushrules/defaults.ts";
import { getPushRules, withServerDefaults } from "../pushrules/ruleset.ts";
import { advanceStream } from "../sync/streams.ts";

/** The account-data type under which a user's push rules are kept (and streamed to `/sync`). */
export const PUSH_RULES_TYPE = "m.push_rules";
/** The longest account data type (bytes of UTF-8). */
const MAX_TYPE_BYTES = 1024;

export interface AccountDataChange {
  roomId: string;
  type: string;
  content: Record<string, unknown>;
  streamId: number;
}

/** Called once an account-data write has committed; `/sync` hangs its wake-ups here. */
export type AccountDataListener = (userId: string, roomId: string, streamId: number) => void;

/**
 * Per-user storage limits (server/config.ts: user_data_quota_bytes, user_data_item_max_bytes,
 * user_filters_max). The spec sets none; without them one account could fill the database.
 */
export interface UserDataLimits {
  /** Account data (every room, type and JSON text) plus filters (JSON text), in bytes. */
  quotaBytes: number;
  /** One piece of account data or one filter, in bytes of JSON text. */
  itemMaxBytes: number;
  maxFilters: number;
}

export const DEFAULT_USER_DATA_LIMITS: UserDataLimits = { quotaBytes: 10 * 1024 * 1024, itemMaxBytes: 1024 * 1024, maxFilters: 1000 };

// 413 M_TOO_LARGE ("the request or entity was too large") rather than M_RESOURCE_LIMIT_EXCEEDED:
// the latter is for a limit of the whole homeserver, must carry an admin_contact, and clients show
// it as "this server is over its limits". Here it is this user's own data that is too large.
// https://spec.matrix.org/latest/client-server-api/#common-error-codes
const tooLarge = (message: string) => new MatrixError(413, "M_TOO_LARGE", message);

export class UserData {
  private readonly listeners: AccountDataListener[] = [];

  constructor(
    private readonly db: Database,
    private readonly limits: UserDataLimits = DEFAULT_USER_DATA_LIMITS,
  ) {}

  onAccountData(listener: AccountDataListener): void {
    this.listeners.push(listener);
  }

  private changed(userId: string, roomId: string, streamId: number): void {
    for (const listener of this.listeners) listener(userId, roomId, streamId);
  }

  // ---- Account data ----------------------------------------------------------------------------------

  /** The content of one piece of account data (`roomId` '' for global), or undefined. */
  async getAccountData(userId: string, roomId: string, type: string): Promise<Record<string, unknown> | undefined> {
    if (roomId === "" && type === PUSH_RULES_TYPE) return this.getPushRules(userId);
    const t = schema.accountData;
    const [row] = await this.db
      .select({ content: t.content })
      .from(t)
      .where(and(eq(t.userId, userId), eq(t.roomId, roomId), eq(t.type, type)));
    return row ? (JSON.parse(row.content) as Record<string, unknown>) : undefined;
  }

  /** The users `userId` ignores: the keys of `ignored_users` in their `m.ignored_user_list` account data. */
  async ignoredUsers(userId: string): Promise<Set<string>> {
    const content = await this.getAccountData(userId, "", "m.ignored_user_list");
    const list = content?.ignored_users;
    return typeof list === "object" && list !== null && !Array.isArray(list) ? new Set(Object.keys(list)) : new Set();
  }

  /**
   * Sets account data; each write takes the next position of the account-data stream, as the last
   * step of its transaction (server/sync/streams.ts: positions become visible in order).
   */
  async setAccountData(userId: string, roomId: string, type: string, content: Record<string, unknown>): Promise<number> {
    const text = JSON.stringify(content);
    const streamId = await this.db.transaction((tx) => this.writeAccountData(tx, userId, roomId, type, text));
    this.changed(userId, roomId, streamId);
    return streamId;
  }

  private async writeAccountData(tx: Tx, userId: string, roomId: string, type: string, content: string): Promise<number> {
    const t = schema.accountData;
    // The type is a key of the table's index, whose entries PostgreSQL caps at about 2.7 kB: a
    // longer one is a bad request, not a failed insert. Real types are short namespaced names.
    if (Buffer.byteLength(type, "utf8") > MAX_TYPE_BYTES) {
      throw new MatrixError(400, "M_INVALID_PARAM", `An account data type is at most ${MAX_TYPE_BYTES} bytes`);
    }
    const size = Buffer.byteLength(content, "utf8");
    if (size > this.limits.itemMaxBytes) {
      throw tooLarge(`Account data is at most ${this.limits.itemMaxBytes} bytes of JSON (this is ${size})`);
    }
    await this.lockUsage(tx, userId);
    // Read after the lock: a concurrent write of the same user committed before we got it.
    const [old] = await tx
      .select({ bytes: sql<number>`octet_length(${t.roomId}) + octet_length(${t.type}) + octet_length(${t.content})` })
      .from(t)
      .where(and(eq(t.userId, userId), eq(t.roomId, roomId), eq(t.type, type)));
    const bytes = Buffer.byteLength(roomId, "utf8") + Buffer.byteLength(type, "utf8") + size;
    await this.addUsage(tx, userId, bytes - Number(old?.bytes ?? 0), 0);
    const streamId = await advanceStream(tx, "account_data");
    await tx
      .insert(t)
      .values({ userId, roomId, type, content, streamId })
      .onConflictDoUpdate({ target: [t.userId, t.roomId, t.type], set: { content, streamId } });
    return streamId;
  }

  /**
   * The account data of a user that changed after stream position `since` and at or before `upTo`,
   * oldest first: what `/sync` sends (all of it when `since` is 0).
   */
  async accountDataSince(userId: string, since: number, upTo = Number.MAX_SAFE_INTEGER): Promise<AccountDataChange[]> {
    const t = schema.accountData;
    const rows = await this.db
      .select()
      .from(t)
      .where(and(eq(t.userId, userId), gt(t.streamId, since), lte(t.streamId, upTo)))
      .orderBy(asc(t.streamId));
    return rows.map((r) => ({
      roomId: r.roomId,
      type: r.type,
      content:
        r.roomId === "" && r.type === PUSH_RULES_TYPE
          ? getPushRules((JSON.parse(r.content) as { global?: unknown }).global, userId)
          : (JSON.parse(r.content) as Record<string, unknown>),
      streamId: r.streamId,
    }));
  }

  // ---- Filters ---------------------------------------------------------------------------------------

  /**
   * Stores a filter; its ID is a decimal string. The JSON text is kept exactly as given. A filter
   * identical to one the user already has gets that one's ID: clients that upload their filter on
   * every start (matrix-js-sdk when its stored ID is lost) do not use up the quota.
   */
  async createFilter(userId: string, filter: Record<string, unknown>): Promise<string> {
    const t = schema.filters;
    const text = JSON.stringify(filter);
    const size = Buffer.byteLength(text, "utf8");
    if (size > this.limits.itemMaxBytes) {
      throw tooLarge(`A filter is at most ${this.limits.itemMaxBytes} bytes of JSON (this is ${size})`);
    }
    return this.db.transaction(async (tx) => {
      await this.lockUsage(tx, userId);
      const [existing] = await tx
        .select({ id: t.id })
        .from(t)
        .where(and(eq(t.userId, userId), eq(t.filter, text)))
        .orderBy(asc(t.id))
        .limit(1);
      if (existing) return String(existing.id);
      await this.addUsage(tx, userId, size, 1);
      const [row] = await tx.insert(t).values({ userId, filter: text }).returning({ id: t.id });
      return String(row!.id);
    });
  }

  async getFilter(userId: string, filterId: string): Promise<Record<string, unknown>> {
    if (!/^[0-9]{1,15}$/.test(filterId)) throw notFound("No such filter");
    const t = schema.filters;
    const [row] = await this.db
      .select({ filter: t.filter })
      .from(t)
      .where(and(eq(t.userId, userId), eq(t.id, Number(filterId))));
    if (!row) throw notFound("No such filter");
    return JSON.parse(row.filter) as Record<string, unknown>;
  }

  // ---- Quotas -----------------------------------------------------------------------------------------

  /** Takes the user's usage row (creating it): writes of one user's data count one at a time. */
  private async lockUsage(tx: Tx, userId: string): Promise<void> {
    const u = schema.userDataUsage;
    await tx
      .insert(u)
      .values({ userId })
      .onConflictDoUpdate({ target: u.userId, set: { bytes: sql`${u.bytes}` } });
  }

  /**
   * Adds to the user's usage (held by lockUsage) and refuses a write that grows it past the quota;
   * one that shrinks it always passes, so a user over a lowered quota can still clean up.
   */
  private async addUsage(tx: Tx, userId: string, bytes: number, filters: number): Promise<void> {
    if (bytes === 0 && filters === 0) return;
    const u = schema.userDataUsage;
    const [row] = await tx
      .update(u)
      .set({ bytes: sql`${u.bytes} + ${bytes}`, filters: sql`${u.filters} + ${filters}` })
      .where(eq(u.userId, userId))
      .returning({ bytes: u.bytes, filters: u.filters });
    if (filters > 0 && row!.filters > this.limits.maxFilters) {
      throw tooLarge(`You have stored the most filters allowed (${this.limits.maxFilters})`);
    }
    if (bytes > 0 && row!.bytes > this.limits.quotaBytes) {
      throw tooLarge(
        `This would take your account data and filters past the ${this.limits.quotaBytes} bytes allowed; remove some first`,
      );
    }
  }

  // ---- Push rules ------------------------------------------------------------------------------------

  /** `{global: ruleset}`: the server-default rules merged with the user's own. */
  async getPushRules(userId: string): Promise<{ global: Ruleset }> {
    const t = schema.accountData;
    const [row] = await this.db
      .select({ content: t.content })
      .from(t)
      .where(and(eq(t.userId, userId), eq(t.roomId, ""), eq(t.type, PUSH_RULES_TYPE)));
    const stored = row ? (JSON.parse(row.content) as { global?: unknown }).global : undefined;
    return getPushRules(stored, userId);
  }

  /**
   * The effective push rules of several users at once (server defaults for those with none stored:
   * `custom` false); `q` is an open transaction to read in, if any.
   */
  async pushRulesOf(userIds: readonly string[], q: Database | Tx = this.db): Promise<Map<string, { ruleset: Ruleset; custom: boolean }>> {
    const out = new Map<string, { ruleset: Ruleset; custom: boolean }>();
    if (userIds.length === 0) return out;
    const t = schema.accountData;
    const rows = await q
      .select({ userId: t.userId, content: t.content })
      .from(t)
      .where(and(inArray(t.userId, [...userIds]), eq(t.roomId, ""), eq(t.type, PUSH_RULES_TYPE)));
    const stored = new Map(rows.map((r) => [r.userId, (JSON.parse(r.content) as { global?: unknown }).global]));
    for (const userId of userIds) out.set(userId, { ruleset: withServerDefaults(stored.get(userId), userId), custom: stored.has(userId) });
    return out;
  }

  /**
   * Applies one edit (a function of server/pushrules/ruleset.ts) to the user's ruleset and stores
   * the result. An advisory lock per user serialises edits (even the first, when there is no row
   * to lock yet), so two concurrent edits cannot lose one another.
   */
  async editPushRules(userId: string, edit: (ruleset: Ruleset) => Ruleset): Promise<void> {
    const t = schema.accountData;
    const streamId = await this.db.transaction(async (tx) => {
      await tx.execute(sql`select pg_advisory_xact_lock(hashtext(${`push_rules:${userId}`}))`);
      const [row] = await tx
        .select({ content: t.content })
        .from(t)
        .where(and(eq(t.userId, userId), eq(t.roomId, ""), eq(t.type, PUSH_RULES_TYPE)));
      const current = withServerDefaults(row ? (JSON.parse(row.content) as { global?: unknown }).global : undefined, userId);
      const text = JSON.stringify({ global: edit(current) });
      return this.writeAccountData(tx, userId, "", PUSH_RULES_TYPE, text);
    });
    this.changed(userId, "", streamId);
  }
}
