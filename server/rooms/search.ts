// Server-side search: POST /_matrix/client/v3/search, category `room_events`.
// https://spec.matrix.org/latest/client-server-api/#server-side-search (data/api/client-server/search.yaml)
//
// "This category covers all events that the user is allowed to see, including events in rooms that
// they have left. The search is performed on certain keys of certain event types": `content.body` of
// m.room.message, `content.name` of m.room.name, `content.topic` of m.room.topic (with the text/plain
// `m.topic` body). "The search will not include rooms that are end to end encrypted."
//
// The index (`event_search`, schema/tables/search.ts) is PostgreSQL full-text search, the same SQL on
// PGlite and PostgreSQL: a tsvector per event, `to_tsvector('english', text)` (PGlite ships the
// snowball configurations, so "messages" finds "message" as in Synapse), a GIN index, queries with
// `websearch_to_tsquery` (any input is a valid query: quoted phrases, `or`, `-word`; it never raises a
// syntax error the way `to_tsquery` does, and unlike `plainto_tsquery` it gives users those
// operators), ranked with `ts_rank`. Rows are written by the persist path in the statement that stores
// the event (a write extension: one more CTE, no extra round trip), and deleted after a redaction
// commits; until then, and always, the query reads `events` and drops redacted, rejected,
// soft-failed and outlier events. Each candidate then passes the history-visibility rules
// (visibility.ts) for the user, as /messages does.
//
// Paging: `next_batch` is the position of the last candidate examined (its stream position, and its
// rank when ordered by rank), so the next page starts right after it: no result twice, none skipped.
// A token from a group (`groups.room_id[…].next_batch`) carries the group and pages within it.
import { type SQL, sql } from "drizzle-orm";
import type { Logger } from "pino";
import { type Database, rowsOf } from "../../schema/db.ts";
import type { RoomEvent } from "../../federation/protocol/pdu.ts";
import { stateMapKey } from "../../federation/protocol/room-state.ts";
import { dictionary } from "../../federation/protocol/dictionary.ts";
import { MatrixError } from "../http/errors.ts";
import type { Requester } from "../http/route.ts";
import { type ClientEvent, type EventStore, type StoredEvent, sqlList, visibleContent } from "./event-store.ts";
import { matchesFilter, typeMatches, type RoomEventFilter } from "./event-filter.ts";
import type { BatchPersistedListener, EventsWriteExtension, HistoricalWriteExtension } from "./persister.ts";
import type { Rooms } from "./rooms.ts";
import { lookupStateKeys } from "./state-groups.ts";
import type { RoomAccess, Timeline } from "./timeline.ts";
import type { HistoryVisibility } from "./visibility.ts";

type JsonObject = Record<string, unknown>;

export type SearchKey = "content.body" | "content.name" | "content.topic";
export type SearchOrder = "rank" | "recent";
export type SearchGroupKey = "room_id" | "sender";

/** The event type each searchable key belongs to. */
const KEY_TYPES: Record<SearchKey, string> = {
  "content.body": "m.room.message",
  "content.name": "m.room.name",
  "content.topic": "m.room.topic",
};
const ALL_KEYS = Object.keys(KEY_TYPES) as SearchKey[];

/** The text-search configuration of the index and of queries (they must be the same). */
const CONFIG = "english";
const DEFAULT_LIMIT = 10;
const MAX_LIMIT = 500;
const MAX_CONTEXT = 100;
/** Candidates examined for one request at most, however many visibility and filters drop. */
const MAX_SCANNED = 5_000;
/** Matches counted exactly at most (see `count`). */
const EXACT_COUNT = 1_000;
/** Words of the results looked at for `highlights`, at most. */
const MAX_HIGHLIGHT_WORDS = 2_000;

/** A RoomEventFilter as search takes it (with `rooms` and `not_rooms`). */
export interface SearchFilter extends RoomEventFilter {
  rooms?: string[];
  not_rooms?: string[];
}

export interface RoomEventsSearch {
  searchTerm: string;
  keys?: SearchKey[];
  filter: SearchFilter;
  orderBy: SearchOrder;
  eventContext?: { beforeLimit?: number; afterLimit?: number; includeProfile?: boolean };
  includeState: boolean;
  groupBy: SearchGroupKey[];
  /** The `next_batch` query parameter. */
  nextBatch?: string;
}

