// Event relationships: GET /relations and bundled aggregations.
// https://spec.matrix.org/latest/client-server-api/#forming-relationships-between-events
// https://spec.matrix.org/latest/client-server-api/#get_matrixclientv1roomsroomidrelationseventid
// https://spec.matrix.org/latest/client-server-api/#aggregations-of-child-events
//
// The persister stores each event's `m.relates_to` in `event_relations` (and `m.in_reply_to`, which
// is not a relationship type: it is never returned here). Bundled aggregations, under
// `unsigned["m.relations"]` of the parent event:
// - `m.thread`: the latest event of the thread, the number of events in it, and whether the reader
//   took part (sent the root or a reply in the thread);
// - `m.replace`: the most recent valid edit, in full ("most recent" by origin_server_ts, then the
//   lexicographically largest event ID), only edits by the original sender, of the same type, not
//   state events, and not redacted;
// - `m.reference`: the IDs of the events that reference it.
import { type SQL, sql } from "drizzle-orm";
import { type Database, rowsOf } from "../../schema/db.ts";
import { MatrixError } from "../http/errors.ts";
import type { Requester } from "../http/route.ts";
import { EVENT_COLUMNS, type EventStore, type Reader, type StoredEvent, sqlList } from "./event-store.ts";
import { TIMELINE_END, TIMELINE_START, type TimelinePoint, formatToken, parseToken, pointAfter, pointBefore } from "./pagination.ts";
import type { Timeline } from "./timeline.ts";
import type { HistoryVisibility } from "./visibility.ts";

type JsonObject = Record<string, unknown>;

/** "It is recommended that homeservers traverse at least 3 levels of relationships." */
const RECURSION_DEPTH = 3;
const MAX_LIMIT = 100;

export interface RelationsRequest {
  relType?: string;
  eventType?: string;
  from?: string;
  to?: string;
  limit?: number;
  dir: "b" | "f";
  recurse?: boolean;
}

export interface ThreadsRequest {
  include: "all" | "participated";
  limit?: number;
  from?: string;
}

const THREADS_DEFAULT_LIMIT = 20;

export class Relations {
  constructor(
    private readonly db: Database,
    private readonly store: EventStore,
    private readonly timeline: Timeline,
    private readonly visibility: HistoryVisibility,
  ) {}

  async relations(requester: Requester, roomId: string, parentId: string, request: RelationsRequest): Promise<JsonObject> {
    const access = await this.timeline.access(requester.userId, roomId);
    await this.timeline.visibleEvent(access, parentId);
    const limit = Math.min(Math.max(request.limit ?? 50, 0), MAX_LIMIT);
    const backwards = request.dir !== "f";
    let cursor = request.from !== undefined ? this.point(request.from) : backwards ? TIMELINE_END : TIMELINE_START;
    if (access.until && backwards && (cursor.topological > access.until.topological || (cursor.topological === access.until.topological && cursor.stream > access.until.stream))) {
      cursor = access.until;
    }
    let bound = request.to !== undefined ? this.point(request.to) : undefined;
    if (access.until && !backwards && !bound) bound = access.until;
    const depth = request.recurse ? RECURSION_DEPTH : 1;

    const out: StoredEvent[] = [];
    let exhausted = false;
    while (out.length < limit) {
      const batch = Math.max(limit * 2, 20);
      const rows = await this.children(roomId, parentId, request.relType, request.eventType, depth, backwards, cursor, bound, batch);
      const visible = new Set((await this.visibility.filter(access.viewer, rows)).map((e) => e.eventId));
      for (const row of rows) {
        cursor = backwards ? pointBefore(row) : pointAfter(row);
        if (visible.has(row.eventId)) out.push(row);
        if (out.length >= limit) break;
      }
      if (rows.length < batch && out.length < limit) {
        exhausted = true;
        break;
      }
    }
    const response: JsonObject = { chunk: await this.store.format(out, requester) };
    if (!exhausted) response.next_batch = formatToken(cursor);
    if (request.from !== undefined) response.prev_batch = request.from;
    if (request.recurse !== undefined) response.recursion_depth = depth;
    return response;
  }

