// Reading rooms: history (/messages, /context, /event), state (/state, /members, /joined_members).
// https://spec.matrix.org/latest/client-server-api/#get_matrixclientv3roomsroomidmessages
// https://spec.matrix.org/latest/client-server-api/#get_matrixclientv3roomsroomidcontexteventid
// https://spec.matrix.org/latest/client-server-api/#getting-events-for-a-room
//
// Who may read: a joined member reads the current state and the whole timeline; a former member
// reads up to the event that made them leave (and the state at it); anyone reads a world_readable
// room. Each event is then filtered by history visibility (visibility.ts).
import { sql } from "drizzle-orm";
import { type Database, rowsOf } from "../../schema/db.ts";
import { stateMapKey } from "../../federation/protocol/room-state.ts";
import { dictionary } from "../../federation/protocol/dictionary.ts";
import { MatrixError, forbidden, notFound } from "../http/errors.ts";
import type { Requester } from "../http/route.ts";
import { EVENT_COLUMNS, type ClientEvent, type EventStore, type StoredEvent, visibleContent } from "./event-store.ts";
import { matchesFilter, type RoomEventFilter } from "./event-filter.ts";
import {
  TIMELINE_START,
  type TimelinePoint,
  comparePoints,
  formatToken,
  parseToken,
  pointAfter,
  pointBefore,
} from "./pagination.ts";
import type { Rooms } from "./rooms.ts";
import { loadStateGroup, lookupStateKeys } from "./state-groups.ts";
import type { HistoryVisibility, Viewer } from "./visibility.ts";

type JsonObject = Record<string, unknown>;

/** Events examined for one /messages request at most, however many the filters drop. */
const MAX_SCANNED = 5_000;
const MAX_LIMIT = 1_000;

/** What a user may read of a room. */
export interface RoomAccess {
  roomId: string;
  /** `member`: joined now; `former`: left or was banned; `peek`: world_readable. */
  kind: "member" | "former" | "peek";
  viewer: Viewer;
  /** For former members: the point just after their leave; nothing later is theirs to see. */
  until?: TimelinePoint;
  /** For former members: the state group at their leave. */
  stateGroup?: number | null;
}

export interface MessagesRequest {
  dir: "b" | "f";
  from?: string;
  to?: string;
  limit?: number;
  filter: RoomEventFilter;
}

export class Timeline {
  constructor(
    private readonly db: Database,
    private readonly rooms: Rooms,
    private readonly store: EventStore,
    private readonly visibility: HistoryVisibility,
    /** The users a user ignores (`m.ignored_user_list`): their non-state events are left out of pages. */
    private readonly ignoredBy: (userId: string) => Promise<ReadonlySet<string>> = async () => new Set(),
  ) {}

  /** Leaves out the events of users `userId` ignores, but not their state events. */
  private async withoutIgnored(userId: string, events: StoredEvent[]): Promise<StoredEvent[]> {
    const ignored = await this.ignoredBy(userId);
    return ignored.size ? events.filter((e) => e.stateKey !== undefined || !ignored.has(e.sender)) : events;
  }

  private backfiller: ((roomId: string, limit: number) => Promise<number>) | undefined;

  /**
   * Plugs in federation's backfill: when a client pages back past the start of what this server
   * holds of a room (joined over federation), the room's other servers are asked for more.
   */
  backfillWith(backfill: (roomId: string, limit: number) => Promise<number>): void {
    this.backfiller = backfill;
  }