/** Where a page ends: the last candidate examined, and the group a group's token pages within. */
interface Cursor {
  order: SearchOrder;
  stream: number;
  rank?: number;
  group?: { key: SearchGroupKey; value: string };
  /** The first page's count, so later pages need not count again. */
  count?: number;
}

/** The searchable text of an event, or undefined for events search does not cover. */
export function searchableText(event: { type: string; state_key?: string; content: JsonObject }): { key: SearchKey; text: string } | undefined {
  const c = event.content;
  let key: SearchKey;
  let text: string | undefined;
  if (event.type === "m.room.message") {
    key = "content.body";
    text = typeof c.body === "string" ? c.body : undefined;
  } else if (event.type === "m.room.name" && event.state_key === "") {
    key = "content.name";
    text = typeof c.name === "string" ? c.name : undefined;
  } else if (event.type === "m.room.topic" && event.state_key === "") {
    key = "content.topic";
    const topic = typeof c.topic === "string" ? c.topic : undefined;
    const plain = plainTopic(c["m.topic"]);
    text = [topic, plain !== topic ? plain : undefined].filter((x) => x !== undefined).join(" ");
  } else {
    return undefined;
  }
  return text ? { key, text } : undefined;
}

/** The text/plain representation in `m.topic` (`m.text`: an array of {mimetype, body}). */
function plainTopic(block: unknown): string | undefined {
  if (typeof block !== "object" || block === null || Array.isArray(block)) return undefined;
  const texts = (block as JsonObject)["m.text"];
  if (!Array.isArray(texts)) return undefined;
  for (const t of texts) {
    if (typeof t !== "object" || t === null) continue;
    const { mimetype, body } = t as JsonObject;
    if (typeof body === "string" && (mimetype === undefined || mimetype === "text/plain")) return body;
  }
  return undefined;
}

function redactsOf(pdu: JsonObject): string | undefined {
  const redacts = typeof pdu.redacts === "string" ? pdu.redacts : (pdu.content as JsonObject | undefined)?.redacts;
  return typeof redacts === "string" ? redacts : undefined;
}

/** The statement that indexes the searchable ones of some events (none: no statement). */
function indexRows(events: ReadonlyArray<{ event: RoomEvent; roomId: string; position: SQL }>): SQL[] {
  const rows: SQL[] = [];
  for (const { event, roomId, position } of events) {
    const doc = searchableText(event);
    if (!doc) continue;
    rows.push(sql`(${event.event_id}, ${roomId}, ${event.sender}, ${doc.key}, to_tsvector(${CONFIG}::regconfig, ${doc.text}), ${position})`);
  }
  if (rows.length === 0) return [];
  return [
    sql`insert into event_search (event_id, room_id, sender, key, vector, stream_ordering) values ${sql.join(rows, sql`, `)}
      on conflict do nothing`,
  ];
}

export function encodeCursor(cursor: Cursor): string {
  return Buffer.from(JSON.stringify(cursor)).toString("base64url");
}

function decodeCursor(token: string, order: SearchOrder): Cursor {
  const invalid = () => new MatrixError(400, "M_INVALID_PARAM", "Invalid next_batch");
  if (token.length > 2_000) throw invalid();
  let value: unknown;
  try {
    value = JSON.parse(Buffer.from(token, "base64url").toString("utf8"));
  } catch {
    throw invalid();
  }
  if (typeof value !== "object" || value === null) throw invalid();
  const c = value as Partial<Cursor>;
  if (c.order !== order) throw new MatrixError(400, "M_INVALID_PARAM", "next_batch is from a search with another order_by");
  if (typeof c.stream !== "number" || !Number.isSafeInteger(c.stream)) throw invalid();
  // The rank goes back to the database as a `real`: one out of its range (a forged token) would
  // be refused there, as a 500.
  if (order === "rank" && (typeof c.rank !== "number" || !inRealRange(c.rank))) throw invalid();
  if (c.group !== undefined) {
    const g = c.group as { key?: unknown; value?: unknown };
    if ((g.key !== "room_id" && g.key !== "sender") || typeof g.value !== "string") throw invalid();
  }
  if (c.count !== undefined && (typeof c.count !== "number" || !Number.isSafeInteger(c.count) || c.count < 0)) throw invalid();
  return { order, stream: c.stream, rank: c.rank, group: c.group, count: c.count };
}

/** Whether a number can be given to PostgreSQL as a `real` (float4) without overflow or underflow. */
function inRealRange(x: number): boolean {
  const f = Math.fround(x);
  return Number.isFinite(f) && (x === 0 || Math.abs(f) >= 1.1754943508222875e-38);
}

