// Reading a room for another server: its events, the state at an event, auth chains, history
// (backfill, missing events) and the event nearest a time. The rooms side of the Server-Server API's
// read endpoints (server/api/federation/events.ts); it knows nothing of how the request arrived.
// https://spec.matrix.org/latest/server-server-api/#retrieving-events
// https://spec.matrix.org/latest/server-server-api/#backfilling-and-retrieving-missing-events
// https://spec.matrix.org/latest/server-server-api/#retrieving-event-authorisation-information
//
// Who may read (as Synapse, synapse/federation/federation_server.py and handlers/federation.py):
// - state, state_ids, event_auth, get_missing_events: a server with at least one joined member in
//   the room now ("The requesting host is not in the room" is 403, events.yaml);
// - backfill, timestamp_to_event: the same, or any server while the room is world_readable ("may be
//   shared by any participating homeserver with any authenticated user");
// - event: a server in the room, or one that may see that event (world_readable at the event, or
//   `shared` and one of its users was joined at some point after it).
// Then the room's server ACL (https://spec.matrix.org/latest/server-server-api/#server-access-control-lists-acls):
// a denied server gets 403 whatever its standing.
// A server in the room gets the events it may not see (visibility.ts, `visibleToServer`) redacted,
// as Synapse's `filter_events_for_server(redact=True)` does: the graph stays walkable, the content
// stays private. A server that is not in the room gets nothing it may not see. Events redacted in
// the room are served redacted to everyone; rejected events are never served; outliers (events held
// without their state) only by ID, in state and in auth chains, never in the walks.
import { type SQL, sql } from "drizzle-orm";
import { type Database, rowsOf } from "../../schema/db.ts";
import { createEventIdOfRoom } from "../../federation/protocol/event-hashes.ts";
import { redactEvent } from "../../federation/protocol/redaction.ts";
import { roomVersionRules } from "../../federation/protocol/room-versions.ts";
import { ErasedUsers } from "../accounts/erased-users.ts";
import { forbidden, invalidParam, notFound } from "../http/errors.ts";
import { EVENT_COLUMNS, type EventStore, type StoredEvent, sqlList } from "./event-store.ts";
import { chainCte } from "./state-groups.ts";
import type { HistoryVisibility, ServerViewer } from "./visibility.ts";
import { unsafeTestBreak } from "../unsafe-test-break.ts";

type JsonObject = Record<string, unknown>;

/** "Synapse asks for 100 events per backfill request. Do not allow more." (handlers/federation.py) */
export const MAX_BACKFILL_LIMIT = 100;
/** get_missing_events: "Defaults to 10"; Synapse allows at most 20. */
export const DEFAULT_MISSING_EVENTS_LIMIT = 10;
export const MAX_MISSING_EVENTS_LIMIT = 20;
/** Events looked at for a server reading a world_readable room from outside, for one it may see. */
const TIMESTAMP_CANDIDATES = 50;
/** Events a walk visits at most (rejected ones are walked through but not served). */
const MAX_WALK_STEPS = 1_000;
/** A former member's membership history is walked back at most this far. */
const MAX_MEMBERSHIP_STEPS = 50;

/**
 * The server asking, and the check of the room's server ACL for it (federation/transport's, passed
 * in by the route). A bare server name is a caller that checked the ACL itself.
 */
export interface AskingServer {
  origin: string;
  /** Throws (403) when the room's `m.room.server_acl` denies the origin. */
  checkAcl?(roomId: string): Promise<void>;
}

/** How a server stands in a room. */
export interface ServerStanding {
  roomId: string;
  roomVersion: string;
  /** At least one of its users is joined now. */
  inRoom: boolean;
  viewer: ServerViewer;
}

export interface MissingEventsRequest {
  earliestEvents: readonly string[];
  latestEvents: readonly string[];
  limit?: number;
  minDepth?: number;
}

/** What a read selects of each event: its ID alone (`/state_ids`), or the whole stored event. */
type Select = "ids" | "events";
type Selected<S extends Select> = S extends "ids" ? string : StoredEvent;

/** One node of the event graph, as the walks need it. */
interface GraphNode {
  eventId: string;
  depth: number;
  stream: number;
  /** Part of the room's graph as this server holds it: stored with its place in it (not an outlier). */
  walkable: boolean;
  /**
   * Refused by the auth rules: never served, but walked through, as Synapse does (an accepted event
   * of another server may name a rejected one among its prev_events).
   */
  rejected: boolean;
  /** The prev_events; undefined until loaded. */
  prevs: string[] | undefined;
}

