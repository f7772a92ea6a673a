// What a server admin does to rooms through Synapse's admin API (routes server/api/synapse/rooms.ts):
// list and inspect rooms, shut a room down (block it, move its local members out, purge it from the
// database), and purge a room's old history. Synapse's shapes, so synapse-admin and synadm work:
// https://element-hq.github.io/synapse/latest/admin_api/rooms.html
// https://element-hq.github.io/synapse/latest/admin_api/purge_history_api.html
import { randomBytes } from "node:crypto";
import { sql } from "drizzle-orm";
import type { Logger } from "pino";
import { type Database, rowsOf } from "../../schema/db.ts";
import { serverNameOf } from "../../federation/protocol/identifiers.ts";
import type { JsonObject } from "../../federation/protocol/pdu.ts";
import { MatrixError, invalidParam, notFound } from "../http/errors.ts";
import type { Requester } from "../http/route.ts";
import type { EventPersister } from "./persister.ts";
import type { Rooms } from "./rooms.ts";

/** The fields of a room in `GET /_synapse/admin/v1/rooms` (and, with more, in its details). */
export interface RoomSummary {
  room_id: string;
  name: string | null;
  canonical_alias: string | null;
  joined_members: number;
  joined_local_members: number;
  version: string;
  creator: string;
  encryption: string | null;
  federatable: boolean;
  public: boolean;
  join_rules: string | null;
  guest_access: string | null;
  history_visibility: string | null;
  state_events: number;
  room_type: string | null;
}

export const ROOM_ORDERS = [
  "name", "canonical_alias", "joined_members", "joined_local_members", "version", "creator", "encryption",
  "federatable", "public", "join_rules", "guest_access", "history_visibility", "state_events",
  // Deprecated synonyms Synapse still accepts.
  "alphabetical", "size",
] as const;
export type RoomOrder = (typeof ROOM_ORDERS)[number];

/** Orders where Synapse lists the largest first (its `order_by` says "Largest to smallest"). */
const DESCENDING = new Set<keyof RoomSummary>(["joined_members", "joined_local_members", "version", "state_events", "federatable", "public"]);

export interface ShutdownResult {
  kicked_users: string[];
  failed_to_kick_users: string[];
  local_aliases: string[];
  new_room_id: string | null;
}

export interface DeleteTask {
  delete_id: string;
  room_id: string;
  status: "scheduled" | "active" | "complete" | "failed";
  error?: string;
  shutdown_room: ShutdownResult;
  /** When it ended, to forget it a day later. */
  endedTs?: number;
}

export interface DeleteOptions {
  block: boolean;
  purge: boolean;
  forcePurge: boolean;
  newRoomUserId?: string;
  roomName?: string;
  message?: string;
}

export interface PurgeHistoryTask {
  purge_id: string;
  room_id: string;
  status: "active" | "complete" | "failed";
  error?: string;
  endedTs?: number;
}

/** Synapse keeps finished tasks' status for a day ("or until Synapse is restarted"), as here. */
const TASK_KEEP_MS = 24 * 60 * 60 * 1000;

/** Synapse's defaults for the room the members of a shut-down room are moved to. */
const DEFAULT_ROOM_NAME = "Content Violation Notification";
const DEFAULT_MESSAGE = "Sharing illegal content on this server is not permitted and rooms in violation will be blocked.";

/** The state keys with a summary field: read for every room by one query. */
const SUMMARY_TYPES = [
  "m.room.create", "m.room.name", "m.room.canonical_alias", "m.room.join_rules", "m.room.guest_access",
  "m.room.history_visibility", "m.room.encryption", "m.room.topic", "m.room.avatar",
];

/**
 * The tables a room purge empties of the room, in an order that leaves nothing pointing at a row
 * already gone. Other components' rows about the room (receipts, push actions and notifications,
 * the user directory's public rooms, application services' room lists, hierarchy sessions) are
 * nothing without the room, as in Synapse's `purge_room`. Users' room account data and tags are
 * left: they are the users' own data (server/userdata/), and nothing lists them without the room.
 */
