// A user's own data on the server: account data (global, and later per room), filters and push rules.
// https://spec.matrix.org/latest/client-server-api/#client-config
// https://spec.matrix.org/latest/client-server-api/#filtering
// https://spec.matrix.org/latest/client-server-api/#push-rules-api
import { and, asc, eq, gt, inArray, lte, sql } from "drizzle-orm";
import { type Database, schema, type Tx } from "../../schema/db.ts";
import { notFound } from "../http/errors.ts";
import type { Ruleset } from "../pushrules/defaults.ts";
import { getPushRules, withServerDefaults } from "../pushrules/ruleset.ts";
import { advanceStream } from "../sync/streams.ts";

/** The account-data type under which a user's push rules are kept (and streamed to `/sync`). */
export const PUSH_RULES_TYPE = "m.push_rules";

export interface AccountDataChange {
  roomId: string;
  type: string;
  content: Record<string, unknown>;
  streamId: number;
}

/** Called once an account-data write has committed; `/sync` hangs its wake-ups here. */
export type AccountDataListener = (userId: string, roomId: string, streamId: number) => void;

export class UserData {
  private readonly listeners: AccountDataListener[] = [];

  constructor(private readonly db: Database) {}

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

  /** Stores a filter; its ID is a decimal string. The JSON text is kept exactly as given. */
  async createFilter(userId: string, filter: Record<string, unknown>): Promise<string> {
    const t = schema.filters;
    const [row] = await this.db.insert(t).values({ userId, filter: JSON.stringify(filter) }).returning({ id: t.id });
    return String(row!.id);
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