interface Candidate {
  event: StoredEvent;
  rank: number;
}

/** A room the user may search, and the last stream position they may see in it (former members). */
interface SearchableRoom {
  roomId: string;
  joined: boolean;
  until: number;
}

export class RoomSearch {
  constructor(
    private readonly db: Database,
    private readonly store: EventStore,
    private readonly timeline: Timeline,
    private readonly visibility: HistoryVisibility,
    private readonly rooms: Rooms,
    private readonly logger: Logger,
  ) {}

  /**
   * The persist path's extension: the index rows of a batch's searchable events, written in the
   * statement that stores them (accepted events only: the persister leaves out rejected and
   * soft-failed ones).
   */
  readonly writeExtension: EventsWriteExtension = async (_tx, view, events, position) =>
    indexRows(events.map((event, k) => ({ event, roomId: view.roomId, position: position(k) })));

  /** The same for events stored from a room's past (backfill): their history is searchable too. */
  readonly historicalWriteExtension: HistoricalWriteExtension = async (_tx, roomId, events) =>
    indexRows(events.map(({ event, streamOrdering }) => ({ event, roomId, position: sql`${streamOrdering}::bigint` })));

  /**
   * After a batch commits: the index rows of the events its redactions redacted are deleted (the
   * redacted text must not stay searchable; queries skip redacted events meanwhile). Only events the
   * persister marked redacted: a redaction that may not apply yet removes nothing.
   */
  readonly onBatchPersisted: BatchPersistedListener = (events) => {
    const targets: string[] = [];
    for (const e of events) {
      if (e.type !== "m.room.redaction" || !e.stored || e.stored.rejected || e.stored.softFailed) continue;
      const target = redactsOf(e.stored.pdu);
      if (target !== undefined) targets.push(target);
    }
    if (targets.length === 0) return;
    this.db
      .execute(sql`delete from event_search where event_id in (
        select event_id from events where event_id in (${sqlList(targets)}) and redacted_by is not null)`)
      .catch((err: unknown) => this.logger.error({ err }, "could not remove redacted events from the search index"));
  };