export class ServerReads {
  constructor(
    private readonly db: Database,
    private readonly store: EventStore,
    private readonly visibility: HistoryVisibility,
    private readonly serverName: string,
    private readonly now: () => number,
  ) {}

  // ---- Single events and the state at them -------------------------------------------------------------

  /** `GET /event/{eventId}`: a transaction holding the one event. */
  async event(asking: AskingServer | string, eventId: string): Promise<{ origin: string; origin_server_ts: number; pdus: JsonObject[] }> {
    const event = await this.store.getEvent(eventId);
    if (!event || event.rejected) throw notFound("Event not found");
    const { origin, checkAcl } = askingServer(asking);
    const standing = await this.standing(origin, event.roomId);
    const [pdu] = await this.serve(standing, [event]);
    if (!pdu) throw forbidden("You are not allowed to see this event");
    await checkAcl?.(event.roomId);
    return this.transaction([pdu]);
  }

  /** `GET /state_ids/{roomId}?event_id=`: the state before the event and its auth chain, as IDs. */
  async stateIds(asking: AskingServer | string, roomId: string, eventId: string): Promise<{ pdu_ids: string[]; auth_chain_ids: string[] }> {
    const { state, authChain } = await this.stateAt(asking, roomId, eventId, "ids");
    if (unsafeTestBreak("state-ids-current-state")) {
      const current = rowsOf<{ event_id: string }>(await this.db.execute(sql`select event_id from current_state where room_id = ${roomId}`));
      return { pdu_ids: current.map((r) => r.event_id), auth_chain_ids: authChain };
    }
    return { pdu_ids: state, auth_chain_ids: authChain };
  }

  /** `GET /state/{roomId}?event_id=`: the state before the event and its auth chain. */
  async state(asking: AskingServer | string, roomId: string, eventId: string): Promise<{ pdus: JsonObject[]; auth_chain: JsonObject[] }> {
    const { state, authChain } = await this.stateAt(asking, roomId, eventId, "events");
    return { pdus: state.map(asServed), auth_chain: authChain.map(asServed) };
  }

  /** `GET /event_auth/{roomId}/{eventId}`: the event's auth chain (without the event). */
  async eventAuth(asking: AskingServer | string, roomId: string, eventId: string): Promise<{ auth_chain: JsonObject[] }> {
    const standing = await this.admit(asking, roomId, "member");
    const event = await this.roomEvent(roomId, eventId);
    const start = sql`select auth_event_id from event_auth where event_id = ${event.eventId}`;
    let chain = await this.authChain(standing, event.eventId !== createEventIdOfRoom(roomId), start, undefined, "events");
    if (unsafeTestBreak("event-auth-shallow")) {
      const own = new Set([...(event.pdu.auth_events as unknown[]).map((r) => (Array.isArray(r) ? r[0] : r)), createEventIdOfRoom(roomId)]);
      chain = chain.filter((e) => own.has(e.eventId));
    }
    return { auth_chain: chain.map(asServed) };
  }

  /**
   * "The fully resolved state for the room, prior to considering any state changes induced by the
   * requested event" (events.yaml), and the auth chain of those state events.
   */
  private async stateAt<S extends Select>(
    asking: AskingServer | string,
    roomId: string,
    eventId: string,
    select: S,
  ): Promise<{ state: Selected<S>[]; authChain: Selected<S>[] }> {
    const standing = await this.admit(asking, roomId, "member");
    const event = await this.roomEvent(roomId, eventId);
    // An outlier is held without the state at it: "the server doesn't know about the state at that
    // event to return anything useful" (404).
    if (event.outlier) throw notFound(`No state known at ${eventId}`);
    if (event.stateBeforeGroup === null) return { state: [], authChain: [] };
    const stateIds = sql`${chainCte([event.stateBeforeGroup])}, state_ids as (
        select distinct on (e.type, e.state_key) e.event_id
        from chain c join state_group_entries e on e.group_id = c.id
        order by e.type, e.state_key, c.n
      )`;
    const state = await this.select(select, (columns) => sql`${stateIds}
      select ${columns} from state_ids s join events e on e.event_id = s.event_id join rooms r on r.room_id = e.room_id
      order by e.depth, e.event_id`);
    // Before anything but the create event, the state holds more than the create event.
    const start = sql`select a.auth_event_id from event_auth a join state_ids s on a.event_id = s.event_id`;
    const authChain = await this.authChain(standing, state.length > 1, start, stateIds, select);
    return { state, authChain };
  }

