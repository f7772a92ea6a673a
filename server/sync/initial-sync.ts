// The legacy snapshots: GET /initialSync and GET /rooms/{roomId}/initialSync.
// https://spec.matrix.org/latest/client-server-api/#get_matrixclientv3initialsync (old_sync.yaml, deprecated)
// https://spec.matrix.org/latest/client-server-api/#get_matrixclientv3roomsroomidinitialsync (room_initial_sync.yaml)
// https://spec.matrix.org/latest/client-server-api/#room-previews (peeking: a world_readable room, unjoined)
//
// Both read every stream's position FIRST and answer as of it: each room's messages stop at that
// events position, and `end` is that position as a sync token, so `GET /events?from=<end>` continues
// exactly where the snapshot stops (nothing missed, nothing twice). Reading goes through the services
// the newer endpoints use: the timeline (/messages, /state, with their access rules), presence,
// receipts, account data and the room directory.
import type { Database } from "../../schema/db.ts";
import type { Presence, PresenceEvent } from "../ephemeral/presence.ts";
import type { Receipts } from "../ephemeral/receipts.ts";
import { MatrixError } from "../http/errors.ts";
import type { Requester } from "../http/route.ts";
import type { Directory } from "../rooms/directory.ts";
import type { ClientEvent, EventStore } from "../rooms/event-store.ts";
import { TIMELINE_START, formatToken, streamToken } from "../rooms/pagination.ts";
import type { Rooms } from "../rooms/rooms.ts";
import type { RoomMembership, SyncReads } from "../rooms/sync-reads.ts";
import type { Timeline } from "../rooms/timeline.ts";
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
    const former = access.kind === "former" && membership !== undefined;
    const until = former ? membership.streamOrdering : upper.events;
    const [messages, state, visibility, accountData, live] = await Promise.all([
      this.messages(requester, roomId, limit, until, former ? streamToken(until) : encodeSyncToken(upper)),
      this.d.timeline.state(requester, roomId),
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
    // A joined room's messages stop at the snapshot's position; a left one's at the leave.
    const joined = m.membership === "join";
    const until = joined ? upper.events : m.streamOrdering;
    try {
      const [messages, state] = await Promise.all([
        this.messages(requester, m.roomId, limit, until, joined ? encodeSyncToken(upper) : streamToken(until)),
        this.d.timeline.state(requester, m.roomId),
      ]);
      room.messages = messages;
      room.state = state;
    } catch (err) {
      // The membership changed between the two reads (a leave, then a forget): the room is no
      // longer the user's to list.
      if (err instanceof MatrixError && err.status === 403) return undefined;
      throw err;
    }
    return room;
  }

  /**
   * The last `limit` events the user may see up to stream position `until`, oldest first. `start`
   * is where /messages continues backwards; `end` is the snapshot's position.
   */
  private async messages(requester: Requester, roomId: string, limit: number, until: number, end: string): Promise<PaginationChunk> {
    const page = await this.d.timeline.messages(requester, roomId, { dir: "b", from: streamToken(until), limit, filter: {} });
    const chunk = (page.chunk as ClientEvent[]).slice().reverse();
    // /messages leaves out `end` when nothing precedes the page; the start of the timeline is then
    // where it starts (paging back from it gives nothing, as it should).
    const start = typeof page.end === "string" ? page.end : formatToken(TIMELINE_START);
    return { chunk, start, end };
  }

  /** Presence of the room's joined members and its receipts, for a room one reads as of now. */
  private async liveExtras(userId: string, roomId: string, upper: StreamPositions): Promise<{ presence: PresenceEvent[]; receipts: JsonObject[] }> {
    const members = await this.d.reads.joinedMembers(roomId);
    const [presence, receipts] = await Promise.all([
      this.d.presence.presenceOf(members, upper.presence),
      this.d.receipts.receiptsIn([roomId], 0, upper.receipts, userId),
    ]);
    const content = receipts.get(roomId);
    return {
      presence: presence.map(legacyPresence),
      receipts: content ? [{ type: "m.receipt", room_id: roomId, content }] : [],
    };
  }

  /** The presence of the user and of everyone sharing a room with them; their own always (offline when never set). */
  private async presenceOfSharing(userId: string, upper: StreamPositions): Promise<PresenceEvent[]> {
    const events = await this.d.presence.presenceFor(userId, 0, upper.presence, () => this.d.reads.usersSharingRoomsWith(userId));
    if (!events.some((e) => e.sender === userId)) events.push({ type: "m.presence", sender: userId, content: { presence: "offline" } });
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