  /** What `userId` may read of the room, or 403 (also for rooms we do not know: no existence leak). */
  async access(userId: string, roomId: string): Promise<RoomAccess> {
    const notMember = () => forbidden("You aren't a member of the room");
    const version = await this.rooms.roomVersion(roomId);
    if (version === undefined) throw notMember();
    const membership = await this.rooms.membership(roomId, userId);
    if (membership?.membership === "join") return { roomId, kind: "member", viewer: { userId, joinedUntil: Number.POSITIVE_INFINITY } };
    // A former member reads the room up to their leave. A banned user does not (as Synapse: the
    // ban ends their access; only a world-readable room stays open to them, as to anyone).
    if (membership && membership.membership === "leave" && !membership.forgotten) {
      const leave = await this.store.getEvent(membership.eventId);
      if (leave) {
        // Were they joined just before leaving? Then every earlier event was "sent before they joined ... at any point after".
        const before = leave.stateBeforeGroup === null
          ? undefined
          : (await lookupStateKeys(this.db, [leave.stateBeforeGroup], [["m.room.member", userId]])).get(leave.stateBeforeGroup);
        const priorId = before?.get(stateMapKey("m.room.member", userId));
        const prior = priorId ? await this.store.getEvent(priorId) : undefined;
        const wasJoined = prior?.pdu && (prior.pdu.content as JsonObject | undefined)?.membership === "join";
        return {
          roomId,
          kind: "former",
          viewer: { userId, joinedUntil: wasJoined ? (leave.streamOrdering ?? 0) : 0 },
          until: pointAfter(leave),
          stateGroup: leave.stateAfterGroup ?? leave.stateBeforeGroup,
        };
      }
    }
    const current = await this.rooms.currentStateContent(roomId, "m.room.history_visibility");
    if (current?.history_visibility === "world_readable") return { roomId, kind: "peek", viewer: { userId, joinedUntil: 0 } };
    throw notMember();
  }

  // ---- History -----------------------------------------------------------------------------------------

  async messages(requester: Requester, roomId: string, request: MessagesRequest) {
    const access = await this.access(requester.userId, roomId);
    const limit = clampLimit(request.limit, 10);
    const backwards = request.dir === "b";
    let from = request.from !== undefined ? await this.pointOf(roomId, request.from) : backwards ? await this.latestPoint(roomId) : TIMELINE_START;
    const start = request.from ?? formatToken(from);
    if (access.until && backwards && comparePoints(from, access.until) > 0) from = access.until;
    let bound = request.to !== undefined ? await this.pointOf(roomId, request.to) : undefined;
    if (access.until && !backwards && (!bound || comparePoints(bound, access.until) > 0)) bound = access.until;

    let { events, next, exhausted } = await this.page(access, backwards, from, bound, limit, request.filter);
    if (backwards && events.length < limit && this.backfiller) {
      // A peer that cannot help leaves the page as it is.
      const stored = await this.backfiller(roomId, Math.min(100, limit - events.length + 10)).catch(() => 0);
      if (stored > 0) ({ events, next, exhausted } = await this.page(access, backwards, from, bound, limit, request.filter));
    }
    events = await this.withoutIgnored(requester.userId, events);
    const chunk = await this.store.format(events, requester);
    const response: JsonObject = { chunk, start };
    // "If no further events are available (either because we have reached the start of the
    // timeline, or because the user does not have permission to see any more events), this
    // property is omitted from the response."
    // Forwards, the timeline has no end: the page ends at the room's latest event for now, and
    // `end` is where to continue once more arrive (a client paging on from a /sync token polls it).
    if (!exhausted || !backwards) response.end = formatToken(next);
    if (request.filter.lazy_load_members && events.length > 0) {
      const last = events[events.length - 1]!;
      response.state = await this.memberEventsOf(last.stateAfterGroup ?? last.stateBeforeGroup, new Set(events.map((e) => e.sender)), requester);
    }
    return response;
  }

  /**
   * Up to `limit` visible events matching the filter, from `from` in one direction, not past
   * `bound`. `next` is the point to continue from; `exhausted` when nothing is left.
   */
  private async page(
    access: RoomAccess,
    backwards: boolean,
    from: TimelinePoint,
    bound: TimelinePoint | undefined,
    limit: number,
    filter: RoomEventFilter,
  ): Promise<{ events: StoredEvent[]; next: TimelinePoint; exhausted: boolean }> {
    const out: StoredEvent[] = [];
    let cursor = from;
    let scanned = 0;
    if (limit === 0) return { events: out, next: cursor, exhausted: false };
    for (;;) {
      const batchSize = Math.min(Math.max(limit * 2, 20), 500);
      const rows = await this.scan(access.roomId, backwards, cursor, bound, batchSize);
      const visible = new Set((await this.visibility.filter(access.viewer, rows)).map((e) => e.eventId));
      for (const row of rows) {
        cursor = backwards ? pointBefore(row) : pointAfter(row);
        scanned++;
        if (visible.has(row.eventId) && matchesFilter(filter, { type: row.type, sender: row.sender, content: visibleContent(row) })) {
          out.push(row);
          if (out.length >= limit) return { events: out, next: cursor, exhausted: false };
        }
      }
      if (rows.length < batchSize) return { events: out, next: cursor, exhausted: true };
      if (scanned >= MAX_SCANNED) return { events: out, next: cursor, exhausted: false };
    }
  }