  /**
   * The auth chain of some events: their auth events, theirs, and so on, without the events
   * themselves unless one authorises another; oldest first. `start` selects the first auth event
   * IDs (after the CTEs in `ctes`, when it reads them). In v12 rooms the create event is in no
   * auth_events ("the room ID implies it") but in the chain of every other event, as Synapse has it.
   */
  private async authChain<S extends Select>(
    standing: ServerStanding,
    ofOtherThanCreate: boolean,
    start: SQL,
    ctes: SQL | undefined,
    select: S,
  ): Promise<Selected<S>[]> {
    const recursive = sql`auth_chain(event_id) as (
        ${start}
        union
        select a.auth_event_id from event_auth a join auth_chain c on a.event_id = c.event_id
      )`;
    const withClause = ctes ? sql`${ctes}, ${recursive}` : sql`with recursive ${recursive}`;
    const chain = await this.select(select, (columns) => sql`${withClause}
      select ${columns} from auth_chain c join events e on e.event_id = c.event_id join rooms r on r.room_id = e.room_id
      where e.room_id = ${standing.roomId} and e.rejected_reason is null
      order by e.depth, e.event_id`);
    if (ofOtherThanCreate && roomVersionRules(standing.roomVersion).roomIdIsCreateEventId) {
      const createId = createEventIdOfRoom(standing.roomId);
      const ids = select === "ids" ? (chain as string[]) : (chain as StoredEvent[]).map((e) => e.eventId);
      if (!ids.includes(createId)) {
        const create = await this.store.getEvent(createId);
        if (create && create.roomId === standing.roomId && !create.rejected) {
          chain.unshift((select === "ids" ? create.eventId : create) as Selected<S>);
        }
      }
    }
    return chain;
  }

  /** Runs a query over `events e join rooms r` for the event IDs alone or the whole events. */
  private async select<S extends Select>(select: S, query: (columns: SQL) => SQL): Promise<Selected<S>[]> {
    if (select === "ids") return rowsOf<{ event_id: string }>(await this.db.execute(query(sql`e.event_id`))).map((r) => r.event_id as Selected<S>);
    return (await this.store.query(query(EVENT_COLUMNS))) as Selected<S>[];
  }

  // ---- History --------------------------------------------------------------------------------------------

  /**
   * `GET /backfill/{roomId}?v=&limit=`: the `v` events and those before them, walking prev_events
   * by depth (most recent first, as Synapse's `get_backfill_events`), at most `limit` (capped at 100).
   */
  async backfill(asking: AskingServer | string, roomId: string, from: readonly string[], limitParam: number) {
    if (limitParam < 0) throw invalidParam("limit must not be negative");
    const standing = await this.admit(asking, roomId, "member-or-world-readable");
    const limit = Math.min(Math.floor(limitParam), MAX_BACKFILL_LIMIT);
    const graph = new EventGraph(this.db, roomId);
    const starts = (await graph.load([...new Set(from)], limit)).filter((n) => n.walkable);
    const ids: string[] = [];
    const seen = new Set(starts.map((n) => n.eventId));
    const queue = [...starts];
    for (let visited = 0; queue.length > 0 && ids.length < limit && visited < MAX_WALK_STEPS; visited++) {
      // The deepest next (then the latest stored): a breadth-first walk back in depth order.
      queue.sort((a, b) => b.depth - a.depth || b.stream - a.stream || (a.eventId < b.eventId ? -1 : 1));
      const node = queue.shift()!;
      if (!node.rejected && !(unsafeTestBreak("backfill-skips-from") && from.includes(node.eventId))) ids.push(node.eventId);
      if (ids.length >= limit) break;
      const prevs = await graph.prevsOf(node, [...queue, node], limit - ids.length);
      for (const prev of prevs) {
        if (seen.has(prev.eventId) || !prev.walkable) continue;
        seen.add(prev.eventId);
        queue.push(prev);
      }
    }
    const events = await this.eventsInOrder(ids);
    const pdus = unsafeTestBreak("backfill-ignores-history-visibility") ? events.map(asServed) : await this.serve(standing, events);
    return this.transaction(pdus);
  }

