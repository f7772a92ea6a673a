// The legacy snapshots: GET /initialSync and GET /rooms/{roomId}/initialSync.
// https://spec.matrix.org/latest/client-server-api/#get_matrixclientv3initialsync (old_sync.yaml, deprecated)
// https://spec.matrix.org/latest/client-server-api/#get_matrixclientv3roomsroomidinitialsync (room_initial_sync.yaml)
// https://spec.matrix.org/latest/client-server-api/#room-previews (peeking: a world_readable room, unjoined)
//
// Both read every stream's position FIRST and answer as of it: each room's messages stop at that
// events position, and `end` is that position as a sync token, so `GET /events?from=<end>` continues
// exactly where the snapshot stops (nothing missed, nothing twice). Who may read a room is the
// timeline's rule (/messages, /state: members, former members up to their leave, peekers of
// world_readable rooms); the events are read as /sync reads them (by stream position, through the
// history visibility filter) and served without bundled aggregations, as Synapse serves this
// deprecated API (bundling costs more than the rest of a room's snapshot).
import type { Database } from "../../schema/db.ts";
import type { Presence, PresenceEvent } from "../ephemeral/presence.ts";
import type { Receipts } from "../ephemeral/receipts.ts";
import { MatrixError } from "../http/errors.ts";
import type { Requester } from "../http/route.ts";
import type { Directory } from "../rooms/directory.ts";
import type { ClientEvent, EventStore, StoredEvent } from "../rooms/event-store.ts";
import { formatToken, pointBefore, streamToken } from "../rooms/pagination.ts";
import type { Rooms } from "../rooms/rooms.ts";
import type { RoomMembership, SyncReads } from "../rooms/sync-reads.ts";
import type { RoomAccess, Timeline } from "../rooms/timeline.ts";
import type { HistoryVisibility, Viewer } from "../rooms/visibility.ts";
import type { AccountDataChange, UserData } from "../userdata/userdata.ts";
import type { Notifier } from "./notifier.ts";
import { type StreamPositions, maxPositions, readStreamPositions } from "./streams.ts";
import { encodeSyncToken } from "./token.ts";

type JsonObject = Record<string, unknown>;

/** "The maximum number of messages to return for each room": Synapse's default when none is given. */
export const DEFAULT_INITIAL_SYNC_LIMIT = 10;
/** Rooms snapshotted at once by GET /initialSync (each is a few queries). */
const ROOM_CONCURRENCY = 8;

export interface PaginationChunk {
  chunk: ClientEvent[];
  start?: string;
  end: string;
}

export interface RoomInfo {
  room_id: string;
  membership?: string;
  invite?: ClientEvent;
  messages?: PaginationChunk;
  state?: ClientEvent[];
  visibility?: "public" | "private";
  account_data?: Array<{ type: string; content: JsonObject }>;
  /** The room's presence (room initialSync of a room one may read now; Synapse's shape). */
  presence?: PresenceEvent[];
  /** Not in the spec: the room's `m.receipt` event, as Synapse gives it (sytest reads it). */
  receipts?: JsonObject[];
}

export interface InitialSyncResponse {
  end: string;
  presence: PresenceEvent[];
  account_data: Array<{ type: string; content: JsonObject }>;
  rooms: RoomInfo[];
  /** Not in the spec: every joined room's `m.receipt` event, as Synapse gives it. */
  receipts: JsonObject[];
}

export class InitialSync {
  constructor(
    private readonly d: {
      db: Database;
      notifier: Notifier;
      reads: SyncReads;
      rooms: Rooms;
      timeline: Timeline;
      eventStore: EventStore;
      visibility: HistoryVisibility;
      directory: Directory;
      presence: Presence;
      receipts: Receipts;
      userData: UserData;
    },
  ) {}