  /** Timeline events (accepted, not outliers) from a point in one direction. */
  private scan(roomId: string, backwards: boolean, cursor: TimelinePoint, bound: TimelinePoint | undefined, limit: number): Promise<StoredEvent[]> {
    const pos = sql`(e.topological_ordering, e.stream_ordering)`;
    const at = (p: TimelinePoint) => sql`(${p.topological}::bigint, ${p.stream}::bigint)`;
    const range = backwards
      ? sql`${pos} <= ${at(cursor)}${bound ? sql` and ${pos} > ${at(bound)}` : sql``}`
      : sql`${pos} > ${at(cursor)}${bound ? sql` and ${pos} <= ${at(bound)}` : sql``}`;
    const order = backwards ? sql`e.topological_ordering desc, e.stream_ordering desc` : sql`e.topological_ordering asc, e.stream_ordering asc`;
    return this.store.query(sql`select ${EVENT_COLUMNS} from events e join rooms r on r.room_id = e.room_id
      where e.room_id = ${roomId} and e.stream_ordering is not null and e.rejected_reason is null and not e.soft_failed
        and not e.outlier and ${range}
      order by ${order} limit ${limit}::int`);
  }

  /** The point just after the room's latest timeline event: where "now" is for pagination. */
  private async latestPoint(roomId: string): Promise<TimelinePoint> {
    const rows = rowsOf<{ topological_ordering: string | number; stream_ordering: string | number }>(
      await this.db.execute(sql`select topological_ordering, stream_ordering from events
        where room_id = ${roomId} and stream_ordering is not null
        order by topological_ordering desc, stream_ordering desc limit 1`),
    );
    const row = rows[0];
    return row ? { topological: Number(row.topological_ordering), stream: Number(row.stream_ordering) } : TIMELINE_START;
  }

  /** The point a token names in this room (stream tokens: just after the room's last event at or before it). */
  private async pointOf(roomId: string, token: string): Promise<TimelinePoint> {
    const parsed = parseToken(token);
    if (parsed.kind === "topological") return parsed.point;
    const rows = rowsOf<{ topological_ordering: string | number; stream_ordering: string | number }>(
      await this.db.execute(sql`select topological_ordering, stream_ordering from events
        where room_id = ${roomId} and stream_ordering is not null and stream_ordering <= ${parsed.stream}::bigint
        order by stream_ordering desc limit 1`),
    );
    const row = rows[0];
    return row ? { topological: Number(row.topological_ordering), stream: Number(row.stream_ordering) } : TIMELINE_START;
  }

  /** An event of the room the user may see, or 404 ("not found or no permission"). */
  async visibleEvent(access: RoomAccess, eventId: string): Promise<StoredEvent> {
    const event = await this.store.getEvent(eventId);
    const missing = () => notFound("Event not found");
    if (!event || event.roomId !== access.roomId || event.rejected || event.softFailed || event.outlier) throw missing();
    if (access.until && comparePoints(pointAfter(event), access.until) > 0) throw missing();
    if ((await this.visibility.filter(access.viewer, [event])).length === 0) throw missing();
    return event;
  }

  async event(requester: Requester, roomId: string, eventId: string): Promise<ClientEvent> {
    // "404: The event was not found or you do not have permission to read this event": a room the
    // user may not read is no 403 here, or the answer would tell events apart.
    const access = await this.access(requester.userId, roomId).catch((err: unknown) => {
      if (err instanceof MatrixError && err.status === 403) throw notFound("Event not found");
      throw err;
    });
    const event = await this.visibleEvent(access, eventId);
    return (await this.store.format([event], requester))[0]!;
  }

