// What /sync reads from the rooms component: local memberships, a room's events in a range of the
// room-event stream, the state at a point of it, invite state, room summaries, who shares a room.
// https://spec.matrix.org/latest/client-server-api/#syncing
//
// Every read is bounded by stream positions the caller passes (a safe upper bound it took before
// reading, see server/sync/streams.ts), so one sync response is a consistent cut of the stream.
import { sql } from "drizzle-orm";
import { type Database, rowsOf } from "../../schema/db.ts";
import { type StateMap, stateMapKey } from "../../federation/protocol/room-state.ts";
import { EVENT_COLUMNS, type EventStore, type StoredEvent, sqlList } from "./event-store.ts";
import { chainCte, loadStateGroup } from "./state-groups.ts";

/** A local user's membership of a room, with where it sits in the room-event stream. */
export interface RoomMembership {
  roomId: string;
  membership: string;
  eventId: string;
  streamOrdering: number;
}

/** Which events a timeline query keeps (a room event filter's types and senders). */
export interface EventTypeFilter {
  types?: readonly string[];
  notTypes?: readonly string[];
  senders?: readonly string[];
  notSenders?: readonly string[];
}

export interface RoomSummary {
  heroes: string[];
  joinedMemberCount: number;
  invitedMemberCount: number;
}

/** The stripped form of a state event (https://spec.matrix.org/latest/client-server-api/#stripped-state). */
export interface StrippedStateEvent {
  type: string;
  state_key: string;
  sender: string;
  content: Record<string, unknown>;
}

/** The state events an invite shows (the spec's recommendation, plus the topic). */
const INVITE_STATE_TYPES = [
  "m.room.create",
  "m.room.join_rules",
  "m.room.canonical_alias",
  "m.room.avatar",
  "m.room.name",
  "m.room.encryption",
  "m.room.topic",
];

/** Events that are part of a room's timeline: ordered, accepted and not soft-failed. */
const IN_TIMELINE = sql`e.stream_ordering is not null and not e.outlier and e.rejected_reason is null and not e.soft_failed`;

/** `types` entries may contain `*` (any run of characters): a LIKE pattern with the rest escaped. */
function likePattern(pattern: string): string {
  return pattern.replace(/[\\%_]/g, (c) => `\\${c}`).replace(/\*/g, "%");
}

function typeCondition(filter: EventTypeFilter | undefined) {
  const parts = [sql`true`];
  if (filter?.types) {
    if (filter.types.length === 0) return sql`false`;
    parts.push(sql`(${sql.join(filter.types.map((t) => sql`e.type like ${likePattern(t)}`), sql` or `)})`);
  }
  if (filter?.notTypes?.length) {
    parts.push(sql`not (${sql.join(filter.notTypes.map((t) => sql`e.type like ${likePattern(t)}`), sql` or `)})`);
  }
  if (filter?.senders) {
    if (filter.senders.length === 0) return sql`false`;
    parts.push(sql`e.sender in (${sqlList(filter.senders)})`);
  }
  if (filter?.notSenders?.length) parts.push(sql`e.sender not in (${sqlList(filter.notSenders)})`);
  return sql.join(parts, sql` and `);
}

export class SyncReads {
  constructor(
    private readonly db: Database,
    private readonly events: EventStore,
  ) {}

  /** The memberships of local users (forgotten rooms left out), for several users in one query. */
  async membershipsOf(userIds: readonly string[]): Promise<Map<string, RoomMembership[]>> {
    const out = new Map<string, RoomMembership[]>(userIds.map((u) => [u, []]));
    if (userIds.length === 0) return out;
    const rows = rowsOf<{ user_id: string; room_id: string; membership: string; event_id: string; stream_ordering: string | number }>(
      await this.db.execute(sql`select user_id, room_id, membership, event_id, stream_ordering from room_memberships
        where user_id in (${sqlList(userIds)}) and not forgotten`),
    );
    for (const r of rows) {
      out.get(r.user_id)!.push({
        roomId: r.room_id,
        membership: r.membership,
        eventId: r.event_id,
        streamOrdering: Number(r.stream_ordering),
      });
    }
    return out;
  }

  /**
   * The newest `limit` events of a room with a stream position in `(from, to]` that pass `filter`,
   * oldest first, and whether there were more in that range.
   */
  async roomEvents(roomId: string, from: number, to: number, limit: number, filter?: EventTypeFilter): Promise<{ events: StoredEvent[]; limited: boolean }> {
    if (to <= from || limit <= 0) {
      const limited = limit <= 0 && to > from && (await this.hasEventsBetween(roomId, from, to, filter));
      return { events: [], limited };
    }
    const rows = await this.events.query(sql`select ${EVENT_COLUMNS} from events e join rooms r on r.room_id = e.room_id
      where e.room_id = ${roomId} and e.stream_ordering > ${from} and e.stream_ordering <= ${to} and ${IN_TIMELINE}
        and ${typeCondition(filter)}
      order by e.stream_ordering desc limit ${limit + 1}`);
    const limited = rows.length > limit;
    return { events: rows.slice(0, limit).reverse(), limited };
  }

