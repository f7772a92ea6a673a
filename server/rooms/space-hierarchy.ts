// The spaces hierarchy: walking a space's `m.space.child` events for a client, and answering other
// servers' `/hierarchy` requests for the spaces this server is in.
// https://spec.matrix.org/latest/client-server-api/#spaces (space_hierarchy.yaml)
// https://spec.matrix.org/latest/server-server-api/#spaces
//
// The walk is depth-first in the spec's child order (the `order` key, then the child event's
// origin_server_ts, then the room ID), each room at most once (loops end there), as Synapse walks
// it. A room this server is in is summarised from its current state; any other is asked of the
// servers in its child event's `via` over federation, through the reader the homeserver wiring gives
// (`readRemoteHierarchiesWith`: this service never imports federation). A server that fails leaves
// that room out.
//
// Pagination: the walk's position (the rooms still to visit and those visited) is kept server-side,
// in the database (`space_hierarchy_sessions`, so that every process sharing it takes the token),
// under a random `next_batch` token for PAGINATION_SESSION_MS, bound to the user, the root room,
// `suggested_only` and `max_depth`. An unknown or expired token is 400 M_INVALID_PARAM. A token may
// be used again (a retried request gets the same page).
import { randomBytes } from "node:crypto";
import { eq, lte, sql } from "drizzle-orm";
import { type Database, rowsOf, schema } from "../../schema/db.ts";
import { isSupportedRoomVersion, roomVersionRules } from "../../federation/protocol/room-versions.ts";
import { forbidden, invalidParam, notFound } from "../http/errors.ts";
import type { Requester } from "../http/route.ts";
import type { Rooms } from "./rooms.ts";

type JsonObject = Record<string, unknown>;

/** Rooms in one page, by default and at most (Synapse's MAX_ROOMS). */
export const DEFAULT_HIERARCHY_LIMIT = 50;
/** How deep a walk goes, by default and at most. */
export const MAX_HIERARCHY_DEPTH = 50;
/** Rooms looked at for one page at most, shown or not: a space of many hidden rooms ends a page early. */
const MAX_ROOMS_VISITED_PER_PAGE = 500;
/**
 * Time one page may spend walking: rooms of other servers are asked of theirs, which may be slow
 * or down; past this the page ends early (with next_batch) rather than keep the client waiting.
 */
const PAGE_TIME_BUDGET_MS = 15_000;
/** Children of one space a federation answer summarises (Synapse's MAX_ROOMS_PER_SPACE). */
const MAX_CHILDREN_PER_FEDERATION_ANSWER = 50;
/** `via` servers asked for a room this server is not in (Synapse's MAX_SERVERS_PER_SPACE). */
const MAX_SERVERS_PER_ROOM = 3;
/** A walk's position is kept this long (Synapse: 5 minutes). */
const PAGINATION_SESSION_MS = 5 * 60 * 1000;
/** The `order` key counts when it is at most 50 printable ASCII characters (m.space.child). */
const VALID_ORDER = /^[\x20-\x7E]{0,50}$/;

/** A stripped `m.space.child` event with its origin_server_ts (StrippedChildStateEvent). */
export interface ChildStateEvent {
  type: "m.space.child";
  state_key: string;
  content: JsonObject & { via: string[] };
  sender: string;
  origin_server_ts: number;
}

/** A room's summary (RoomSummary): room_id, num_joined_members, world_readable, guest_can_join, and the optional strings. */
export type RoomSummary = JsonObject & { room_id: string };

/** What another server answered to `GET /hierarchy/{roomId}`, checked. */
export interface RemoteHierarchy {
  room: RoomSummary;
  childrenState: ChildStateEvent[];
  /** Summaries of the room's children, by room ID. */
  children: Map<string, RoomSummary>;
  /** Children the answering server says we cannot see: not asked of anyone. */
  inaccessible: Set<string>;
}

/** Asks `servers` in turn for a room's hierarchy; undefined when none answered usefully. */
export type RemoteHierarchyReader = (servers: readonly string[], roomId: string, suggestedOnly: boolean) => Promise<RemoteHierarchy | undefined>;

/** Who is asking: a local user (client API) or another server (federation). */
type Asker = { userId: string } | { server: string };

interface QueueEntry {
  roomId: string;
  via: string[];
  depth: number;
  /** The summary a parent's federation answer gave, used for a room that is not a space. */
  remote?: RoomSummary;
}

interface Session {
  userId: string;
  roomId: string;
  suggestedOnly: boolean;
  maxDepth: number | undefined;
  /** The next room to visit is last. */
  queue: QueueEntry[];
  processed: Set<string>;
  expires: number;
}