  async context(requester: Requester, roomId: string, eventId: string, limitParam: number | undefined, filter: RoomEventFilter) {
    const access = await this.access(requester.userId, roomId);
    const event = await this.visibleEvent(access, eventId);
    const limit = clampLimit(limitParam, 10);
    const beforeLimit = Math.floor(limit / 2);
    const afterLimit = limit - beforeLimit;
    const before = await this.page(access, true, pointBefore(event), undefined, beforeLimit, filter);
    const after = await this.page(access, false, pointAfter(event), access.until, afterLimit, filter);
    before.events = await this.withoutIgnored(requester.userId, before.events);
    after.events = await this.withoutIgnored(requester.userId, after.events);
    const [formatted, eventsBefore, eventsAfter] = await Promise.all([
      this.store.format([event], requester),
      this.store.format(before.events, requester),
      this.store.format(after.events, requester),
    ]);
    // "The state of the room at the last event returned."
    const last = after.events.at(-1) ?? event;
    const group = last.stateAfterGroup ?? last.stateBeforeGroup;
    let state: ClientEvent[];
    if (filter.lazy_load_members) {
      const senders = new Set([event, ...before.events, ...after.events].map((e) => e.sender));
      state = await this.memberEventsOf(group, senders, requester);
    } else {
      state = await this.stateEventsAt(group, requester);
    }
    return {
      event: formatted[0],
      events_before: eventsBefore,
      events_after: eventsAfter,
      start: formatToken(before.next),
      end: formatToken(after.next),
      state,
    };
  }

  /**
   * The visible events just before and after an event (the context of a search result: /context's
   * walk, without its state), and the /messages tokens at their far ends.
   */
  async around(access: RoomAccess, event: StoredEvent, beforeLimit: number, afterLimit: number) {
    const before = await this.page(access, true, pointBefore(event), undefined, beforeLimit, {});
    const after = await this.page(access, false, pointAfter(event), access.until, afterLimit, {});
    return {
      before: await this.withoutIgnored(access.viewer.userId, before.events),
      after: await this.withoutIgnored(access.viewer.userId, after.events),
      start: formatToken(before.next),
      end: formatToken(after.next),
    };
  }

  /** The users `userId` ignores (`m.ignored_user_list`), for reads outside this module (search). */
  ignoredUsers(userId: string): Promise<ReadonlySet<string>> {
    return this.ignoredBy(userId);
  }

  // ---- State -------------------------------------------------------------------------------------------

  /** The state a user may read: the current state, or the state at their leave for a former member. */
  private async readableStateIds(access: RoomAccess): Promise<Map<string, string>> {
    if (access.kind !== "former") {
      const rows = rowsOf<{ type: string; state_key: string; event_id: string }>(
        await this.db.execute(sql`select type, state_key, event_id from current_state where room_id = ${access.roomId}`),
      );
      return new Map(rows.map((r) => [stateMapKey(r.type, r.state_key), r.event_id]));
    }
    return access.stateGroup == null ? new Map() : loadStateGroup(this.db, access.stateGroup);
  }

  async state(requester: Requester, roomId: string): Promise<ClientEvent[]> {
    const access = await this.access(requester.userId, roomId);
    const ids = await this.readableStateIds(access);
    return this.formatState([...ids.values()], requester);
  }

  async stateEvent(requester: Requester, roomId: string, type: string, stateKey: string, format: "content" | "event"): Promise<JsonObject> {
    const access = await this.access(requester.userId, roomId);
    let eventId: string | undefined;
    if (access.kind === "former") {
      eventId = (await this.readableStateIds(access)).get(stateMapKey(type, stateKey));
    } else {
      eventId = await this.rooms.currentStateEventId(roomId, type, stateKey);
    }
    const event = eventId ? await this.store.getEvent(eventId) : undefined;
    if (!event) throw notFound("Event not found");
    if (format === "event") return (await this.store.format([event], requester, { aggregations: false }))[0]!;
    return visibleContent(event);
  }