  /**
   * GET /rooms/{roomId}/threads (threads_list.yaml): the room's thread roots the user may see, the
   * thread with the latest reply first ("ordered by the latest_event in each event's aggregated
   * children", topologically), each with its bundled aggregations as /messages serves them.
   * `participated`: threads whose root or a reply the user sent. The token is the position of the
   * last thread's latest reply; the next page has the threads whose latest reply is older. A former
   * member sees the threads as they were when they left.
   */
  async threads(requester: Requester, roomId: string, request: ThreadsRequest): Promise<JsonObject> {
    const access = await this.timeline.access(requester.userId, roomId);
    const limit = Math.min(request.limit ?? THREADS_DEFAULT_LIMIT, MAX_LIMIT);
    let cursor = TIMELINE_END;
    if (request.from !== undefined) {
      const parsed = parseToken(request.from);
      if (parsed.kind !== "topological") throw new MatrixError(400, "M_INVALID_PARAM", "Unknown pagination token");
      cursor = parsed.point;
    }
    const userId = requester.userId;
    const accepted = (alias: string) =>
      sql`${sql.raw(alias)}.stream_ordering is not null and ${sql.raw(alias)}.rejected_reason is null and not ${sql.raw(alias)}.soft_failed`;
    const until = access.until;
    const notAfterUntil = (alias: string) =>
      until ? sql` and (${sql.raw(alias)}.topological_ordering, ${sql.raw(alias)}.stream_ordering) <= (${until.topological}::bigint, ${until.stream}::bigint)` : sql``;

    const out: StoredEvent[] = [];
    let exhausted = false;
    while (out.length < limit) {
      const batch = Math.max(limit * 2, 20);
      const page = rowsOf<{ root_id: string; lt: string | number; ls: string | number }>(
        await this.db.execute(sql`select t.root_id, t.lt, t.ls from (
            select distinct on (rl.relates_to_id) rl.relates_to_id as root_id, e.topological_ordering as lt, e.stream_ordering as ls
            from events e join event_relations rl on rl.event_id = e.event_id and rl.rel_type = 'm.thread'
            where e.room_id = ${roomId} and ${accepted("e")}${notAfterUntil("e")}
            order by rl.relates_to_id, e.topological_ordering desc, e.stream_ordering desc
          ) t join events root on root.event_id = t.root_id
          where root.room_id = ${roomId} and ${accepted("root")}${notAfterUntil("root")}
            and (t.lt, t.ls) < (${cursor.topological}::bigint, ${cursor.stream}::bigint)
            ${
              request.include === "participated"
                ? sql`and (root.sender = ${userId} or exists (select 1 from event_relations r2 join events e2 on e2.event_id = r2.event_id
                    where r2.relates_to_id = t.root_id and r2.rel_type = 'm.thread' and e2.sender = ${userId} and ${accepted("e2")}))`
                : sql``
            }
          order by t.lt desc, t.ls desc limit ${batch}::int`),
      );
      const roots = await this.store.getEvents(page.map((r) => r.root_id));
      const visible = new Set((await this.visibility.filter(access.viewer, [...roots.values()])).map((e) => e.eventId));
      for (const row of page) {
        cursor = { topological: Number(row.lt), stream: Number(row.ls) };
        const root = roots.get(row.root_id);
        if (root && visible.has(root.eventId)) out.push(root);
        if (out.length >= limit) break;
      }
      if (page.length < batch && out.length < limit) {
        exhausted = true;
        break;
      }
    }
    const response: JsonObject = { chunk: await this.store.format(out, requester) };
    if (!exhausted) response.next_batch = formatToken(cursor);
    return response;
  }

  private point(token: string): TimelinePoint {
    const parsed = parseToken(token);
    // Stream tokens order like the room's events only roughly; relations treat them as points of the
    // stream within the first topological level, which is exact for rooms on one server.
    return parsed.kind === "topological" ? parsed.point : { topological: Number.MAX_SAFE_INTEGER, stream: parsed.stream };
  }

  /** Events relating to the parent (directly, or through up to `depth` relations), in timeline order. */
  private children(
    roomId: string,
    parentId: string,
    relType: string | undefined,
    eventType: string | undefined,
    depth: number,
    backwards: boolean,
    cursor: TimelinePoint,
    bound: TimelinePoint | undefined,
    limit: number,
  ): Promise<StoredEvent[]> {
    const relFilter = (alias: string) =>
      relType !== undefined
        ? sql`${sql.raw(alias)}.rel_type = ${relType}`
        : sql`${sql.raw(alias)}.rel_type <> 'm.in_reply_to'`;
    const pos = sql`(e.topological_ordering, e.stream_ordering)`;
    const at = (p: TimelinePoint) => sql`(${p.topological}::bigint, ${p.stream}::bigint)`;
    const range: SQL = backwards
      ? sql`${pos} <= ${at(cursor)}${bound ? sql` and ${pos} > ${at(bound)}` : sql``}`
      : sql`${pos} > ${at(cursor)}${bound ? sql` and ${pos} <= ${at(bound)}` : sql``}`;
    const order = backwards ? sql`e.topological_ordering desc, e.stream_ordering desc` : sql`e.topological_ordering asc, e.stream_ordering asc`;
    return this.store.query(sql`with recursive rels(event_id, depth) as (
        select event_id, 1 from event_relations rl where rl.relates_to_id = ${parentId} and ${relFilter("rl")}
        union
        select rl.event_id, d.depth + 1 from event_relations rl join rels d on rl.relates_to_id = d.event_id
        where d.depth < ${depth}::int and ${relFilter("rl")}
      )
      select ${EVENT_COLUMNS} from (select distinct event_id from rels) x
        join events e on e.event_id = x.event_id join rooms r on r.room_id = e.room_id
      where e.room_id = ${roomId} and e.stream_ordering is not null and e.rejected_reason is null and not e.soft_failed
        ${eventType !== undefined ? sql`and e.type = ${eventType}` : sql``} and ${range}
      order by ${order} limit ${limit}::int`);
  }

