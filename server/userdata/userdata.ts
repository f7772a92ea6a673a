// A user's own data on the server: account data (global, and later per room), filters and push rules.
// https://spec.matrix.org/latest/client-server-api/#client-config
// https://spec.matrix.org/latest/client-server-api/#filtering
// https://spec.matrix.org/latest/client-server-api/#push-rules-api
import { and, asc, eq, gt, sql } from "drizzle-orm";
import { type Database, schema } from "../../schema/db.ts";
import { notFound } from "../http/errors.ts";
import type { Ruleset } from "../pushrules/defaults.ts";
import { getPushRules, withServerDefaults } from "../pushrules/ruleset.ts";

/** The account-data type under which a user's push rules are kept (and streamed to `/sync`). */
export const PUSH_RULES_TYPE = "m.push_rules";

export interface AccountDataChange {
  roomId: string;
  type: string;
  content: Record<string, unknown>;
  streamId: number;
}

export class UserData {
  constructor(private readonly db: Database) {}

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

  /** Sets account data; each write takes the next position of the account-data stream. */
  async setAccountData(userId: string, roomId: string, type: string, content: Record<string, unknown>): Promise<number> {
    const t = schema.accountData;
    const text = JSON.stringify(content);
    const [row] = await this.db
      .insert(t)
      .values({ userId, roomId, type, content: text, streamId: sql`nextval('account_data_stream')` })
      .onConflictDoUpdate({
        target: [t.userId, t.roomId, t.type],
        set: { content: text, streamId: sql`nextval('account_data_stream')` },
      })
      .returning({ streamId: t.streamId });
    return row!.streamId;
  }

  /**
   * The account data of a user that changed after stream position `since`, oldest first: what
   * `/sync` sends. (Positions are taken at write time; the sync component must not move its token
   * past a position whose transaction may still be open — see its notes.)
   */
  async accountDataSince(userId: string, since: number): Promise<AccountDataChange[]> {
    const t = schema.accountData;
    const rows = await this.db
      .select()
      .from(t)
      .where(and(eq(t.userId, userId), gt(t.streamId, since)))
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
   * Applies one edit (a function of server/pushrules/ruleset.ts) to the user's ruleset and stores
   * the result. An advisory lock per user serialises edits (even the first, when there is no row
   * to lock yet), so two concurrent edits cannot lose one another.
   */
  async editPushRules(userId: string, edit: (ruleset: Ruleset) => Ruleset): Promise<void> {
    const t = schema.accountData;
    await this.db.transaction(async (tx) => {
      await tx.execute(sql`select pg_advisory_xact_lock(hashtext(${`push_rules:${userId}`}))`);
      const [row] = await tx
        .select({ content: t.content })
        .from(t)
        .where(and(eq(t.userId, userId), eq(t.roomId, ""), eq(t.type, PUSH_RULES_TYPE)));
      const current = withServerDefaults(row ? (JSON.parse(row.content) as { global?: unknown }).global : undefined, userId);
      const text = JSON.stringify({ global: edit(current) });
      await tx
        .insert(t)
        .values({ userId, roomId: "", type: PUSH_RULES_TYPE, content: text, streamId: sql`nextval('account_data_stream')` })
        .onConflictDoUpdate({
          target: [t.userId, t.roomId, t.type],
          set: { content: text, streamId: sql`nextval('account_data_stream')` },
        });
    });
  }
}