const PURGED_BY_ROOM_ID = [
  "event_search", "event_relations", "event_edges", "event_auth", "current_state", "room_memberships", "receipts",
  "event_push_actions", "push_notifications", "push_queue", "room_aliases", "appservice_room_lists",
  "user_directory_public_members", "user_directory_public_rooms", "space_hierarchy_sessions",
];

export type RoomPurgedListener = (roomId: string, localUsers: string[]) => void;

export class RoomAdmin {
  private readonly deleteTasks = new Map<string, DeleteTask>();
  /** The running shutdowns, for the synchronous v1 endpoint to wait on. */
  private readonly deleteRuns = new Map<string, Promise<void>>();
  private readonly purgeTasks = new Map<string, PurgeHistoryTask>();
  private readonly purgedListeners: RoomPurgedListener[] = [];

  constructor(
    private readonly db: Database,
    private readonly persister: EventPersister,
    private readonly rooms: Rooms,
    private readonly serverName: string,
    private readonly now: () => number,
    private readonly logger: Logger,
  ) {}

  /**
   * Sync drops what it keeps in memory of the room (its latest events) and of the local users
   * given (their memberships): after a room's purge, and after a purge of its history (no users).
   */
  onRoomPurged(listener: RoomPurgedListener): void {
    this.purgedListeners.push(listener);
  }

  // ---- Reading --------------------------------------------------------------------------------------

  /** The summaries of every room, or of one. */
  private async summaries(roomId?: string): Promise<Map<string, RoomSummary & { topic: string | null; avatar: string | null }>> {
    const one = roomId === undefined ? sql`true` : sql`room_id = ${roomId}`;
    const suffix = `:${this.serverName}`;
    const [roomRows, stateRows, countRows] = await Promise.all([
      this.db.execute(sql`select room_id, room_version, creator, is_public from rooms where ${one}`),
      this.db.execute(sql`
        select c.room_id, c.type, e.json from current_state c join events e on e.event_id = c.event_id
        where c.state_key = '' and c.type in (${sql.join(SUMMARY_TYPES.map((t) => sql`${t}`), sql`, `)})
          and ${roomId === undefined ? sql`true` : sql`c.room_id = ${roomId}`}`),
      this.db.execute(sql`
        select room_id,
               count(*) filter (where type = 'm.room.member' and membership = 'join')::int as joined,
               count(*) filter (where type = 'm.room.member' and membership = 'join'
                                and right(state_key, ${suffix.length}) = ${suffix})::int as joined_local,
               count(*)::int as state_events
        from current_state where ${one} group by room_id`),
    ]);
    const out = new Map<string, RoomSummary & { topic: string | null; avatar: string | null }>();
    for (const r of rowsOf<{ room_id: string; room_version: string; creator: string; is_public: boolean }>(roomRows)) {
      out.set(r.room_id, {
        room_id: r.room_id,
        name: null,
        canonical_alias: null,
        joined_members: 0,
        joined_local_members: 0,
        version: r.room_version,
        creator: r.creator,
        encryption: null,
        federatable: true,
        public: r.is_public,
        join_rules: null,
        guest_access: null,
        history_visibility: null,
        state_events: 0,
        room_type: null,
        topic: null,
        avatar: null,
      });
    }
    for (const r of rowsOf<{ room_id: string; type: string; json: string }>(stateRows)) {
      const room = out.get(r.room_id);
      if (!room) continue;
      const content = ((JSON.parse(r.json) as { content?: JsonObject }).content ?? {}) as Record<string, unknown>;
      const text = (key: string) => (typeof content[key] === "string" ? (content[key] as string) : null);
      switch (r.type) {
        case "m.room.create":
          room.federatable = content["m.federate"] !== false;
          room.room_type = text("type");
          break;
        case "m.room.name": room.name = text("name"); break;
        case "m.room.canonical_alias": room.canonical_alias = text("alias"); break;
        case "m.room.join_rules": room.join_rules = text("join_rule"); break;
        case "m.room.guest_access": room.guest_access = text("guest_access"); break;
        case "m.room.history_visibility": room.history_visibility = text("history_visibility"); break;
        case "m.room.encryption": room.encryption = text("algorithm"); break;
        case "m.room.topic": room.topic = text("topic"); break;
        case "m.room.avatar": room.avatar = text("url"); break;
      }
    }
    for (const r of rowsOf<{ room_id: string; joined: number; joined_local: number; state_events: number }>(countRows)) {
      const room = out.get(r.room_id);
      if (!room) continue;
      room.joined_members = Number(r.joined);
      room.joined_local_members = Number(r.joined_local);
      room.state_events = Number(r.state_events);
    }
    return out;
  }