  async members(
    requester: Requester,
    roomId: string,
    options: { at?: string; membership?: string; notMembership?: string },
  ): Promise<ClientEvent[]> {
    const access = await this.access(requester.userId, roomId);
    let ids: string[];
    if (options.at === undefined && access.kind !== "former") {
      const rows = rowsOf<{ event_id: string }>(
        await this.db.execute(sql`select event_id from current_state where room_id = ${roomId} and type = 'm.room.member'`),
      );
      ids = rows.map((r) => r.event_id);
    } else {
      let group = access.stateGroup ?? null;
      if (options.at !== undefined) {
        let point = await this.pointOf(roomId, options.at);
        if (access.until && comparePoints(point, access.until) > 0) point = access.until;
        group = await this.stateGroupAt(roomId, point);
      }
      const state = group === null ? new Map<string, string>() : (await lookupStateKeys(this.db, [group], [["m.room.member", null]])).get(group)!;
      ids = [...state.values()];
    }
    const events = [...(await this.store.getEvents(ids)).values()].filter((e) => {
      const membership = (e.pdu.content as JsonObject | undefined)?.membership;
      if (options.membership !== undefined && membership !== options.membership) return false;
      if (options.notMembership !== undefined && membership === options.notMembership) return false;
      return true;
    });
    return this.store.format(events, requester, { aggregations: false });
  }

  async joinedMembers(requester: Requester, roomId: string): Promise<Record<string, JsonObject>> {
    const access = await this.access(requester.userId, roomId);
    if (access.kind === "former") throw forbidden("You aren't a member of the room");
    const rows = rowsOf<{ state_key: string; json: string }>(
      await this.db.execute(sql`select c.state_key, e.json from current_state c join events e on e.event_id = c.event_id
        where c.room_id = ${roomId} and c.type = 'm.room.member' and c.membership = 'join'`),
    );
    const joined = dictionary<JsonObject>();
    for (const r of rows) {
      const content = (JSON.parse(r.json) as { content?: JsonObject }).content ?? {};
      // Both keys always, null when unset, as Synapse answers (clients and sytest read them).
      joined[r.state_key] = {
        display_name: typeof content.displayname === "string" ? content.displayname : null,
        avatar_url: typeof content.avatar_url === "string" ? content.avatar_url : null,
      };
    }
    return joined;
  }

  /** The state group after the room's last event at or before a point. */
  private async stateGroupAt(roomId: string, point: TimelinePoint): Promise<number | null> {
    const rows = rowsOf<{ state_before_group: string | number | null; state_after_group: string | number | null }>(
      await this.db.execute(sql`select state_before_group, state_after_group from events
        where room_id = ${roomId} and stream_ordering is not null and rejected_reason is null and not soft_failed
          and (topological_ordering, stream_ordering) <= (${point.topological}::bigint, ${point.stream}::bigint)
        order by topological_ordering desc, stream_ordering desc limit 1`),
    );
    const row = rows[0];
    if (!row) return null;
    const group = row.state_after_group ?? row.state_before_group;
    return group === null ? null : Number(group);
  }

  private async stateEventsAt(group: number | null, requester: Requester): Promise<ClientEvent[]> {
    if (group === null) return [];
    return this.formatState([...(await loadStateGroup(this.db, group)).values()], requester);
  }

  /** The m.room.member events of some users in the state at a group (lazy-loading members). */
  private async memberEventsOf(group: number | null, users: Set<string>, requester: Requester): Promise<ClientEvent[]> {
    if (group === null || users.size === 0) return [];
    const state = (await lookupStateKeys(this.db, [group], [...users].map((u) => ["m.room.member", u] as const))).get(group)!;
    return this.formatState([...state.values()], requester);
  }

  private async formatState(ids: string[], requester: Requester): Promise<ClientEvent[]> {
    const events = await this.store.getEvents(ids);
    return this.store.format(
      ids.map((id) => events.get(id)).filter((e): e is StoredEvent => e !== undefined),
      requester,
      { aggregations: false },
    );
  }

  /** IDs for tests and tools: every event of a room in stream order (no visibility rules). */
  async allEventIds(roomId: string): Promise<string[]> {
    const rows = rowsOf<{ event_id: string }>(
      await this.db.execute(sql`select event_id from events where room_id = ${roomId} and stream_ordering is not null order by stream_ordering`),
    );
    return rows.map((r) => r.event_id);
  }
}

function clampLimit(limit: number | undefined, fallback: number): number {
  if (limit === undefined || !Number.isFinite(limit)) return fallback;
  if (limit < 0) throw new MatrixError(400, "M_INVALID_PARAM", "limit must not be negative");
  return Math.min(Math.floor(limit), MAX_LIMIT);
}