  /** Whether the room has timeline events in `(from, to]` (that pass `filter`). */
  async hasEventsBetween(roomId: string, from: number, to: number, filter?: EventTypeFilter): Promise<boolean> {
    if (to <= from) return false;
    const rows = rowsOf<{ one: number }>(
      await this.db.execute(sql`select 1 as one from events e where e.room_id = ${roomId}
        and e.stream_ordering > ${from} and e.stream_ordering <= ${to} and ${IN_TIMELINE} and ${typeCondition(filter)} limit 1`),
    );
    return rows.length > 0;
  }

  /**
   * The state group of the room's state after its last timeline event at or before stream position
   * `position` (null when there is none).
   */
  async groupAt(roomId: string, position: number): Promise<number | null> {
    const rows = rowsOf<{ state_before_group: string | number | null; state_after_group: string | number | null }>(
      await this.db.execute(sql`select e.state_before_group, e.state_after_group from events e
        where e.room_id = ${roomId} and e.stream_ordering <= ${position} and ${IN_TIMELINE}
        order by e.stream_ordering desc limit 1`),
    );
    const row = rows[0];
    const group = row ? (row.state_after_group ?? row.state_before_group) : null;
    return group === null ? null : Number(group);
  }

  /**
   * A state group's state: every key, or (for lazy-loading members) every key but the
   * m.room.member events of users not in `members`.
   */
  async stateOfGroup(group: number | null, members: readonly string[] | "all" = "all"): Promise<StateMap> {
    if (group === null) return new Map();
    if (members === "all") return loadStateGroup(this.db, group);
    const memberCondition = members.length ? sql` or e.state_key in (${sqlList(members)})` : sql``;
    const rows = rowsOf<{ type: string; state_key: string; event_id: string | null }>(
      await this.db.execute(sql`${chainCte([group])}
        select distinct on (e.type, e.state_key) e.type, e.state_key, e.event_id
        from chain c join state_group_entries e on e.group_id = c.id
        where (e.type <> 'm.room.member'${memberCondition})
        order by e.type, e.state_key, c.n`),
    );
    const state: StateMap = new Map();
    for (const r of rows) if (r.event_id !== null) state.set(stateMapKey(r.type, r.state_key), r.event_id);
    return state;
  }

  /** Stored events by ID. */
  getEvents(eventIds: readonly string[]): Promise<Map<string, StoredEvent>> {
    return this.events.getEvents(eventIds);
  }

  /** The stripped state an invite shows: a few current state events and the invite itself. */
  async inviteState(roomId: string, inviteEventId: string): Promise<StrippedStateEvent[]> {
    // An invite from another server into a room this server is not in carries the room's stripped
    // state itself (`unsigned.invite_room_state`, kept with the out-of-band invite).
    const [own] = rowsOf<{ json: string }>(await this.db.execute(sql`select json from events where event_id = ${inviteEventId} and outlier`));
    if (own) {
      const invite = JSON.parse(own.json) as StrippedStateEvent & { unsigned?: { invite_room_state?: unknown; knock_room_state?: unknown } };
      const carried = Array.isArray(invite.unsigned?.invite_room_state)
        ? invite.unsigned.invite_room_state
        : Array.isArray(invite.unsigned?.knock_room_state)
          ? invite.unsigned.knock_room_state
          : [];
      const stripped = carried.flatMap((x): StrippedStateEvent[] => {
        if (typeof x !== "object" || x === null) return [];
        const e = x as Record<string, unknown>;
        if (typeof e.type !== "string" || typeof e.state_key !== "string" || typeof e.sender !== "string") return [];
        if (e.type === "m.room.member" && e.state_key === invite.state_key) return [];
        const content = typeof e.content === "object" && e.content !== null ? (e.content as Record<string, unknown>) : {};
        return [{ type: e.type, state_key: e.state_key, sender: e.sender, content }];
      });
      return [...stripped, { type: invite.type, state_key: invite.state_key, sender: invite.sender, content: invite.content ?? {} }];
    }
    // And the inviter's own membership, as invites from other servers carry it (room-federation's
    // strippedState) and Synapse sends it ("the server might include events not described here").
    const rows = rowsOf<{ json: string }>(
      await this.db.execute(sql`select e.json from current_state c join events e on e.event_id = c.event_id
        where c.room_id = ${roomId} and c.state_key = '' and c.type in (${sqlList(INVITE_STATE_TYPES)})
        union all select e.json from current_state c join events e on e.event_id = c.event_id
          join events i on i.event_id = ${inviteEventId}
          where c.room_id = ${roomId} and c.type = 'm.room.member' and c.state_key = i.sender and i.sender <> i.state_key
        union all select e.json from events e where e.event_id = ${inviteEventId}`),
    );
    return rows.map((r) => {
      const pdu = JSON.parse(r.json) as StrippedStateEvent;
      return { type: pdu.type, state_key: pdu.state_key, sender: pdu.sender, content: pdu.content ?? {} };
    });
  }