  /**
   * `GET /_synapse/admin/v1/rooms`: every room this server knows, filtered, ordered and paged by
   * offset. Read whole and sorted in memory: one query per table for all rooms (a few ms for
   * thousands), where Synapse keeps a statistics table for it.
   */
  async listRooms(options: {
    from: number;
    limit: number;
    orderBy: RoomOrder;
    dir: "f" | "b";
    searchTerm?: string;
    publicRooms?: boolean;
    emptyRooms?: boolean;
  }) {
    let rooms = [...(await this.summaries()).values()].map(({ topic: _t, avatar: _a, ...summary }) => summary);
    const term = options.searchTerm;
    if (term !== undefined && term !== "") {
      // As Synapse: the name and alias's local part case-insensitively, the room ID exactly.
      const lower = term.toLowerCase();
      rooms = rooms.filter(
        (r) =>
          (r.name ?? "").toLowerCase().includes(lower) ||
          (r.canonical_alias ?? "").split(":")[0]!.toLowerCase().includes(lower) ||
          r.room_id.includes(term),
      );
    }
    if (options.publicRooms !== undefined) rooms = rooms.filter((r) => r.public === options.publicRooms);
    if (options.emptyRooms !== undefined) rooms = rooms.filter((r) => (r.joined_members === 0) === options.emptyRooms);
    const key: keyof RoomSummary =
      options.orderBy === "alphabetical" ? "name" : options.orderBy === "size" ? "joined_members" : options.orderBy;
    const sign = (DESCENDING.has(key) ? -1 : 1) * (options.dir === "b" ? -1 : 1);
    rooms.sort((a, b) => sign * compareValues(a[key], b[key]) || a.room_id.localeCompare(b.room_id));
    const page = rooms.slice(options.from, options.from + options.limit);
    const response: Record<string, unknown> = { rooms: page, offset: options.from, total_rooms: rooms.length };
    if (options.from + page.length < rooms.length) response.next_batch = options.from + page.length;
    if (options.from > 0) response.prev_batch = Math.max(0, options.from - options.limit);
    return response;
  }

  /** `GET /_synapse/admin/v1/rooms/{roomId}`. */
  async roomDetails(roomId: string) {
    const summary = (await this.summaries(roomId)).get(roomId);
    if (!summary) throw notFound("Room not found");
    const [counts] = rowsOf<{ devices: number; memberships: number; forgotten: number }>(
      await this.db.execute(sql`
        select (select count(*)::int from devices d join room_memberships m on m.user_id = d.user_id
                where m.room_id = ${roomId} and m.membership = 'join') as devices,
               (select count(*)::int from room_memberships where room_id = ${roomId}) as memberships,
               (select count(*)::int from room_memberships where room_id = ${roomId} and forgotten) as forgotten`),
    );
    const { topic, avatar, ...rest } = summary;
    return {
      ...rest,
      topic,
      avatar,
      joined_local_devices: Number(counts?.devices ?? 0),
      // "Whether all local users have forgotten the room."
      forgotten: Number(counts?.memberships ?? 0) > 0 && counts?.forgotten === counts?.memberships,
    };
  }

  /** `GET …/rooms/{roomId}/members`: the joined members (Synapse's `get_users_in_room`). */
  async members(roomId: string): Promise<{ members: string[]; total: number }> {
    await this.rooms.requireRoom(roomId);
    const rows = rowsOf<{ state_key: string }>(
      await this.db.execute(sql`select state_key from current_state
        where room_id = ${roomId} and type = 'm.room.member' and membership = 'join' order by state_key`),
    );
    return { members: rows.map((r) => r.state_key), total: rows.length };
  }