  /**
   * `POST /get_missing_events/{roomId}`: "a breadth-first walk of the prev_events for the
   * latest_events, ignoring any events in earliest_events and stopping at the limit" (backfill.yaml),
   * not below `min_depth`; oldest first (by depth: Synapse's answer is "approximately chronological").
   */
  async missingEvents(asking: AskingServer | string, roomId: string, request: MissingEventsRequest): Promise<{ events: JsonObject[] }> {
    const standing = await this.admit(asking, roomId, "member");
    const requested = request.limit ?? DEFAULT_MISSING_EVENTS_LIMIT;
    const limit = Math.max(0, Math.min(Math.floor(requested), MAX_MISSING_EVENTS_LIMIT));
    const minDepth = request.minDepth ?? 0;
    const seen = new Set(unsafeTestBreak("missing-events-ignore-earliest") ? [] : request.earliestEvents);
    const graph = new EventGraph(this.db, roomId);
    let front = (await graph.load([...new Set(request.latestEvents)].filter((id) => !seen.has(id)), limit)).filter((n) => n.walkable);
    // The requester holds the latest events too: one reached from another is not sent back.
    for (const id of request.latestEvents) seen.add(id);
    const found: GraphNode[] = [];
    for (let visited = 0; front.length > 0 && found.length < limit && visited < MAX_WALK_STEPS; ) {
      const next: GraphNode[] = [];
      for (const node of front) {
        const prevs = await graph.prevsOf(node, front, limit - found.length);
        for (const prev of prevs) {
          if (seen.has(prev.eventId)) continue;
          seen.add(prev.eventId);
          if (!prev.walkable || prev.depth < minDepth) continue;
          visited++;
          if (!prev.rejected) found.push(prev);
          next.push(prev);
          if (found.length >= limit) break;
        }
        if (found.length >= limit) break;
      }
      front = next;
    }
    found.sort((a, b) => a.depth - b.depth || a.stream - b.stream);
    const events = await this.eventsInOrder(found.map((n) => n.eventId));
    return { events: unsafeTestBreak("missing-events-ignores-history-visibility") ? events.map(asServed) : await this.serve(standing, events) };
  }

  /**
   * `GET /timestamp_to_event/{roomId}?ts=&dir=`: the room's event nearest `ts` in the direction
   * given (at or after it for `f`, at or before it for `b`), from what this server holds.
   */
  async timestampToEvent(asking: AskingServer | string, roomId: string, ts: number, dir: "f" | "b"): Promise<{ event_id: string; origin_server_ts: number }> {
    const standing = await this.admit(asking, roomId, "member-or-world-readable");
    const forwards = dir === "f";
    // A server in the room may learn of any event; one reading a world_readable room from outside,
    // only of those it may see (the nearest of the next few).
    const candidates = await this.store.query(sql`select ${EVENT_COLUMNS} from events e join rooms r on r.room_id = e.room_id
      where e.room_id = ${roomId} and e.stream_ordering is not null and not e.outlier and e.rejected_reason is null and not e.soft_failed
        and ${forwards ? sql`e.origin_server_ts >= ${ts}` : sql`e.origin_server_ts <= ${ts}`}
      order by ${forwards ? sql`e.origin_server_ts asc, e.stream_ordering asc` : sql`e.origin_server_ts desc, e.stream_ordering desc`}
      limit ${standing.inRoom ? 1 : TIMESTAMP_CANDIDATES}::int`);
    const visible = standing.inRoom ? undefined : await this.visibility.visibleToServer(standing.viewer, candidates);
    const found = candidates.find((e) => visible === undefined || visible.has(e.eventId));
    if (!found) throw notFound(`Unable to find event from ${ts} in direction ${dir}`);
    return { event_id: found.eventId, origin_server_ts: found.originServerTs };
  }

  // ---- Who may read, and how events are served -----------------------------------------------------------

