// Whose device lists a user must re-fetch: `device_lists` of /sync, and GET /keys/changes.
// https://spec.matrix.org/latest/client-server-api/#tracking-the-device-list-for-a-user
// https://spec.matrix.org/latest/client-server-api/#e2e-extensions-to-sync
// https://spec.matrix.org/latest/client-server-api/#get_matrixclientv3keyschanges
//
// Between two points of the streams, `changed` holds
// - the users who share a room with the user now and whose devices or keys changed in the
//   device-list range (the user themself too: the change concerns their other devices);
// - the users who began to share a room with the user in the room-event range: they joined (or
//   were invited to) one of the user's rooms, or the user joined one of theirs. The client may not track them yet, or its
//   list of their devices went stale while no room was shared (the spec's note in "Tracking the
//   device list for a user").
// and `left` the users who shared a room with the user in the range and share none now, so the
// client stops tracking them.
//
// Like Synapse, every room counts, not only encrypted ones: the spec says "encrypted rooms", but a
// room may become encrypted later and clients cope with a user they do not track.
import type { DeviceLists } from "../e2ee/device-lists.ts";
import type { RoomMembership, SyncReads } from "../rooms/sync-reads.ts";
import { readStreamPositions } from "./streams.ts";
import type { Database } from "../../schema/db.ts";

export interface DeviceListUpdate {
  changed: string[];
  left: string[];
}

/** The two streams device lists depend on; `events` is unknown for a bare device-list position. */
export interface DeviceListPoint {
  device_lists: number;
  events?: number;
}

/** Users per `sharingARoom` query (bound parameters stay far below PostgreSQL's limit). */
const CHUNK = 1_000;

export class DeviceListChanges {
  constructor(
    private readonly db: Database,
    private readonly reads: SyncReads,
    private readonly deviceLists: DeviceLists,
  ) {}

  /**
   * The changes between `from` and `to` as `userId` sees them. `memberships` are the user's
   * memberships (read at or after `to`); `quietRooms` are joined rooms the caller knows had no
   * membership event in the room-event range (so they need no query).
   */
  async between(
    userId: string,
    from: DeviceListPoint,
    to: Required<DeviceListPoint>,
    memberships: readonly RoomMembership[],
    quietRooms?: ReadonlySet<string>,
  ): Promise<DeviceListUpdate> {
    const changed = new Set<string>();
    const gone = new Set<string>();

    if (to.device_lists > from.device_lists) {
      // Who changed in the range first (a short list for an incremental sync), then which of them
      // share a room with the user: cheaper than listing everyone the user shares a room with.
      const candidates = await this.deviceLists.changedUsers(userId, from.device_lists, to.device_lists);
      const others = candidates.filter((u) => u !== userId);
      if (others.length < candidates.length) changed.add(userId);
      for (const u of await this.sharing(userId, others)) changed.add(u);
    }

    if (from.events !== undefined && to.events > from.events) {
      const since = from.events;
      const joined = memberships.filter((m) => m.membership === "join");
      const inRange = (m: RoomMembership) => m.streamOrdering > since && m.streamOrdering <= to.events;
      const newlyJoined = joined.filter(inRange).map((m) => m.roomId);
      const newlyLeft = memberships
        .filter((m) => (m.membership === "leave" || m.membership === "ban") && inRange(m))
        .map((m) => m.roomId);
      // Rooms the user was in all along: who came and went in them.
      const stayed = joined.filter((m) => m.streamOrdering <= since && !quietRooms?.has(m.roomId)).map((m) => m.roomId);
      for (const c of await this.reads.memberChanges(stayed, since, to.events)) {
        if (c.userId === userId) continue;
        // An invitee too (as Synapse does): clients encrypt for invited members when the room's
        // history visibility lets them read, so they need the invitee's devices now.
        if (c.membership === "join" || c.membership === "invite") changed.add(c.userId);
        else if (c.membership === "leave" || c.membership === "ban") gone.add(c.userId);
      }
      // Rooms the user joined or left: all their members (as of `to`).
      if (newlyJoined.length || newlyLeft.length) {
        const final = new Map<string, Map<string, string>>();
        for (const c of await this.reads.memberChanges([...newlyJoined, ...newlyLeft], 0, to.events)) {
          let room = final.get(c.roomId);
          if (!room) final.set(c.roomId, (room = new Map()));
          room.set(c.userId, c.membership);
        }
        const membersOf = (roomId: string) => [...(final.get(roomId) ?? [])].filter(([u, m]) => m === "join" && u !== userId).map(([u]) => u);
        for (const r of newlyJoined) for (const u of membersOf(r)) changed.add(u);
        for (const r of newlyLeft) for (const u of membersOf(r)) gone.add(u);
      }
    }

    let left: string[] = [];
    const candidates = [...gone].filter((u) => !changed.has(u));
    if (candidates.length) {
      const still = await this.sharing(userId, candidates);
      left = candidates.filter((u) => !still.has(u));
    }
    return { changed: [...changed].sort(), left: left.sort() };
  }

  /**
   * GET /keys/changes: from one point to another (each a sync token's positions, or a bare
   * device-list position), bounded by what is committed.
   */
  async keyChanges(userId: string, from: DeviceListPoint, to: DeviceListPoint): Promise<DeviceListUpdate> {
    const safe = await readStreamPositions(this.db);
    const upper = {
      device_lists: Math.min(to.device_lists, safe.device_lists),
      events: Math.min(to.events ?? safe.events, safe.events),
    };
    const memberships = (await this.reads.membershipsOf([userId])).get(userId) ?? [];
    return this.between(userId, from, upper, memberships);
  }

  private async sharing(userId: string, candidates: readonly string[]): Promise<Set<string>> {
    const out = new Set<string>();
    for (let i = 0; i < candidates.length; i += CHUNK) {
      for (const u of await this.reads.sharingARoom(userId, candidates.slice(i, i + CHUNK))) out.add(u);
    }
    return out;
  }
}