  /** The event IDs of the room's current state, optionally of one type (`GET …/rooms/{roomId}/state`). */
  async currentStateIds(roomId: string, type?: string): Promise<string[]> {
    await this.rooms.requireRoom(roomId);
    const rows = rowsOf<{ event_id: string }>(
      await this.db.execute(sql`select event_id from current_state where room_id = ${roomId}
        and ${type === undefined ? sql`true` : sql`type = ${type}`} order by type, state_key`),
    );
    return rows.map((r) => r.event_id);
  }

  /**
   * The avatars in use: users' profile avatars and rooms' current m.room.avatar, for the media admin
   * API's `keep_profiles`. (It reads the users table too: one query where the two answers meet.)
   */
  async avatarUrls(): Promise<string[]> {
    const rows = rowsOf<{ url: string | null }>(
      await this.db.execute(sql`
        select avatar_url as url from users where avatar_url is not null
        union select (e.json::jsonb -> 'content' ->> 'url') from current_state c join events e on e.event_id = c.event_id
          where c.type = 'm.room.avatar' and c.state_key = ''`),
    );
    return rows.map((r) => r.url).filter((u): u is string => typeof u === "string");
  }

  // ---- Blocking -------------------------------------------------------------------------------------

  async isBlocked(roomId: string): Promise<boolean> {
    const rows = rowsOf(await this.db.execute(sql`select 1 from blocked_rooms where room_id = ${roomId}`));
    return rows.length > 0;
  }

  /** `GET /_synapse/admin/v1/rooms/{roomId}/block`. */
  async blockStatus(roomId: string): Promise<{ block: boolean; user_id?: string }> {
    const [row] = rowsOf<{ user_id: string }>(await this.db.execute(sql`select user_id from blocked_rooms where room_id = ${roomId}`));
    return row ? { block: true, user_id: row.user_id } : { block: false };
  }

  /** Blocks (or unblocks) a room; a room need not be known to be blocked. */
  async setBlocked(roomId: string, block: boolean, adminUserId: string): Promise<void> {
    if (block) {
      await this.db.execute(sql`insert into blocked_rooms (room_id, user_id, blocked_ts)
        values (${roomId}, ${adminUserId}, ${this.now()}) on conflict (room_id) do nothing`);
    } else {
      await this.db.execute(sql`delete from blocked_rooms where room_id = ${roomId}`);
    }
  }

  // ---- Shutting a room down (DELETE /_synapse/admin/v2/rooms/{roomId}) ------------------------------

  /**
   * Starts the shutdown in the background and answers its ID at once. The checks a caller can fix
   * are made first and answered as errors; what fails later is the task's `failed` status.
   */
  async startDelete(admin: Requester, roomId: string, options: DeleteOptions): Promise<string> {
    if (options.newRoomUserId !== undefined && serverNameOf(options.newRoomUserId) !== this.serverName) {
      throw invalidParam("User must be our own: " + options.newRoomUserId.slice(0, 255));
    }
    if ((await this.rooms.roomVersion(roomId)) === undefined) throw notFound("Unknown room id " + roomId.slice(0, 255));
    this.expireTasks();
    for (const task of this.deleteTasks.values()) {
      if (task.room_id === roomId && (task.status === "active" || task.status === "scheduled")) {
        throw new MatrixError(400, "M_UNKNOWN", "History purge already in progress for " + roomId);
      }
    }
    const deleteId = randomBytes(12).toString("base64url");
    const task: DeleteTask = {
      delete_id: deleteId,
      room_id: roomId,
      status: "scheduled",
      shutdown_room: { kicked_users: [], failed_to_kick_users: [], local_aliases: [], new_room_id: null },
    };
    this.deleteTasks.set(deleteId, task);
    const run = this.runDelete(admin, task, options)
      .catch((err: unknown) => {
        task.status = "failed";
        task.error = err instanceof MatrixError ? err.message : "Internal error";
        task.endedTs = this.now();
        this.logger.warn({ err, roomId }, "room shutdown failed");
      })
      .finally(() => this.deleteRuns.delete(deleteId));
    this.deleteRuns.set(deleteId, run);
    return deleteId;
  }