export interface HierarchyQuery {
  suggestedOnly: boolean;
  maxDepth?: number;
  limit?: number;
  from?: string;
}

/** The state of a room this server holds that a summary and the access rules need. */
interface LocalRoom {
  roomId: string;
  roomVersion: string;
  state: Map<string, JsonObject>;
  joinedMembers: number;
  children: ChildStateEvent[];
}

const SUMMARY_TYPES = [
  "m.room.create",
  "m.room.name",
  "m.room.topic",
  "m.room.canonical_alias",
  "m.room.avatar",
  "m.room.join_rules",
  "m.room.history_visibility",
  "m.room.guest_access",
  "m.room.encryption",
];

export class SpaceHierarchy {
  private remote?: RemoteHierarchyReader;

  constructor(
    private readonly db: Database,
    private readonly rooms: Rooms,
    private readonly now: () => number,
  ) {}

  /** How rooms this server is not in are summarised (federation's `/hierarchy`). */
  readRemoteHierarchiesWith(reader: RemoteHierarchyReader): void {
    this.remote = reader;
  }

  // ---- Client-Server: GET /_matrix/client/v1/rooms/{roomId}/hierarchy ------------------------------------

  async clientHierarchy(requester: Requester, rootId: string, query: HierarchyQuery): Promise<{ rooms: JsonObject[]; next_batch?: string }> {
    const userId = requester.userId;
    const root = await this.localRoom(rootId);
    if (!root || !(await this.accessible(root, { userId }))) throw forbidden("You are not allowed to view this room.");
    const limit = Math.min(query.limit ?? DEFAULT_HIERARCHY_LIMIT, DEFAULT_HIERARCHY_LIMIT);
    const maxDepth = Math.min(query.maxDepth ?? MAX_HIERARCHY_DEPTH, MAX_HIERARCHY_DEPTH);

    let queue: QueueEntry[];
    let processed: Set<string>;
    if (query.from !== undefined) {
      const session = await this.loadSession(query.from);
      if (
        !session ||
        session.userId !== userId ||
        session.roomId !== rootId ||
        session.suggestedOnly !== query.suggestedOnly ||
        session.maxDepth !== query.maxDepth
      ) {
        throw invalidParam("Unknown pagination token, or suggested_only or max_depth changed during pagination");
      }
      queue = [...session.queue];
      processed = new Set(session.processed);
    } else {
      queue = [{ roomId: rootId, via: [], depth: 0 }];
      processed = new Set();
    }

    const rooms: JsonObject[] = [];
    let visited = 0;
    const deadline = performance.now() + PAGE_TIME_BUDGET_MS;
    while (queue.length > 0 && rooms.length < limit && visited < MAX_ROOMS_VISITED_PER_PAGE && performance.now() < deadline) {
      const entry = queue.pop()!;
      if (processed.has(entry.roomId)) continue;
      processed.add(entry.roomId);
      visited++;
      const found = await this.visitForUser(entry, userId, query.suggestedOnly, maxDepth);
      if (!found) continue;
      rooms.push({ ...found.summary, children_state: found.childrenState });
      if (entry.depth < maxDepth) {
        // Reversed, so that the first child is the next popped.
        for (const child of [...found.childrenState].reverse()) {
          if (found.inaccessible.has(child.state_key) || processed.has(child.state_key)) continue;
          queue.push({ roomId: child.state_key, via: child.content.via, depth: entry.depth + 1, remote: found.children.get(child.state_key) });
        }
      }
    }

    const response: { rooms: JsonObject[]; next_batch?: string } = { rooms };
    if (queue.some((e) => !processed.has(e.roomId))) {
      response.next_batch = await this.saveSession({
        userId,
        roomId: rootId,
        suggestedOnly: query.suggestedOnly,
        maxDepth: query.maxDepth,
        queue,
        processed,
        expires: this.now() + PAGINATION_SESSION_MS,
      });
    }
    return response;
  }