  async search(requester: Requester, request: RoomEventsSearch): Promise<JsonObject> {
    const cursor = request.nextBatch !== undefined ? decodeCursor(request.nextBatch, request.orderBy) : undefined;
    const filter = request.filter;
    const limit = Math.min(Math.max(filter.limit ?? DEFAULT_LIMIT, 1), MAX_LIMIT);
    const keys = (request.keys ?? ALL_KEYS).filter((key) => {
      const type = KEY_TYPES[key];
      if (filter.not_types?.some((p) => typeMatches(p, type))) return false;
      return !filter.types || filter.types.some((p) => typeMatches(p, type));
    });
    let senders = filter.senders;
    if (cursor?.group?.key === "sender") senders = senders && !senders.includes(cursor.group.value) ? [] : [cursor.group.value];
    const rooms = await this.searchableRooms(requester.userId, filter, cursor?.group?.key === "room_id" ? cursor.group.value : undefined);
    const term = request.searchTerm;
    if (rooms.length === 0 || keys.length === 0 || term.trim() === "" || senders?.length === 0) {
      return { count: 0, results: [], highlights: [] };
    }

    const query = sql`websearch_to_tsquery(${CONFIG}::regconfig, ${term})`;
    const rank = sql`ts_rank(s.vector, ${query})`;
    // Joined rooms whole; the rooms the user left up to their leave.
    const joined = rooms.filter((r) => r.joined).map((r) => r.roomId);
    const inRooms = [
      ...(joined.length ? [sql`s.room_id in (${sqlList(joined)})`] : []),
      ...rooms.filter((r) => !r.joined).map((r) => sql`(s.room_id = ${r.roomId} and s.stream_ordering <= ${r.until}::bigint)`),
    ];
    const where = [sql`s.vector @@ ${query}`, sql`(${sql.join(inRooms, sql` or `)})`];
    // Every key: no condition (the planner then estimates the count from the term alone).
    if (keys.length < ALL_KEYS.length) where.push(sql`s.key in (${sqlList(keys)})`);
    if (senders) where.push(sql`s.sender in (${sqlList(senders)})`);
    if (filter.not_senders?.length) where.push(sql`s.sender not in (${sqlList(filter.not_senders)})`);
    // The index alone answers which events match and in what order (it holds no rejected,
    // soft-failed or outlier events, and loses redacted ones just after they are redacted); the
    // events are then read by ID, a page at a time, and checked again.
    const from = sql`from event_search s`;
    const count = cursor?.count ?? (await this.count(sql`${from} where ${sql.join(where, sql` and `)}`));
    // `recent`: for a term with many matches, walking the stream index backwards finds a page at
    // once; for a rare one that walk reads the whole index (the planner, guessing from statistics
    // that know nothing of rare words, chose it: 170-250 ms for one match in 100,000). Below the exact
    // count's limit the matches come from the GIN index and are sorted (`+ 0` keeps the stream index
    // out of the ordering).
    const order =
      request.orderBy === "rank"
        ? sql`order by rank desc, s.stream_ordering desc`
        : count < EXACT_COUNT
          ? sql`order by s.stream_ordering + 0 desc`
          : sql`order by s.stream_ordering desc`;

    const byRoom = new Map(rooms.map((r) => [r.roomId, r]));
    const accesses = new Map<string, RoomAccess>();
    const accessOf = async (roomId: string): Promise<RoomAccess> => {
      let access = accesses.get(roomId);
      if (!access) {
        access = byRoom.get(roomId)?.joined
          ? { roomId, kind: "member", viewer: { userId: requester.userId, joinedUntil: Number.POSITIVE_INFINITY } }
          : await this.timeline.access(requester.userId, roomId);
        accesses.set(roomId, access);
      }
      return access;
    };

    // As /messages: the non-state events of users the searcher ignores are left out.
    const ignored = await this.timeline.ignoredUsers(requester.userId);
    const results: Candidate[] = [];
    let position = cursor;
    let more = false;
    let scanned = 0;
    const batchSize = Math.min(Math.max(limit * 2, 20), 500);
    for (;;) {
      const after = position
        ? request.orderBy === "rank"
          ? sql` and (${rank}, s.stream_ordering) < (${position.rank!}::real, ${position.stream}::bigint)`
          : sql` and s.stream_ordering < ${position.stream}::bigint`
        : sql``;
      const rows = rowsOf<{ event_id: string; stream_ordering: string | number; rank: string | number }>(
        await this.db.execute(sql`select s.event_id, s.stream_ordering, ${rank} as rank ${from}
          where ${sql.join(where, sql` and `)}${after} ${order} limit ${batchSize}::int`),
      );
      const stored = await this.store.getEvents(rows.map((r) => r.event_id));
      const candidates = new Map<string, Candidate>();
      for (const r of rows) {
        const event = stored.get(r.event_id);
        if (event && !event.redactedBy && !event.rejected && !event.softFailed && !event.outlier) candidates.set(r.event_id, { event, rank: Number(r.rank) });
      }
      const visible = await this.visibleIds([...candidates.values()].map((c) => c.event), accessOf);
      let full = false;
      for (const r of rows) {
        position = { order: request.orderBy, stream: Number(r.stream_ordering), group: cursor?.group, count };
        if (request.orderBy === "rank") position.rank = Number(r.rank);
        scanned++;
        const c = candidates.get(r.event_id);
        if (!c || !visible.has(c.event.eventId)) continue;
        if (c.event.stateKey === undefined && ignored.has(c.event.sender)) continue;
        if (!matchesFilter(filter, { type: c.event.type, sender: c.event.sender, content: visibleContent(c.event) })) continue;
        results.push(c);
        if (results.length >= limit) {
          full = true;
          break;
        }
      }
      if (full) {
        more = true;
        break;
      }
      if (rows.length < batchSize) break;
      if (scanned >= MAX_SCANNED) {
        more = true;
        break;
      }
    }

    const events = results.map((c) => c.event);
    const formatted = await this.store.format(events, requester);
    const response: JsonObject = {
      count,
      highlights: await this.highlights(term, events),
    };
    const nextBatch = more && position ? encodeCursor(position) : undefined;

    const contexts = request.eventContext ? await this.contexts(requester, events, request.eventContext, accessOf) : undefined;
    response.results = results.map((c, i) => {
      const result: JsonObject = { rank: c.rank, result: formatted[i] };
      if (contexts) result.context = contexts[i];
      return result;
    });

    if (request.includeState) {
      const state = dictionary<ClientEvent[]>();
      for (const roomId of new Set(events.map((e) => e.roomId))) state[roomId] = await this.timeline.state(requester, roomId);
      response.state = state;
    }

    if (request.groupBy.length > 0) {
      const groups = dictionary<Record<string, JsonObject>>();
      for (const key of new Set(request.groupBy)) {
        const group = dictionary<JsonObject>();
        let order = 0;
        for (const e of events) {
          const value = key === "room_id" ? e.roomId : e.sender;
          let entry = group[value];
          if (!entry) {
            // "Key that can be used to order different groups": the place of the group's first result.
            entry = group[value] = { order: ++order, results: [] };
            if (nextBatch !== undefined) entry.next_batch = encodeCursor({ ...position!, group: { key, value } });
          }
          (entry.results as string[]).push(e.eventId);
        }
        groups[key] = group;
      }
      response.groups = groups;
    }
    if (nextBatch !== undefined) response.next_batch = nextBatch;
    return response;
  }