  /**
   * `m.heroes` (the first five joined or invited members other than `userId` by when they became
   * so; left and banned members when there are none), and the joined and invited member counts,
   * from the room's current state.
   */
  async summary(roomId: string, userId: string): Promise<RoomSummary> {
    const heroesOf = (memberships: string[]) =>
      this.db.execute(sql`select c.state_key from current_state c join events e on e.event_id = c.event_id
        where c.room_id = ${roomId} and c.type = 'm.room.member' and c.state_key <> ${userId}
          and c.membership in (${sqlList(memberships)})
        order by e.stream_ordering limit 5`);
    // Heroes name a room that has no name of its own (neither m.room.name nor a canonical alias,
    // each non-empty and not redacted away), as Synapse sends them; a named room's are left out.
    const [counts, named] = await Promise.all([
      this.db.execute(sql`select count(*) filter (where membership = 'join') as joined,
          count(*) filter (where membership = 'invite') as invited
        from current_state where room_id = ${roomId} and type = 'm.room.member'`),
      this.db.execute(sql`select 1 as one from current_state c join events e on e.event_id = c.event_id
        where c.room_id = ${roomId} and c.state_key = '' and e.redacted_by is null
          and ((c.type = 'm.room.name' and coalesce((e.json::jsonb) -> 'content' ->> 'name', '') <> '')
            or (c.type = 'm.room.canonical_alias' and coalesce((e.json::jsonb) -> 'content' ->> 'alias', '') <> ''))
        limit 1`),
    ]);
    let heroes: string[] = [];
    if (rowsOf(named).length === 0) {
      heroes = rowsOf<{ state_key: string }>(await heroesOf(["join", "invite"])).map((r) => r.state_key);
      if (heroes.length === 0) heroes = rowsOf<{ state_key: string }>(await heroesOf(["leave", "ban"])).map((r) => r.state_key);
    }
    const c = rowsOf<{ joined: string | number; invited: string | number }>(counts)[0];
    return { heroes, joinedMemberCount: Number(c?.joined ?? 0), invitedMemberCount: Number(c?.invited ?? 0) };
  }

  /** Which of the events have events relating to them (so bundled aggregations may apply). */
  async withRelations(eventIds: readonly string[]): Promise<Set<string>> {
    if (eventIds.length === 0) return new Set();
    const rows = rowsOf<{ relates_to_id: string }>(
      await this.db.execute(sql`select distinct relates_to_id from event_relations
        where relates_to_id in (${sqlList(eventIds)}) and rel_type <> 'm.in_reply_to'`),
    );
    return new Set(rows.map((r) => r.relates_to_id));
  }

  /** The users joined to at least one room `userId` is joined to (themself included). */
  async usersSharingRoomsWith(userId: string): Promise<Set<string>> {
    const rows = rowsOf<{ state_key: string }>(
      await this.db.execute(sql`select distinct c.state_key from current_state c
        where c.type = 'm.room.member' and c.membership = 'join'
          and c.room_id in (select room_id from room_memberships where user_id = ${userId} and membership = 'join')`),
    );
    return new Set(rows.map((r) => r.state_key));
  }

  /**
   * The rooms whose current state has `userId` joined: for users of other servers, who have no
   * `room_memberships` rows. (current_state has no index by state key: a scan of the member rows,
   * done only when a remote user's devices change.)
   */
  async roomsJoinedBy(userId: string): Promise<string[]> {
    const rows = rowsOf<{ room_id: string }>(
      await this.db.execute(sql`select room_id from current_state
        where type = 'm.room.member' and state_key = ${userId} and membership = 'join'`),
    );
    return rows.map((r) => r.room_id);
  }