  /** One room of the walk as the user may see it, with its children; undefined when hidden or unknown. */
  private async visitForUser(
    entry: QueueEntry,
    userId: string,
    suggestedOnly: boolean,
    maxDepth: number,
  ): Promise<{ summary: RoomSummary; childrenState: ChildStateEvent[]; children: Map<string, RoomSummary>; inaccessible: Set<string> } | undefined> {
    const none = { children: new Map<string, RoomSummary>(), inaccessible: new Set<string>() };
    // The root is known here (its access was checked on its state); any other room is read from
    // our state only while one of our users is in it, else our copy may be stale.
    if (entry.depth === 0 || (await this.rooms.isInRoom(entry.roomId))) {
      const room = await this.localRoom(entry.roomId);
      if (!room || !(await this.accessible(room, { userId }))) return undefined;
      return { summary: this.summary(room), childrenState: childrenOf(room, suggestedOnly), ...none };
    }
    // A room we are not in: a parent's federation answer may have summarised it already, which is
    // enough when it is no space or no children are wanted.
    if (entry.remote && (entry.remote.room_type !== "m.space" || entry.depth >= maxDepth)) {
      if (!(await this.remoteAccessible(entry.remote, userId))) return undefined;
      return { summary: forClient(entry.remote), childrenState: [], ...none };
    }
    if (!this.remote || entry.via.length === 0) return undefined;
    const answer = await this.remote(entry.via.slice(0, MAX_SERVERS_PER_ROOM), entry.roomId, suggestedOnly);
    if (!answer || !(await this.remoteAccessible(answer.room, userId))) return undefined;
    const childrenState = suggestedOnly ? answer.childrenState.filter(isSuggested) : answer.childrenState;
    return { summary: forClient(answer.room), childrenState: sortChildren(childrenState), children: answer.children, inaccessible: answer.inaccessible };
  }

  /**
   * A room another server summarised, for a user of ours: open to anyone (public, knock,
   * world_readable), or restricted to a room the user is in, or what this server knows of the user
   * and the room (an invite, or a membership the room's state here shows).
   */
  private async remoteAccessible(room: RoomSummary, userId: string): Promise<boolean> {
    if (room.world_readable === true || ["public", "knock", "knock_restricted"].includes(room.join_rule as string)) return true;
    const allowed = Array.isArray(room.allowed_room_ids) ? room.allowed_room_ids : [];
    for (const allowedRoom of allowed.slice(0, 50)) {
      if (typeof allowedRoom === "string" && (await this.rooms.currentMembership(allowedRoom, userId)) === "join") return true;
    }
    const membership = (await this.rooms.membership(room.room_id, userId))?.membership;
    return membership === "join" || membership === "invite";
  }

  private async saveSession(session: Session): Promise<string> {
    const t = schema.spaceHierarchySessions;
    await this.db.delete(t).where(lte(t.expiresTs, this.now()));
    const token = randomBytes(18).toString("base64url");
    await this.db.insert(t).values({
      token,
      userId: session.userId,
      roomId: session.roomId,
      suggestedOnly: session.suggestedOnly,
      maxDepth: session.maxDepth ?? null,
      queue: session.queue,
      processed: [...session.processed],
      expiresTs: session.expires,
    });
    return token;
  }

  private async loadSession(token: string): Promise<Session | undefined> {
    const t = schema.spaceHierarchySessions;
    const [row] = await this.db.select().from(t).where(eq(t.token, token));
    if (!row || row.expiresTs <= this.now()) return undefined;
    return {
      userId: row.userId,
      roomId: row.roomId,
      suggestedOnly: row.suggestedOnly,
      maxDepth: row.maxDepth ?? undefined,
      queue: row.queue as QueueEntry[],
      processed: new Set(row.processed as string[]),
      expires: row.expiresTs,
    };
  }

  // ---- Federation: GET /_matrix/federation/v1/hierarchy/{roomId} ------------------------------------------

  /**
   * The room and its children (not their children) as `origin` may see them: 404 when it may not see
   * the room, or we are not in it. Children we are in but `origin` may not see are listed as
   * inaccessible; children we are not in are left out (we cannot speak for them).
   */
  async federationHierarchy(
    origin: string,
    roomId: string,
    suggestedOnly: boolean,
    acl: { serverAllowed(roomId: string): Promise<boolean>; assertServerAllowed(roomId: string): Promise<void> },
  ): Promise<{ room: JsonObject; children: JsonObject[]; inaccessible_children: string[] }> {
    const room = (await this.rooms.isInRoom(roomId)) ? await this.localRoom(roomId) : undefined;
    if (!room || !(await this.accessible(room, { server: origin }))) throw notFound("Room does not exist or is not accessible to your server");
    // As for the other room endpoints: the ACL comes after, so that a server with no business in the
    // room does not learn what its ACL says.
    await acl.assertServerAllowed(roomId);
    const childrenState = childrenOf(room, suggestedOnly);
    const children: JsonObject[] = [];
    const inaccessible: string[] = [];
    for (const child of childrenState.slice(0, MAX_CHILDREN_PER_FEDERATION_ANSWER)) {
      const childId = child.state_key;
      if (!(await this.rooms.isInRoom(childId))) continue;
      const childRoom = await this.localRoom(childId);
      if (!childRoom) continue;
      if ((await this.accessible(childRoom, { server: origin })) && (await acl.serverAllowed(childId))) children.push(this.summary(childRoom));
      else inaccessible.push(childId);
    }
    return { room: { ...this.summary(room), children_state: childrenState }, children, inaccessible_children: inaccessible };
  }