  /**
   * `DELETE /_synapse/admin/v1/rooms/{roomId}`: the same shutdown, answered when it is over. A room
   * this server does not know can still be blocked ("pre-emptively block a room"), and nothing else.
   */
  async deleteNow(admin: Requester, roomId: string, options: DeleteOptions): Promise<ShutdownResult> {
    if (options.block && (await this.rooms.roomVersion(roomId)) === undefined) {
      await this.setBlocked(roomId, true, admin.userId);
      return { kicked_users: [], failed_to_kick_users: [], local_aliases: [], new_room_id: null };
    }
    const deleteId = await this.startDelete(admin, roomId, options);
    await this.deleteRuns.get(deleteId);
    const task = this.deleteTasks.get(deleteId)!;
    if (task.status === "failed") throw new MatrixError(400, "M_UNKNOWN", task.error ?? "The room could not be deleted");
    return task.shutdown_room;
  }

  deleteStatus(deleteId: string): DeleteTask | undefined {
    this.expireTasks();
    return this.deleteTasks.get(deleteId);
  }

  deleteStatusesOf(roomId: string): DeleteTask[] {
    this.expireTasks();
    return [...this.deleteTasks.values()].filter((t) => t.room_id === roomId);
  }

  private async runDelete(admin: Requester, task: DeleteTask, options: DeleteOptions): Promise<void> {
    const roomId = task.room_id;
    task.status = "active";
    // Blocked first, so that nobody joins while the members are being moved out.
    if (options.block) await this.setBlocked(roomId, true, admin.userId);
    const result = task.shutdown_room;
    let newRoomId: string | undefined;
    let newRoomOwner: Requester | undefined;
    if (options.newRoomUserId !== undefined) {
      newRoomOwner = actingAs(options.newRoomUserId);
      newRoomId = await this.rooms.createRoom(newRoomOwner, {
        preset: "public_chat",
        name: options.roomName ?? DEFAULT_ROOM_NAME,
        // "Users invited to the new room will have power level -10 by default, and thus be unable to speak."
        power_level_content_override: { users_default: -10 },
      });
      result.new_room_id = newRoomId;
      await this.rooms.sendMessage(newRoomOwner, newRoomId, "m.room.message", { msgtype: "m.text", body: options.message ?? DEFAULT_MESSAGE }, `shutdown-${task.delete_id}`);
    }
    const localMembers = rowsOf<{ user_id: string }>(
      await this.db.execute(sql`select user_id from room_memberships where room_id = ${roomId} and membership = 'join' order by user_id`),
    ).map((r) => r.user_id);
    for (const userId of localMembers) {
      try {
        // Each member leaves on their own (as Synapse does): no power level is needed to leave.
        await this.rooms.leave(actingAs(userId), roomId);
        if (newRoomId !== undefined && newRoomOwner !== undefined && userId !== newRoomOwner.userId) {
          await this.rooms.invite(newRoomOwner, newRoomId, userId);
          await this.rooms.join(actingAs(userId), newRoomId);
        }
        result.kicked_users.push(userId);
      } catch (err) {
        this.logger.warn({ err, roomId, userId }, "could not move a member out of a room being shut down");
        result.failed_to_kick_users.push(userId);
      }
    }
    const aliases = rowsOf<{ alias: string }>(await this.db.execute(sql`select alias from room_aliases where room_id = ${roomId} order by alias`));
    result.local_aliases = aliases.map((a) => a.alias);
    if (newRoomId !== undefined) {
      await this.db.execute(sql`update room_aliases set room_id = ${newRoomId} where room_id = ${roomId}`);
    } else {
      await this.db.execute(sql`delete from room_aliases where room_id = ${roomId}`);
    }
    await this.db.execute(sql`update rooms set is_public = false where room_id = ${roomId}`);
    if (options.purge) {
      const stillJoined = rowsOf(await this.db.execute(sql`select 1 from room_memberships where room_id = ${roomId} and membership = 'join' limit 1`));
      if (stillJoined.length > 0 && !options.forcePurge) throw new MatrixError(400, "M_UNKNOWN", "Users are still joined to this room");
      await this.purgeRoom(roomId);
    }
    task.status = "complete";
    task.endedTs = this.now();
  }