  /** Which of `candidates` share a joined room with `userId`. */
  async sharingARoom(userId: string, candidates: readonly string[]): Promise<Set<string>> {
    if (candidates.length === 0) return new Set();
    const rows = rowsOf<{ state_key: string }>(
      await this.db.execute(sql`select distinct c.state_key from current_state c
        where c.type = 'm.room.member' and c.membership = 'join' and c.state_key in (${sqlList(candidates)})
          and c.room_id in (select room_id from room_memberships where user_id = ${userId} and membership = 'join')`),
    );
    return new Set(rows.map((r) => r.state_key));
  }

  /**
   * Which of `localUsers` share a joined room with `userId`, who may be a user of another server
   * (their membership is read from the room's current state, which holds remote members too).
   * Walks the local users' joined rooms (room_memberships' key) and looks `userId` up in each one's
   * current state (current_state's key).
   */
  async localUsersSharingARoomWith(userId: string, localUsers: readonly string[]): Promise<Set<string>> {
    if (localUsers.length === 0) return new Set();
    const rows = rowsOf<{ user_id: string }>(
      await this.db.execute(sql`select distinct m.user_id from room_memberships m
        where m.user_id in (${sqlList(localUsers)}) and m.membership = 'join'
          and exists (select 1 from current_state c where c.room_id = m.room_id and c.type = 'm.room.member'
            and c.state_key = ${userId} and c.membership = 'join')`),
    );
    return new Set(rows.map((r) => r.user_id));
  }

  /** Which of `userIds` (users of other servers, usually) share a joined room with a local user. */
  async sharingRoomsWithLocalUsers(userIds: readonly string[]): Promise<Set<string>> {
    if (userIds.length === 0) return new Set();
    const rows = rowsOf<{ state_key: string }>(
      await this.db.execute(sql`select distinct c.state_key from current_state c
        where c.type = 'm.room.member' and c.state_key in (${sqlList(userIds)}) and c.membership = 'join'
          and exists (select 1 from room_memberships m where m.room_id = c.room_id and m.membership = 'join')`),
    );
    return new Set(rows.map((r) => r.state_key));
  }

  /** Which of the events are in their room's current state. */
  async inCurrentState(roomId: string, eventIds: readonly string[]): Promise<Set<string>> {
    if (eventIds.length === 0) return new Set();
    const rows = rowsOf<{ event_id: string }>(
      await this.db.execute(sql`select event_id from current_state where room_id = ${roomId} and event_id in (${sqlList(eventIds)})`),
    );
    return new Set(rows.map((r) => r.event_id));
  }

  /** The room's joined members (of every server), from its current state. */
  async joinedMembers(roomId: string): Promise<string[]> {
    const rows = rowsOf<{ state_key: string }>(
      await this.db.execute(sql`select state_key from current_state
        where room_id = ${roomId} and type = 'm.room.member' and membership = 'join'`),
    );
    return rows.map((r) => r.state_key);
  }

  /**
   * The membership changes (m.room.member events) in `roomIds` with a stream position in
   * `(from, to]`, oldest first: who came and went, for `device_lists`.
   */
  async memberChanges(roomIds: readonly string[], from: number, to: number): Promise<Array<{ roomId: string; userId: string; membership: string }>> {
    if (roomIds.length === 0 || to <= from) return [];
    const rows = rowsOf<{ room_id: string; state_key: string; json: string }>(
      await this.db.execute(sql`select e.room_id, e.state_key, e.json from events e
        where e.room_id in (${sqlList(roomIds)}) and e.type = 'm.room.member'
          and e.stream_ordering > ${from} and e.stream_ordering <= ${to} and ${IN_TIMELINE}
        order by e.stream_ordering`),
    );
    return rows.map((r) => ({
      roomId: r.room_id,
      userId: r.state_key,
      membership: String((JSON.parse(r.json) as { content?: { membership?: unknown } }).content?.membership ?? ""),
    }));
  }

  /**
   * Where an event of the room sits in the room-event stream, and its thread (`main`, or the root
   * of the `m.thread` relation it has); undefined when the room has no such timeline event.
   */
  async eventPosition(roomId: string, eventId: string): Promise<{ streamOrdering: number; threadId: string } | undefined> {
    const rows = rowsOf<{ stream_ordering: string | number; thread_root: string | null }>(
      await this.db.execute(sql`select e.stream_ordering,
          (select r.relates_to_id from event_relations r where r.event_id = e.event_id and r.rel_type = 'm.thread') as thread_root
        from events e where e.event_id = ${eventId} and e.room_id = ${roomId} and ${IN_TIMELINE}`),
    );
    const row = rows[0];
    return row ? { streamOrdering: Number(row.stream_ordering), threadId: row.thread_root ?? "main" } : undefined;
  }
}