  // ---- Local rooms ------------------------------------------------------------------------------------------

  /** The state of a room this server holds, or undefined when it holds none (or cannot read its version). */
  private async localRoom(roomId: string): Promise<LocalRoom | undefined> {
    const roomVersion = await this.rooms.roomVersion(roomId);
    if (roomVersion === undefined || !isSupportedRoomVersion(roomVersion)) return undefined;
    const [stateRows, counts, childRows] = await Promise.all([
      this.db.execute(sql`select c.type, e.json from current_state c join events e on e.event_id = c.event_id
        where c.room_id = ${roomId} and c.state_key = '' and c.type in (${sql.join(SUMMARY_TYPES.map((t) => sql`${t}`), sql`, `)})`),
      this.db.execute(sql`select count(*) as joined from current_state
        where room_id = ${roomId} and type = 'm.room.member' and membership = 'join'`),
      this.db.execute(sql`select c.state_key, e.json, e.sender, e.origin_server_ts from current_state c join events e on e.event_id = c.event_id
        where c.room_id = ${roomId} and c.type = 'm.space.child'`),
    ]);
    const state = new Map<string, JsonObject>();
    for (const r of rowsOf<{ type: string; json: string }>(stateRows)) {
      const content = (JSON.parse(r.json) as { content?: unknown }).content;
      state.set(r.type, isObject(content) ? content : {});
    }
    if (!state.has("m.room.create")) return undefined;
    const joined = Number(rowsOf<{ joined: string | number }>(counts)[0]?.joined ?? 0);
    const children: ChildStateEvent[] = [];
    for (const r of rowsOf<{ state_key: string; json: string; sender: string; origin_server_ts: string | number }>(childRows)) {
      const content = (JSON.parse(r.json) as { content?: unknown }).content;
      const child = childEvent({ type: "m.space.child", state_key: r.state_key, content, sender: r.sender, origin_server_ts: Number(r.origin_server_ts) });
      if (child) children.push(child);
    }
    return { roomId, roomVersion, state, joinedMembers: joined, children: sortChildren(children) };
  }

  /**
   * Whether the asker may see a room we hold (the spec's list under `rooms`): anyone when it is
   * world_readable, public, or knockable (in a room version that has the rule); a user who is joined
   * or invited, or joined to a room a restricted rule allows; a server with a user joined or invited,
   * or joined to a room a restricted rule allows. Never a server the room does not federate with.
   */
  private async accessible(room: LocalRoom, asker: Asker): Promise<boolean> {
    const rules = roomVersionRules(room.roomVersion);
    if ("server" in asker && room.state.get("m.room.create")?.["m.federate"] === false) return false;
    const joinRules = room.state.get("m.room.join_rules");
    const joinRule = joinRules?.join_rule;
    if (
      joinRule === "public" ||
      (joinRule === "knock" && rules.knockJoinRule) ||
      (joinRule === "knock_restricted" && rules.knockRestrictedJoinRule)
    ) {
      return true;
    }
    if (room.state.get("m.room.history_visibility")?.history_visibility === "world_readable") return true;
    const allowed = restrictedAllowRooms(room, joinRule);
    if ("userId" in asker) {
      const membership = await this.rooms.currentMembership(room.roomId, asker.userId);
      if (membership === "join" || membership === "invite") return true;
      for (const allowedRoom of allowed) {
        if ((await this.rooms.currentMembership(allowedRoom, asker.userId)) === "join") return true;
      }
      return false;
    }
    if (await this.serverHasMember(room.roomId, asker.server, ["join", "invite"])) return true;
    for (const allowedRoom of allowed) {
      if (await this.serverHasMember(allowedRoom, asker.server, ["join"])) return true;
    }
    return false;
  }

  private async serverHasMember(roomId: string, server: string, memberships: string[]): Promise<boolean> {
    const rows = rowsOf<{ n: string | number }>(
      await this.db.execute(sql`select count(*) as n from current_state
        where room_id = ${roomId} and type = 'm.room.member' and substr(state_key, strpos(state_key, ':') + 1) = ${server}
          and membership in (${sql.join(memberships.map((m) => sql`${m}`), sql`, `)})`),
    );
    return Number(rows[0]?.n ?? 0) > 0;
  }