  /**
   * Removes every trace of the room from the database (this server's copy only), in one transaction
   * that holds the room's row lock, the persister's own guard: an event of the room queued meanwhile
   * then finds no room and fails (404). The persister's cached state of the room is dropped after.
   */
  async purgeRoom(roomId: string): Promise<void> {
    const localUsers = rowsOf<{ user_id: string }>(
      await this.db.execute(sql`select user_id from room_memberships where room_id = ${roomId}`),
    ).map((r) => r.user_id);
    await this.db.transaction(async (tx) => {
      await tx.execute(sql`select room_id from rooms where room_id = ${roomId} for update`);
      await tx.execute(sql`delete from event_transactions where event_id in (select event_id from events where room_id = ${roomId})`);
      for (const table of PURGED_BY_ROOM_ID) {
        await tx.execute(sql`delete from ${sql.identifier(table)} where room_id = ${roomId}`);
      }
      await tx.execute(sql`delete from state_group_entries where group_id in (select id from state_groups where room_id = ${roomId})`);
      await tx.execute(sql`delete from state_groups where room_id = ${roomId}`);
      await tx.execute(sql`delete from events where room_id = ${roomId}`);
      await tx.execute(sql`delete from rooms where room_id = ${roomId}`);
    });
    this.persister.invalidate(roomId);
    this.rooms.forgetRoom(roomId);
    this.announcePurge(roomId, localUsers);
  }

  private announcePurge(roomId: string, localUsers: string[]): void {
    for (const listener of this.purgedListeners) {
      try {
        listener(roomId, localUsers);
      } catch (err) {
        this.logger.warn({ err, roomId }, "a room-purged listener failed");
      }
    }
  }

  // ---- Purging history (POST /_synapse/admin/v1/purge_history/{roomId}[/{eventId}]) -----------------

  /**
   * Starts deleting the room's events before a point: the given event, or the first event at or
   * after `purgeUpToTs`. Only events without state: state events stay, since the state groups,
   * the auth rules of later events and the room's current state need them; the forward extremities
   * stay too (the next event's prev_events). Remote users' events only, unless `deleteLocalEvents`
   * (Synapse's rule: this server is the only copy of its users' events). What stays before the
   * point leaves the timeline (outliers), as in Synapse.
   */
  async startPurgeHistory(roomId: string, upTo: { eventId?: string; ts?: number }, deleteLocalEvents: boolean): Promise<string> {
    await this.rooms.requireRoom(roomId);
    let depth: number;
    if (upTo.eventId !== undefined) {
      const [row] = rowsOf<{ room_id: string; topological_ordering: string | number }>(
        await this.db.execute(sql`select room_id, topological_ordering from events where event_id = ${upTo.eventId}`),
      );
      if (!row || row.room_id !== roomId) throw notFound("Event not found in this room");
      depth = Number(row.topological_ordering);
    } else if (upTo.ts !== undefined) {
      const [row] = rowsOf<{ d: string | number | null; max: string | number | null }>(
        await this.db.execute(sql`select
            (select topological_ordering from events where room_id = ${roomId} and origin_server_ts >= ${upTo.ts}
               and stream_ordering is not null order by stream_ordering limit 1) as d,
            (select max(topological_ordering) + 1 from events where room_id = ${roomId}) as max`),
      );
      depth = Number(row?.d ?? row?.max ?? 0);
    } else {
      throw new MatrixError(400, "M_UNKNOWN", "must specify purge_up_to_event_id or purge_up_to_ts");
    }
    this.expireTasks();
    for (const task of this.purgeTasks.values()) {
      if (task.room_id === roomId && task.status === "active") throw new MatrixError(400, "M_UNKNOWN", "History purge already in progress for " + roomId);
    }
    const purgeId = randomBytes(12).toString("base64url");
    const task: PurgeHistoryTask = { purge_id: purgeId, room_id: roomId, status: "active" };
    this.purgeTasks.set(purgeId, task);
    this.purgeHistory(roomId, depth, deleteLocalEvents).then(
      () => {
        // Sync keeps a room's latest events in memory: they must not outlive their rows.
        this.announcePurge(roomId, []);
        task.status = "complete";
        task.endedTs = this.now();
      },
      (err: unknown) => {
        task.status = "failed";
        task.error = "Purge failed";
        task.endedTs = this.now();
        this.logger.warn({ err, roomId }, "history purge failed");
      },
    );
    return purgeId;
  }