  /** How `server` stands in a room; 404 for a room this server does not know. */
  async standing(server: string, roomId: string): Promise<ServerStanding> {
    const rooms = rowsOf<{ room_version: string }>(await this.db.execute(sql`select room_version from rooms where room_id = ${roomId}`));
    const room = rooms[0];
    if (!room) throw notFound("Unknown room");
    const members = rowsOf<{ event_id: string; membership: string | null }>(
      await this.db.execute(sql`select event_id, membership from current_state
        where room_id = ${roomId} and type = 'm.room.member' and substr(state_key, strpos(state_key, ':') + 1) = ${server}`),
    );
    const inRoom = members.some((m) => m.membership === "join");
    const joinedUntil = inRoom ? Number.POSITIVE_INFINITY : await this.lastStayEnded(members.map((m) => m.event_id));
    return { roomId, roomVersion: room.room_version, inRoom, viewer: { serverName: server, joinedUntil } };
  }

  /**
   * For a server no longer in a room: the stream position of the membership change that ended the
   * latest stay of any of its users (0 when none was ever joined). Walks each user's membership
   * history back from their current member event through `replaces_state`.
   */
  private async lastStayEnded(currentMemberEvents: string[]): Promise<number> {
    let until = 0;
    let front = currentMemberEvents;
    for (let step = 0; step < MAX_MEMBERSHIP_STEPS && front.length > 0; step++) {
      const rows = rowsOf<{ stream_ordering: string | number | null; replaces_state: string | null; prev_json: string | null }>(
        await this.db.execute(sql`select e.stream_ordering, e.replaces_state, p.json as prev_json
          from events e left join events p on p.event_id = e.replaces_state
          where e.event_id in (${sqlList(front)})`),
      );
      const next: string[] = [];
      for (const r of rows) {
        if (r.replaces_state === null || r.prev_json === null) continue;
        const previous = (JSON.parse(r.prev_json) as { content?: { membership?: unknown } }).content?.membership;
        // The change away from a join ends a stay; earlier stays of this user ended earlier.
        if (previous === "join") until = Math.max(until, Number(r.stream_ordering ?? 0));
        else next.push(r.replaces_state);
      }
      front = next;
    }
    return until;
  }

  /**
   * How the asking server stands in the room, once it may ask: in the room (or, for `world_readable`
   * rooms, any server), then allowed by the room's server ACL. The ACL comes second, as in Synapse,
   * so that a server with no business in the room does not learn what the ACL says.
   */
  private async admit(asking: AskingServer | string, roomId: string, rule: "member" | "member-or-world-readable"): Promise<ServerStanding> {
    const { origin, checkAcl } = askingServer(asking);
    const standing = await this.standing(origin, roomId);
    const open = rule === "member-or-world-readable" && !standing.inRoom && (await this.currentHistoryVisibility(roomId)) === "world_readable";
    if (!standing.inRoom && !open) throw forbidden("Your server is not in this room");
    await checkAcl?.(roomId);
    return standing;
  }

  private async currentHistoryVisibility(roomId: string): Promise<string | undefined> {
    const rows = rowsOf<{ json: string }>(
      await this.db.execute(sql`select e.json from current_state c join events e on e.event_id = c.event_id
        where c.room_id = ${roomId} and c.type = 'm.room.history_visibility' and c.state_key = ''`),
    );
    const content = rows[0] ? (JSON.parse(rows[0].json) as { content?: JsonObject }).content : undefined;
    return typeof content?.history_visibility === "string" ? content.history_visibility : undefined;
  }

  /** An event of the room (accepted, or an outlier), or 404. */
  private async roomEvent(roomId: string, eventId: string): Promise<StoredEvent> {
    const event = await this.store.getEvent(eventId);
    if (!event || event.roomId !== roomId || event.rejected) throw notFound(`Event ${eventId} not found in this room`);
    return event;
  }

  /**
   * The PDUs of events for a server, in order: what it may not see redacted when it is in the room,
   * and left out when it is not.
   */
  private async serve(standing: ServerStanding, events: StoredEvent[]): Promise<JsonObject[]> {
    const [visible, erased] = await Promise.all([this.visibility.visibleToServer(standing.viewer, events), ErasedUsers.of(this.db).all()]);
    const out: JsonObject[] = [];
    for (const e of events) {
      // An erased user's events go to other servers redacted (as Synapse serves them).
      if (visible.has(e.eventId)) out.push(erased.has(e.sender) ? redactEvent(roomVersionRules(e.roomVersion), e.pdu) : asServed(e));
      else if (standing.inRoom) out.push(redactEvent(roomVersionRules(e.roomVersion), e.pdu));
    }
    return out;
  }