  /**
   * "An approximate count of the total number of results": the matches in the rooms searched
   * (before history visibility, which the database cannot tell, and redactions not yet applied to
   * the index), counted exactly up to EXACT_COUNT; beyond it, the planner's estimate from the
   * index's statistics (counting half of 100,000 messages took 250 ms on PGlite, as long as the
   * search itself).
   */
  private async count(fromWhere: SQL): Promise<number> {
    const [row] = rowsOf<{ n: string | number }>(
      await this.db.execute(sql`select count(*) as n from (select 1 ${fromWhere} limit ${EXACT_COUNT}::int) as m`),
    );
    const exact = Number(row?.n ?? 0);
    if (exact < EXACT_COUNT) return exact;
    const [plan] = rowsOf<Record<string, unknown>>(await this.db.execute(sql`explain (format json) select 1 ${fromWhere}`));
    let value = plan ? Object.values(plan)[0] : undefined;
    if (typeof value === "string") value = JSON.parse(value) as unknown;
    const estimate = Number((value as Array<{ Plan?: { "Plan Rows"?: number } }> | undefined)?.[0]?.Plan?.["Plan Rows"]);
    return Number.isFinite(estimate) ? Math.max(EXACT_COUNT, Math.round(estimate)) : EXACT_COUNT;
  }

  /**
   * The rooms the user may search: joined ones, and the ones they left or were banned from (not
   * forgotten) up to their leave; never end-to-end encrypted ones. Narrowed by the filter's rooms
   * (with the rooms they replaced, as Synapse: an upgraded room's history is searched with it) and
   * by a group's room.
   */
  private async searchableRooms(userId: string, filter: SearchFilter, onlyRoom: string | undefined): Promise<SearchableRoom[]> {
    const rows = rowsOf<{ room_id: string; membership: string; stream_ordering: string | number }>(
      await this.db.execute(sql`select m.room_id, m.membership, m.stream_ordering from room_memberships m
        where m.user_id = ${userId} and (m.membership = 'join' or (m.membership in ('leave', 'ban') and not m.forgotten))
          and not exists (select 1 from current_state c where c.room_id = m.room_id and c.type = 'm.room.encryption' and c.state_key = '')`),
    );
    let rooms = rows.map((r) => ({
      roomId: r.room_id,
      joined: r.membership === "join",
      until: r.membership === "join" ? Number.MAX_SAFE_INTEGER : Number(r.stream_ordering),
    }));
    if (filter.rooms) {
      const wanted = new Set(filter.rooms);
      const mine = new Set(rooms.map((r) => r.roomId));
      for (const roomId of filter.rooms) {
        let current: string | undefined = roomId;
        for (let hops = 0; current !== undefined && hops < 20; hops++) {
          const predecessor: unknown = (await this.rooms.currentStateContent(current, "m.room.create").catch(() => undefined))?.predecessor;
          const previous = typeof predecessor === "object" && predecessor !== null ? (predecessor as JsonObject).room_id : undefined;
          current = typeof previous === "string" && mine.has(previous) && !wanted.has(previous) ? previous : undefined;
          if (current !== undefined) wanted.add(current);
        }
      }
      rooms = rooms.filter((r) => wanted.has(r.roomId));
    }
    if (filter.not_rooms) {
      const unwanted = new Set(filter.not_rooms);
      rooms = rooms.filter((r) => !unwanted.has(r.roomId));
    }
    if (onlyRoom !== undefined) rooms = rooms.filter((r) => r.roomId === onlyRoom);
    return rooms;
  }