  purgeHistoryStatus(purgeId: string): PurgeHistoryTask | undefined {
    this.expireTasks();
    return this.purgeTasks.get(purgeId);
  }

  /** Deletes the room's events without state below `depth` (see `startPurgeHistory`); answers how many. */
  async purgeHistory(roomId: string, depth: number, deleteLocalEvents: boolean): Promise<number> {
    const suffix = `:${this.serverName}`;
    return this.db.transaction(async (tx) => {
      // The room's row lock: no event of the room is persisted meanwhile (its forward extremities hold).
      const [room] = rowsOf<{ forward_extremities: string[] | string }>(
        await tx.execute(sql`select forward_extremities from rooms where room_id = ${roomId} for update`),
      );
      if (!room) return 0;
      await tx.execute(sql`create temporary table if not exists purged_events (event_id text primary key) on commit drop`);
      await tx.execute(sql`insert into purged_events
        select e.event_id from events e
        where e.room_id = ${roomId} and e.topological_ordering < ${depth} and e.state_key is null
          and e.event_id not in (select unnest(r.forward_extremities) from rooms r where r.room_id = ${roomId})
          and (${deleteLocalEvents} or right(e.sender, ${suffix.length}) <> ${suffix})`);
      await tx.execute(sql`delete from event_transactions where event_id in (select event_id from purged_events)`);
      for (const table of ["event_search", "event_relations", "event_edges", "event_auth", "event_push_actions", "push_notifications"]) {
        await tx.execute(sql`delete from ${sql.identifier(table)} where room_id = ${roomId} and event_id in (select event_id from purged_events)`);
      }
      const deleted = await tx.execute(sql`delete from events where event_id in (select event_id from purged_events) returning 1`);
      // What stays below the point (state events, and local users' events unless deleted) leaves
      // the timeline as Synapse's purge does it: outliers, kept for the state and as the only copy,
      // served to no client's /messages or /sync.
      await tx.execute(sql`update events set outlier = true
        where room_id = ${roomId} and topological_ordering < ${depth} and not outlier
          and event_id not in (select unnest(r.forward_extremities) from rooms r where r.room_id = ${roomId})`);
      return rowsOf(deleted).length;
    });
  }

  private expireTasks(): void {
    const cutoff = this.now() - TASK_KEEP_MS;
    for (const [id, t] of this.deleteTasks) if (t.endedTs !== undefined && t.endedTs < cutoff) this.deleteTasks.delete(id);
    for (const [id, t] of this.purgeTasks) if (t.endedTs !== undefined && t.endedTs < cutoff) this.purgeTasks.delete(id);
  }
}

/** A local user as the server acts for them (a shut-down room's members leave and join themselves). */
function actingAs(userId: string): Requester {
  return { userId, deviceId: "", isGuest: false, sessionId: "" };
}

function compareValues(a: unknown, b: unknown): number {
  // Nulls last in the forward order, as PostgreSQL's `ORDER BY … ASC` puts them.
  if (a === b) return 0;
  if (a === null || a === undefined) return 1;
  if (b === null || b === undefined) return -1;
  if (typeof a === "number" && typeof b === "number") return a - b;
  if (typeof a === "boolean" && typeof b === "boolean") return Number(a) - Number(b);
  return String(a).localeCompare(String(b));
}