  /** GET /initialSync: the rooms joined and invited to, and with `archived` those left too. */
  async snapshotAll(requester: Requester, options: { limit?: number; archived: boolean }): Promise<InitialSyncResponse> {
    const userId = requester.userId;
    const limit = checkLimit(options.limit);
    const upper = await this.upperBound();
    const memberships = ((await this.d.reads.membershipsOf([userId])).get(userId) ?? [])
      .filter((m) => m.streamOrdering <= upper.events)
      .filter((m) => m.membership === "join" || m.membership === "invite" || (options.archived && (m.membership === "leave" || m.membership === "ban")));
    const [accountData, presence] = await Promise.all([
      this.d.userData.accountDataSince(userId, 0, upper.account_data),
      this.presenceOfSharing(userId, upper),
    ]);
    const rooms = await mapLimited(memberships, ROOM_CONCURRENCY, (m) => this.roomOfMember(requester, m, limit, upper, accountData));
    const joined = memberships.filter((m) => m.membership === "join").map((m) => m.roomId);
    const receipts = await this.d.receipts.receiptsIn(joined, 0, upper.receipts, userId);
    return {
      end: encodeSyncToken(upper),
      presence,
      account_data: accountData.filter((a) => a.roomId === "").map(accountDataEvent),
      rooms: rooms.filter((r): r is RoomInfo => r !== undefined),
      receipts: [...receipts].map(([roomId, content]) => ({ type: "m.receipt", room_id: roomId, content })),
    };
  }

  /**
   * GET /rooms/{roomId}/initialSync: for members, former members (as of their leave), and anyone
   * when the room's history is world_readable (peeking); 403 otherwise (the timeline's access rule).
   */
  async snapshotRoom(requester: Requester, roomId: string, options: { limit?: number }): Promise<RoomInfo> {
    const userId = requester.userId;
    const limit = checkLimit(options.limit);
    const upper = await this.upperBound();
    // 403 (also for an unknown room) before anything is read.
    const access = await this.d.timeline.access(userId, roomId);
    const membership = await this.d.rooms.membership(roomId, userId);
    const former = access.kind === "former";
    const [{ messages, state }, visibility, accountData, live] = await Promise.all([
      this.readRoom(requester, access, upper, limit),
      this.d.directory.getVisibility(roomId),
      this.d.userData.accountDataSince(userId, 0, upper.account_data),
      former ? undefined : this.liveExtras(userId, roomId, upper),
    ]);
    const room: RoomInfo = { room_id: roomId };
    // A peeker who never had a membership has none to report (as Synapse leaves it out).
    if (membership && !membership.forgotten) room.membership = membership.membership;
    room.messages = messages;
    room.state = state;
    room.visibility = visibility;
    room.account_data = accountData.filter((a) => a.roomId === roomId).map(accountDataEvent);
    room.presence = live?.presence ?? [];
    room.receipts = live?.receipts ?? [];
    return room;
  }

  /** One room of GET /initialSync; undefined when it can no longer be read (left it meanwhile). */
  private async roomOfMember(
    requester: Requester,
    m: RoomMembership,
    limit: number,
    upper: StreamPositions,
    accountData: AccountDataChange[],
  ): Promise<RoomInfo | undefined> {
    const room: RoomInfo = { room_id: m.roomId, membership: m.membership };
    room.visibility = await this.d.directory.getVisibility(m.roomId);
    room.account_data = accountData.filter((a) => a.roomId === m.roomId).map(accountDataEvent);
    if (m.membership === "invite") {
      const invite = await this.d.eventStore.getEvent(m.eventId);
      if (invite) room.invite = (await this.d.eventStore.format([invite], requester, { aggregations: false }))[0];
      return room;
    }
    try {
      // A joined member reads everything as of now; a former member's reach is the timeline's to say.
      const access: RoomAccess =
        m.membership === "join"
          ? { roomId: m.roomId, kind: "member", viewer: { userId: requester.userId, joinedUntil: Number.POSITIVE_INFINITY } }
          : await this.d.timeline.access(requester.userId, m.roomId);
      Object.assign(room, await this.readRoom(requester, access, upper, limit));
    } catch (err) {
      // The membership changed between the two reads (a leave, then a forget): the room is no
      // longer the user's to list.
      if (err instanceof MatrixError && err.status === 403) return undefined;
      throw err;
    }
    return room;
  }