  /** The IDs of the events the user may see under history visibility, room by room. */
  private async visibleIds(events: StoredEvent[], accessOf: (roomId: string) => Promise<RoomAccess>): Promise<Set<string>> {
    const byRoom = new Map<string, StoredEvent[]>();
    for (const e of events) {
      let list = byRoom.get(e.roomId);
      if (!list) byRoom.set(e.roomId, (list = []));
      list.push(e);
    }
    const visible = new Set<string>();
    for (const [roomId, list] of byRoom) {
      let access: RoomAccess;
      try {
        access = await accessOf(roomId);
      } catch (err) {
        // Left and forgotten between the two reads: nothing of the room is theirs to see.
        if (err instanceof MatrixError) continue;
        throw err;
      }
      for (const e of await this.visibility.filter(access.viewer, list)) visible.add(e.eventId);
    }
    return visible;
  }

  /** The context of each result: the visible events around it, and the senders' profiles at its end. */
  private async contexts(
    requester: Requester,
    events: StoredEvent[],
    options: NonNullable<RoomEventsSearch["eventContext"]>,
    accessOf: (roomId: string) => Promise<RoomAccess>,
  ): Promise<JsonObject[]> {
    const beforeLimit = Math.min(options.beforeLimit ?? 5, MAX_CONTEXT);
    const afterLimit = Math.min(options.afterLimit ?? 5, MAX_CONTEXT);
    const arounds = [];
    for (const event of events) arounds.push(await this.timeline.around(await accessOf(event.roomId), event, beforeLimit, afterLimit));
    // Every context event formatted at once (one read of their redactions, transaction IDs and
    // aggregations for the whole page, not two per result).
    const formatted = await this.store.format(arounds.flatMap((a) => [...a.before, ...a.after]), requester);
    const out: JsonObject[] = [];
    let at = 0;
    for (const [i, around] of arounds.entries()) {
      const before = formatted.slice(at, (at += around.before.length));
      const after = formatted.slice(at, (at += around.after.length));
      const context: JsonObject = { events_before: before, events_after: after, start: around.start, end: around.end };
      if (options.includeProfile) {
        // "The historic profile information of the users that sent the events returned": their
        // member events in the state at the last event returned.
        const event = events[i]!;
        const last = around.after.at(-1) ?? event;
        context.profile_info = await this.profilesAt(last.stateAfterGroup ?? last.stateBeforeGroup, [event, ...around.before, ...around.after].map((e) => e.sender));
      }
      out.push(context);
    }
    return out;
  }

  private async profilesAt(group: number | null, senders: string[]): Promise<JsonObject> {
    const profiles = dictionary<JsonObject>();
    const users = [...new Set(senders)];
    if (group === null || users.length === 0) return profiles;
    const state = (await lookupStateKeys(this.db, [group], users.map((u) => ["m.room.member", u] as const))).get(group)!;
    const members = await this.store.getEvents(users.flatMap((u) => state.get(stateMapKey("m.room.member", u)) ?? []));
    for (const u of users) {
      const id = state.get(stateMapKey("m.room.member", u));
      const member = id === undefined ? undefined : members.get(id);
      if (!member) continue;
      const content = visibleContent(member);
      const profile: JsonObject = {};
      if (typeof content.displayname === "string") profile.displayname = content.displayname;
      if (typeof content.avatar_url === "string") profile.avatar_url = content.avatar_url;
      profiles[u] = profile;
    }
    return profiles;
  }

  /**
   * "Words which should be highlighted, useful for stemming which may change the query terms": the
   * words of the results whose stem is one of the search term's.
   */
  private async highlights(term: string, events: StoredEvent[]): Promise<string[]> {
    const words = new Set<string>();
    for (const e of events) {
      const doc = searchableText({ type: e.type, state_key: e.stateKey, content: visibleContent(e) });
      if (!doc) continue;
      for (const w of doc.text.toLowerCase().split(/[^\p{L}\p{N}]+/u)) {
        if (w.length > 0 && w.length <= 100) words.add(w);
        if (words.size >= MAX_HIGHLIGHT_WORDS) break;
      }
    }
    if (words.size === 0) return [];
    const rows = rowsOf<{ w: string }>(
      await this.db.execute(sql`select v.w from (values ${sql.join([...words].map((w) => sql`(${w})`), sql`, `)}) as v(w)
        where exists (select 1 from unnest(to_tsvector(${CONFIG}::regconfig, v.w)) t
          where t.lexeme in (select q.lexeme from unnest(to_tsvector(${CONFIG}::regconfig, ${term})) q))`),
    );
    return rows.map((r) => r.w);
  }
}