  /** The RoomSummary of a room we hold; `allowed_room_ids` (v1.15) lets other servers check restricted rooms. */
  private summary(room: LocalRoom): RoomSummary {
    const str = (type: string, key: string) => {
      const v = room.state.get(type)?.[key];
      return typeof v === "string" ? v : undefined;
    };
    const summary: RoomSummary = {
      room_id: room.roomId,
      num_joined_members: room.joinedMembers,
      world_readable: str("m.room.history_visibility", "history_visibility") === "world_readable",
      guest_can_join: str("m.room.guest_access", "guest_access") === "can_join",
      room_version: room.roomVersion,
    };
    const optional: Array<[string, string | undefined]> = [
      ["name", str("m.room.name", "name")],
      ["topic", str("m.room.topic", "topic")],
      ["canonical_alias", str("m.room.canonical_alias", "alias")],
      ["avatar_url", str("m.room.avatar", "url")],
      ["join_rule", str("m.room.join_rules", "join_rule")],
      ["room_type", str("m.room.create", "type")],
      ["encryption", str("m.room.encryption", "algorithm")],
    ];
    for (const [key, value] of optional) if (value) summary[key] = value;
    const allowed = restrictedAllowRooms(room, summary.join_rule);
    if (allowed.length > 0) summary.allowed_room_ids = allowed;
    return summary;
  }
}

/** The rooms a `restricted` / `knock_restricted` join rule allows (m.room_membership entries). */
function restrictedAllowRooms(room: LocalRoom, joinRule: unknown): string[] {
  if (joinRule !== "restricted" && joinRule !== "knock_restricted") return [];
  const allow = room.state.get("m.room.join_rules")?.allow;
  if (!Array.isArray(allow)) return [];
  const out: string[] = [];
  for (const entry of allow.slice(0, 50)) {
    if (isObject(entry) && entry.type === "m.room_membership" && typeof entry.room_id === "string") out.push(entry.room_id);
  }
  return out;
}

/** The children of a room we hold, the suggested ones alone when asked. */
function childrenOf(room: LocalRoom, suggestedOnly: boolean): ChildStateEvent[] {
  return suggestedOnly ? room.children.filter(isSuggested) : room.children;
}

function isSuggested(child: ChildStateEvent): boolean {
  return child.content.suggested === true;
}

/**
 * A `m.space.child` event as the hierarchy counts it: a room ID for a state key and a non-empty
 * `via` of strings (an event without one, redacted for instance, removes the child).
 */
export function childEvent(raw: unknown): ChildStateEvent | undefined {
  if (!isObject(raw)) return undefined;
  const { type, state_key: stateKey, content, sender, origin_server_ts: ts } = raw;
  if (type !== "m.space.child" || typeof stateKey !== "string" || !stateKey.startsWith("!") || stateKey.length > 255) return undefined;
  if (typeof sender !== "string" || typeof ts !== "number" || !Number.isSafeInteger(ts) || !isObject(content)) return undefined;
  const via = content.via;
  if (!Array.isArray(via) || via.length === 0 || !via.every((v) => typeof v === "string")) return undefined;
  return { type, state_key: stateKey, content: content as ChildStateEvent["content"], sender, origin_server_ts: ts };
}

/**
 * The spec's order of a space's children: those with a valid `order` first, by it (code points),
 * then by the child event's origin_server_ts, then by room ID.
 */
export function sortChildren(children: readonly ChildStateEvent[]): ChildStateEvent[] {
  const orderOf = (c: ChildStateEvent) => {
    const order = c.content.order;
    return typeof order === "string" && VALID_ORDER.test(order) ? order : undefined;
  };
  const cmp = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);
  return [...children].sort((a, b) => {
    const oa = orderOf(a);
    const ob = orderOf(b);
    if (oa !== undefined && ob === undefined) return -1;
    if (oa === undefined && ob !== undefined) return 1;
    if (oa !== undefined && ob !== undefined && oa !== ob) return cmp(oa, ob);
    return a.origin_server_ts - b.origin_server_ts || cmp(a.state_key, b.state_key);
  });
}

/** A summary another server gave, as a client gets it. */
function forClient(room: RoomSummary): RoomSummary {
  const { children_state: _children, ...rest } = room;
  return rest as RoomSummary;
}

function isObject(v: unknown): v is JsonObject {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}