  /** Bundled aggregations for events (event ID → the `m.relations` object), for EventStore.format. */
  readonly bundle = async (events: StoredEvent[], reader: Reader): Promise<Map<string, JsonObject>> => {
    const out = new Map<string, JsonObject>();
    const parents = events.filter((e) => e.stateKey === undefined);
    if (parents.length === 0) return out;
    const ids = parents.map((e) => e.eventId);
    const byId = new Map(parents.map((e) => [e.eventId, e]));
    const accepted = sql`e.stream_ordering is not null and e.rejected_reason is null and not e.soft_failed`;

    const [threads, edits, references] = await Promise.all([
      rowsOf<{ relates_to_id: string; count: string | number; latest: string; participated: boolean }>(
        await this.db.execute(sql`select rl.relates_to_id, count(*) as count,
            (array_agg(e.event_id order by e.topological_ordering desc, e.stream_ordering desc))[1] as latest,
            bool_or(e.sender = ${reader.userId}) as participated
          from event_relations rl join events e on e.event_id = rl.event_id
          where rl.relates_to_id in (${sqlList(ids)}) and rl.rel_type = 'm.thread' and ${accepted}
          group by rl.relates_to_id`),
      ),
      rowsOf<{ relates_to_id: string; event_id: string; sender: string; type: string; state_key: string | null; origin_server_ts: string | number }>(
        await this.db.execute(sql`select rl.relates_to_id, e.event_id, e.sender, e.type, e.state_key, e.origin_server_ts
          from event_relations rl join events e on e.event_id = rl.event_id
          where rl.relates_to_id in (${sqlList(ids)}) and rl.rel_type = 'm.replace' and ${accepted} and e.redacted_by is null`),
      ),
      rowsOf<{ relates_to_id: string; event_id: string }>(
        await this.db.execute(sql`select rl.relates_to_id, e.event_id from event_relations rl join events e on e.event_id = rl.event_id
          where rl.relates_to_id in (${sqlList(ids)}) and rl.rel_type = 'm.reference' and ${accepted}
          order by e.topological_ordering, e.stream_ordering`),
      ),
    ]);

    const latestEdit = new Map<string, { eventId: string; ts: number }>();
    for (const r of edits) {
      const original = byId.get(r.relates_to_id)!;
      if (r.sender !== original.sender || r.type !== original.type || r.state_key !== null) continue;
      if (isEdit(original)) continue;
      const ts = Number(r.origin_server_ts);
      const best = latestEdit.get(r.relates_to_id);
      if (!best || ts > best.ts || (ts === best.ts && r.event_id > best.eventId)) latestEdit.set(r.relates_to_id, { eventId: r.event_id, ts });
    }
    const toLoad = [...threads.map((t) => t.latest), ...[...latestEdit.values()].map((e) => e.eventId)];
    const loaded = await this.store.getEvents(toLoad);
    const formatted = new Map(
      (await this.store.format([...loaded.values()], reader, { aggregations: false })).map((e) => [e.event_id, e]),
    );

    const entry = (id: string) => {
      let relations = out.get(id);
      if (!relations) out.set(id, (relations = {}));
      return relations;
    };
    for (const t of threads) {
      const latest = formatted.get(t.latest);
      if (!latest) continue;
      entry(t.relates_to_id)["m.thread"] = {
        latest_event: latest,
        count: Number(t.count),
        current_user_participated: t.participated || byId.get(t.relates_to_id)!.sender === reader.userId,
      };
    }
    for (const [parent, edit] of latestEdit) {
      const event = formatted.get(edit.eventId);
      if (event) entry(parent)["m.replace"] = event;
    }
    const refs = new Map<string, Array<{ event_id: string }>>();
    for (const r of references) {
      let chunk = refs.get(r.relates_to_id);
      if (!chunk) refs.set(r.relates_to_id, (chunk = []));
      chunk.push({ event_id: r.event_id });
    }
    for (const [parent, chunk] of refs) entry(parent)["m.reference"] = { chunk };
    return out;
  };
}

function isEdit(event: StoredEvent): boolean {
  const relatesTo = (event.pdu.content as JsonObject | undefined)?.["m.relates_to"] as JsonObject | undefined;
  return relatesTo?.rel_type === "m.replace";
}
