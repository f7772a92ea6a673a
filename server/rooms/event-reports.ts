// Reported events: `POST /rooms/{roomId}/report/{eventId}` stores what a user reported, and the server
// admins read and dismiss the reports through Synapse's admin API (`/_synapse/admin/v1/event_reports`).
// https://spec.matrix.org/latest/client-server-api/#reporting-content
// https://element-hq.github.io/synapse/latest/admin_api/event_reports.html
import { sql } from "drizzle-orm";
import { type Database, rowsOf } from "../../schema/db.ts";
import type { JsonObject } from "../../federation/protocol/pdu.ts";
import { notFound } from "../http/errors.ts";
import type { Requester } from "../http/route.ts";
import type { Timeline } from "./timeline.ts";

interface ReportRow {
  id: string | number;
  received_ts: string | number;
  room_id: string;
  event_id: string;
  user_id: string;
  reason: string | null;
  score: number | null;
  sender: string | null;
  json: string | null;
  name_json: string | null;
  alias_json: string | null;
}

export class EventReports {
  constructor(
    private readonly db: Database,
    private readonly timeline: Timeline,
    private readonly now: () => number,
  ) {}

  /**
   * Stores a report of an event the reporter may see. An event they may not see, or one that does not
   * exist, is the same 404 ("The event was not found or you are not permitted to read this event"),
   * so a report cannot probe for events.
   */
  async report(requester: Requester, roomId: string, eventId: string, reason: string | undefined, score: number | undefined): Promise<void> {
    await this.timeline.event(requester, roomId, eventId);
    await this.db.execute(sql`insert into event_reports (received_ts, room_id, event_id, user_id, reason, score)
      values (${this.now()}, ${roomId}, ${eventId}, ${requester.userId}, ${reason ?? null}, ${score ?? null})`);
  }

  /**
   * Every report joined with what the admin list shows of its event and room (the reported event's
   * sender, the room's name and canonical alias). Rows whose event or room was purged keep those
   * fields null.
   */
  private select(where: ReturnType<typeof sql>, order: "asc" | "desc", limit: number, offset: number) {
    return this.db.execute(sql`
      select r.id, r.received_ts, r.room_id, r.event_id, r.user_id, r.reason, r.score, e.sender, e.json,
             (select ne.json from current_state c join events ne on ne.event_id = c.event_id
               where c.room_id = r.room_id and c.type = 'm.room.name' and c.state_key = '') as name_json,
             (select ae.json from current_state c join events ae on ae.event_id = c.event_id
               where c.room_id = r.room_id and c.type = 'm.room.canonical_alias' and c.state_key = '') as alias_json
      from event_reports r left join events e on e.event_id = r.event_id
      where ${where}
      order by r.received_ts ${order === "asc" ? sql`asc` : sql`desc`}, r.id ${order === "asc" ? sql`asc` : sql`desc`}
      limit ${limit} offset ${offset}`);
  }

  /** `GET /_synapse/admin/v1/event_reports`: newest first by default (`dir=b`), paged by offset. */
  async list(options: { from: number; limit: number; dir: "f" | "b"; userId?: string; roomId?: string }) {
    // Synapse's filters are substring matches ("Is optional and filters to only return users with
    // user IDs that contain this value").
    const conditions = [sql`true`];
    if (options.userId !== undefined) conditions.push(sql`strpos(r.user_id, ${options.userId}) > 0`);
    if (options.roomId !== undefined) conditions.push(sql`strpos(r.room_id, ${options.roomId}) > 0`);
    const where = sql.join(conditions, sql` and `);
    const [rows, [count]] = await Promise.all([
      this.select(where, options.dir === "f" ? "asc" : "desc", options.limit, options.from).then((r) => rowsOf<ReportRow>(r)),
      this.db.execute(sql`select count(*)::int as n from event_reports r where ${where}`).then((r) => rowsOf<{ n: number }>(r)),
    ]);
    const total = Number(count?.n ?? 0);
    const response: Record<string, unknown> = { event_reports: rows.map((r) => summary(r)), total };
    if (options.from + rows.length < total) response.next_token = options.from + rows.length;
    return response;
  }

  /** `GET /_synapse/admin/v1/event_reports/{id}`: with the reported event as stored (`event_json`). */
  async get(id: number) {
    const [row] = rowsOf<ReportRow>(await this.select(sql`r.id = ${id}`, "asc", 1, 0));
    if (!row) throw notFound("Event report not found");
    return { ...summary(row), event_json: row.json === null ? null : (JSON.parse(row.json) as JsonObject) };
  }

  /** `DELETE /_synapse/admin/v1/event_reports/{id}`. */
  async delete(id: number): Promise<void> {
    const deleted = rowsOf(await this.db.execute(sql`delete from event_reports where id = ${id} returning id`));
    if (deleted.length === 0) throw notFound("Event report not found");
  }
}

function contentField(json: string | null, key: string): string | null {
  if (json === null) return null;
  const value = ((JSON.parse(json) as { content?: Record<string, unknown> }).content ?? {})[key];
  return typeof value === "string" ? value : null;
}

function summary(r: ReportRow) {
  return {
    id: Number(r.id),
    received_ts: Number(r.received_ts),
    room_id: r.room_id,
    name: contentField(r.name_json, "name"),
    event_id: r.event_id,
    user_id: r.user_id,
    reason: r.reason,
    score: r.score,
    sender: r.sender,
    canonical_alias: contentField(r.alias_json, "alias"),
  };
}