  private async eventsInOrder(ids: string[]): Promise<StoredEvent[]> {
    const events = await this.store.getEvents(ids);
    return ids.flatMap((id) => {
      const e = events.get(id);
      return e && !e.rejected ? [e] : [];
    });
  }

  private transaction(pdus: JsonObject[]): { origin: string; origin_server_ts: number; pdus: JsonObject[] } {
    return { origin: this.serverName, origin_server_ts: this.now(), pdus };
  }
}

/** A server name alone is a server with no ACL to pass (the caller has checked it). */
function askingServer(asking: AskingServer | string): AskingServer {
  return typeof asking === "string" ? { origin: asking } : asking;
}

/** A stored PDU as another server gets it: redacted when the room redacted it. */
function asServed(event: StoredEvent): JsonObject {
  return event.redactedBy ? redactEvent(roomVersionRules(event.roomVersion), event.pdu) : event.pdu;
}

/**
 * The part of a room's event graph a walk reads, loaded ahead: one query reads the prev_events of
 * the events it starts from, theirs, and so on, `levels` steps back.
 */
class EventGraph {
  private readonly nodes = new Map<string, GraphNode>();

  constructor(
    private readonly db: Database,
    private readonly roomId: string,
  ) {}

  /** Nodes for events of the room (unknown IDs left out), with their ancestry `levels` steps back. */
  async load(eventIds: string[], levels: number): Promise<GraphNode[]> {
    const missing = eventIds.filter((id) => !this.nodes.get(id)?.prevs);
    if (missing.length > 0) await this.fetch(missing, Math.max(1, levels));
    return eventIds.flatMap((id) => {
      const node = this.nodes.get(id);
      return node ? [node] : [];
    });
  }

  /** The prev_events of `node` that this server holds; loads ahead from `pending` when they are unknown. */
  async prevsOf(node: GraphNode, pending: readonly GraphNode[], levels: number): Promise<GraphNode[]> {
    if (node.prevs === undefined) {
      const unknown = new Set(pending.filter((n) => n.prevs === undefined).map((n) => n.eventId));
      unknown.add(node.eventId);
      await this.fetch([...unknown], Math.max(1, levels));
    }
    return (node.prevs ?? []).flatMap((id) => {
      const prev = this.nodes.get(id);
      return prev ? [prev] : [];
    });
  }

  private async fetch(eventIds: string[], levels: number): Promise<void> {
    const rows = rowsOf<{
      event_id: string;
      n: string | number;
      depth: string | number;
      stream_ordering: string | number | null;
      walkable: boolean;
      rejected: boolean;
      prev_event_id: string | null;
    }>(
      await this.db.execute(sql`with recursive walk(event_id, n) as (
          select e.event_id, 0 from events e where e.room_id = ${this.roomId} and e.event_id in (${sqlList(eventIds)})
          union
          select ee.prev_event_id, w.n + 1 from walk w join event_edges ee on ee.event_id = w.event_id
          where w.n < ${levels}::int and ee.room_id = ${this.roomId}
        ), nodes as (select event_id, min(n) as n from walk group by event_id)
        select nd.event_id, nd.n, e.depth, e.stream_ordering,
          (e.stream_ordering is not null and not e.outlier) as walkable, (e.rejected_reason is not null) as rejected, ee.prev_event_id
        from nodes nd join events e on e.event_id = nd.event_id and e.room_id = ${this.roomId}
        left join event_edges ee on ee.event_id = nd.event_id and nd.n < ${levels}::int`),
    );
    for (const r of rows) {
      let node = this.nodes.get(r.event_id);
      if (!node) {
        node = { eventId: r.event_id, depth: Number(r.depth), stream: Number(r.stream_ordering ?? 0), walkable: r.walkable, rejected: r.rejected, prevs: undefined };
        this.nodes.set(r.event_id, node);
      }
      // Below the last level the edges were not read: the node's prev_events stay unknown.
      if (Number(r.n) < levels) {
        node.prevs ??= [];
        if (r.prev_event_id !== null && !node.prevs.includes(r.prev_event_id)) node.prevs.push(r.prev_event_id);
      }
    }
  }
}