  /**
   * A room's messages and state as `access` allows: as of the snapshot's position, or for a former
   * member as of their leave. `messages.chunk`: the last `limit` events (those the viewer may see),
   * oldest first; `start`: where /messages continues backwards; `end`: the snapshot's position (a
   * sync token, which /messages and /events both take), or the leave's.
   */
  private async readRoom(
    requester: Requester,
    access: RoomAccess,
    upper: StreamPositions,
    limit: number,
  ): Promise<{ messages: PaginationChunk; state: ClientEvent[] }> {
    const roomId = access.roomId;
    const former = access.kind === "former";
    const until = former && access.until ? access.until.stream : upper.events;
    const [{ events }, group] = await Promise.all([
      this.d.reads.roomEvents(roomId, Number.MIN_SAFE_INTEGER, until, limit),
      former ? Promise.resolve(access.stateGroup ?? null) : this.d.reads.groupAt(roomId, upper.events),
    ]);
    const [chunk, state] = await Promise.all([
      this.visibleEvents(access.viewer, events, requester),
      this.d.reads.stateOfGroup(group).then(async (ids) => {
        const stored = await this.d.reads.getEvents([...ids.values()]);
        return this.d.eventStore.format([...stored.values()], requester, { aggregations: false });
      }),
    ]);
    const start = events.length ? formatToken(pointBefore(events[0]!)) : streamToken(until);
    return { messages: { chunk, start, end: former ? streamToken(until) : encodeSyncToken(upper) }, state };
  }

  private async visibleEvents(viewer: Viewer, events: StoredEvent[], requester: Requester): Promise<ClientEvent[]> {
    const visible = await this.d.visibility.filter(viewer, events);
    return this.d.eventStore.format(visible, requester, { aggregations: false });
  }

  /** Presence of the room's joined members and its receipts, for a room one reads as of now. */
  private async liveExtras(userId: string, roomId: string, upper: StreamPositions): Promise<{ presence: PresenceEvent[]; receipts: JsonObject[] }> {
    const members = await this.d.reads.joinedMembers(roomId);
    const [presence, receipts] = await Promise.all([
      this.d.presence.presenceOf(members, upper.presence),
      this.d.receipts.receiptsIn([roomId], 0, upper.receipts, userId),
    ]);
    // Every joined member has a presence, as Synapse answers: offline for those who never set one.
    const known = new Set(presence.map((e) => e.sender));
    for (const member of members) if (!known.has(member)) presence.push(offlinePresence(member));
    const content = receipts.get(roomId);
    return {
      presence: presence.map(legacyPresence),
      receipts: content ? [{ type: "m.receipt", room_id: roomId, content }] : [],
    };
  }

  /** The presence of the user and of everyone sharing a room with them; their own always (offline when never set). */
  private async presenceOfSharing(userId: string, upper: StreamPositions): Promise<PresenceEvent[]> {
    const events = await this.d.presence.presenceFor(userId, 0, upper.presence, () => this.d.reads.usersSharingRoomsWith(userId));
    if (!events.some((e) => e.sender === userId)) events.push(offlinePresence(userId));
    return events.map(legacyPresence);
  }

  /** Every stream's position, at or below which everything is committed (as GET /events reads it). */
  private async upperBound(): Promise<StreamPositions> {
    const stored = await readStreamPositions(this.d.db);
    const known = this.d.notifier.positions();
    return { ...maxPositions(stored, known), typing: known.typing };
  }
}

function checkLimit(limit: number | undefined): number {
  if (limit === undefined) return DEFAULT_INITIAL_SYNC_LIMIT;
  if (!Number.isSafeInteger(limit) || limit < 0) throw new MatrixError(400, "M_INVALID_PARAM", "limit must be a non-negative integer");
  return limit;
}

function accountDataEvent(a: AccountDataChange): { type: string; content: JsonObject } {
  return { type: a.type, content: a.content };
}

function offlinePresence(userId: string): PresenceEvent {
  return { type: "m.presence", sender: userId, content: { presence: "offline" } };
}

/**
 * The presence event of the old API (the spec's example for /initialSync): the user in
 * `content.user_id` as well as in `sender`; clients of this API (and sytest) read the former.
 */
function legacyPresence(e: PresenceEvent): PresenceEvent {
  return { ...e, content: { ...e.content, user_id: e.sender } as PresenceEvent["content"] };
}

/** `fn` over `items` with at most `concurrency` at once, results in order. */
async function mapLimited<T, R>(items: readonly T[], concurrency: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]!);
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, items.length) }, worker));
  return out;
}
