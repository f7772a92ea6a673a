// GET /sync: the initial snapshot, then deltas, each up to a safe upper bound of every stream.
// https://spec.matrix.org/latest/client-server-api/#syncing
// https://spec.matrix.org/latest/client-server-api/#lazy-loading-room-members
// https://spec.matrix.org/latest/client-server-api/#e2e-extensions-to-sync
//
// One response covers `(since, upper]` of every stream, where `upper` is read BEFORE anything is
// queried (README.md, "Streams never skip"): what commits meanwhile comes in the next response.
// When nothing visible happened, the request waits on the notifier (keyed by the user and their
// rooms) and computes again from the bound it just covered.
import type { Logger } from "pino";
import type { Database } from "../../schema/db.ts";
import { dictionary } from "../../federation/protocol/dictionary.ts";
import { type StateMap, splitStateMapKey } from "../../federation/protocol/room-state.ts";
import type { E2ee } from "../e2ee/e2ee.ts";
import type { Presence, PresenceEvent, PresenceState } from "../ephemeral/presence.ts";
import type { ReceiptContent, Receipts } from "../ephemeral/receipts.ts";
import type { Typing } from "../ephemeral/typing.ts";
import { MatrixError, invalidParam } from "../http/errors.ts";
import { parseJsonFromOthers } from "../http/safe-json.ts";
import type { Requester } from "../http/route.ts";
import type { ClientEvent, EventStore, StoredEvent } from "../rooms/event-store.ts";
import { formatToken, pointBefore, streamToken } from "../rooms/pagination.ts";
import type { EventTypeFilter, RoomMembership, SyncReads } from "../rooms/sync-reads.ts";
import type { HistoryVisibility } from "../rooms/visibility.ts";
import { type AccountDataChange, PUSH_RULES_TYPE, type UserData } from "../userdata/userdata.ts";
import { Batcher, SharedReads } from "./batch.ts";
import { RecentEvents } from "./recent-events.ts";
import type { DeviceListChanges } from "./device-list-changes.ts";
import {
  type Filter,
  type RoomEventFilter,
  filterSchema,
  passesFilter,
  pickEventFields,
  roomAllowed,
  timelineLimit,
} from "./filter.ts";
import type { Notifier } from "./notifier.ts";
import { STREAMS, type StreamPositions, maxPositions, readStreamPositions, zeroPositions } from "./streams.ts";
import { decodeSyncToken, encodeSyncToken } from "./token.ts";
import type { PersistedEvent } from "../rooms/persister.ts";
import type { PushActions } from "./push-actions.ts";
import { type UnreadCounts, type UserUnreadCounts, addCounts } from "./unread.ts";

/** The longest a long-poll is held, whatever the client asks. */
const MAX_TIMEOUT_MS = 5 * 60_000;
/**
 * Events per room in one /events response. Beyond it the room's latest ones are sent (as a limited
 * /sync timeline would): /events is a legacy API for small deltas.
 */
const EVENT_STREAM_ROOM_LIMIT = 100;
/** To-device messages per response; the rest come in the next one. */
const TO_DEVICE_LIMIT = 100;
/**
 * A read of the stream positions serves the requests that come within this long: what it misses
 * was published after it, and the notifier wakes those requests for it at once.
 */
const POSITIONS_KEEP_MS = 50;
/**
 * A long-poll answers up to this share of its timeout early, at random: the long-polls one event
 * woke together would otherwise all time out together, and all come back together.
 */
const TIMEOUT_JITTER = 0.1;
/** The notifier topic of key-count changes (`user\0device` keys). */
const KEY_COUNTS_TOPIC = "key_counts";
/** Cached memberships (users) and key counts (devices), at most. */
const MAX_CACHED = 50_000;
/** Devices whose lazy-loaded members are remembered (to leave out redundant member events). */
const MAX_LAZY_LOAD_DEVICES = 10_000;

type JsonObject = Record<string, unknown>;

export interface SyncRequest {
  requester: Requester;
  since?: string;
  filter?: string;
  timeoutMs: number;
  fullState: boolean;
  setPresence?: PresenceState;
  /** Aborted when the client goes away. */
  signal?: AbortSignal;
}

export interface EventStreamRequest {
  requester: Requester;
  from?: string;
  /** Only this room's events. */
  roomId?: string;
  timeoutMs: number;
  signal?: AbortSignal;
}

export interface EventStreamResponse {
  chunk: ClientEvent[];
  start: string;
  end: string;
}

interface EventBatch {
  events: unknown[];
}

export interface JoinedRoomResponse {
  summary?: JsonObject;
  state: EventBatch;
  timeline: { events: ClientEvent[]; limited: boolean; prev_batch: string };
  ephemeral: EventBatch;
  account_data: EventBatch;
  unread_notifications: { notification_count: number; highlight_count: number };
  unread_thread_notifications?: Record<string, { notification_count: number; highlight_count: number }>;
}

export interface SyncResponse {
  next_batch: string;
  rooms?: {
    join?: Record<string, JoinedRoomResponse>;
    invite?: Record<string, { invite_state: EventBatch }>;
    knock?: Record<string, { knock_state: EventBatch }>;
    leave?: Record<string, { state: EventBatch; timeline: { events: ClientEvent[]; limited: boolean; prev_batch: string }; account_data: EventBatch }>;
  };
  presence?: { events: PresenceEvent[] };
  account_data?: EventBatch;
  to_device?: { events: unknown[] };
  device_lists?: { changed: string[]; left: string[] };
  device_one_time_keys_count: Record<string, number>;
  device_unused_fallback_key_types: string[];
}

export interface SyncDeps {
  db: Database;
  notifier: Notifier;
  reads: SyncReads;
  eventStore: EventStore;
  visibility: HistoryVisibility;
  userData: UserData;
  e2ee: E2ee;
  typing: Typing;
  receipts: Receipts;
  presence: Presence;
  unread: UnreadCounts;
  pushActions: PushActions;
  deviceListChanges: DeviceListChanges;
  logger: Logger;
}

/** One sync being computed: who asks, with which filter, from where. */
interface Pass {
  userId: string;
  deviceId: string;
  filter: Filter;
  fullState: boolean;
  /** No `since`: everything is new. */
  initial: boolean;
  from: StreamPositions;
  upper: StreamPositions;
  /** The users this user ignores (`m.ignored_user_list`): their events and invites are left out. */
  ignored?: ReadonlySet<string>;
}

interface RoomTimeline {
  events: StoredEvent[];
  limited: boolean;
  /** The events that have events relating to them: only those need bundled aggregations. */
  withRelations: Set<string>;
}

/** The broadcast (to every process) that devices were deleted: their long-polls end. */
export const DEVICES_DELETED = "devices_deleted";

interface DeviceWatch {
  signal: AbortSignal;
  /** The device was deleted while the request waited. */
  deleted: boolean;
  end(): void;
  done(): void;
}

function loggedOut(): MatrixError {
  return new MatrixError(401, "M_UNKNOWN_TOKEN", "The access token was logged out while the request waited", { soft_logout: false });
}

export class Sync {
  private readonly filters = new Map<string, Filter>();
  /** Per device (`user\0device`): per room, the member events already sent under lazy loading. */
  private readonly lazyLoaded = new Map<string, Map<string, Set<string>>>();
  /**
   * Per user, their ignored users as read at an account-data stream position: still good while
   * the stream has not moved past it (positions are global, so this holds across processes).
   */
  private readonly ignoredCache = new Map<string, { position: number; users: ReadonlySet<string> }>();
  /** Per device: the to-device position already acknowledged (deleted up to). */
  private readonly toDeviceAcked = new Map<string, number>();
  // Reads that the long-polls woken by one change make all at once: batched into one query each.
  private readonly memberships: Batcher<string, RoomMembership[]>;
  private readonly unreadCounts: Batcher<string, UserUnreadCounts>;
  private readonly keyCounts: Batcher<string, { oneTimeKeyCounts: Record<string, number>; unusedFallbackKeyTypes: string[] }>;
  private readonly timelines = new SharedReads<RoomTimeline>(2_000);
  /** Recent events of busy rooms (what woken long-polls want); fed by the persist path. */
  readonly recent = new RecentEvents();
  /** Stream positions read by requests in flight or just before; shared (see safeUpperBound). */
  private readonly positionReads = new SharedReads<StreamPositions>(POSITIONS_KEEP_MS);

  /**
   * Cached per user (memberships) and per device (key counts), dropped when they change: every
   * membership change of a local user is published to the user (in every process), and key-count
   * changes are broadcast. A read that overlapped a change is used but not cached.
   */
  private readonly membershipCache = new Map<string, RoomMembership[]>();
  private readonly keyCountCache = new Map<string, { oneTimeKeyCounts: Record<string, number>; unusedFallbackKeyTypes: string[] }>();
  /**
   * Unread counts per user, read at a room-event position (`asOf`) and kept current with what each
   * committed local event did (`committed`); dropped by the user's receipts, by their own sends
   * (which mark a thread read) and by anything another process persisted.
   */
  private readonly unreadCache = new Map<string, UserUnreadCounts>();
  /**
   * The long-polls waiting, per device (`user\0device`): a device deleted (its token logged out,
   * in this process or another) ends them at once with 401, rather than answering a revoked token
   * when the next event comes.
   */
  private readonly longPolls = new Map<string, Set<DeviceWatch>>();
  private pushActionsForgotten = 0;
  private membershipGeneration = 0;
  private keyCountGeneration = 0;
  private unreadGeneration = 0;

  constructor(private readonly d: SyncDeps) {
    d.notifier.onBroadcast(DEVICES_DELETED, (data) => {
      const { userId, deviceIds } = (data ?? {}) as { userId?: unknown; deviceIds?: unknown };
      if (typeof userId !== "string" || !Array.isArray(deviceIds)) return;
      for (const deviceId of deviceIds) {
        for (const watch of this.longPolls.get(`${userId}\u0000${String(deviceId)}`) ?? []) watch.end();
      }
    });
    d.notifier.onChange("events", (change) => {
      // Another process's events are not in memory here, nor what they did to unread counts.
      if (change.everyone) this.recent.clear();
      else if (change.remote) this.recent.dropRooms(change.rooms ?? []);
      if (change.everyone || change.remote) {
        this.unreadGeneration++;
        this.unreadCache.clear();
      }
      if (!change.users?.length && !change.everyone) return;
      this.membershipGeneration++;
      if (change.everyone) this.membershipCache.clear();
      for (const u of change.users ?? []) this.membershipCache.delete(u);
    });
    d.notifier.onChange("receipts", (change) => {
      this.unreadGeneration++;
      if (change.everyone) this.unreadCache.clear();
      for (const u of change.users ?? []) this.unreadCache.delete(u);
    });
    d.notifier.onBroadcast(KEY_COUNTS_TOPIC, (data) => {
      this.keyCountGeneration++;
      for (const key of data as string[]) this.keyCountCache.delete(key);
    });
    d.e2ee.deviceKeys.onKeyCountsChanged((devices) => {
      d.notifier.broadcast(KEY_COUNTS_TOPIC, devices.map((x) => `${x.userId}\u0000${x.deviceId}`));
    });
    this.memberships = new Batcher((userIds) => d.reads.membershipsOf(userIds), () => []);
    this.unreadCounts = new Batcher((userIds) => d.unread.countsOf(userIds), () => ({ asOf: 0, rooms: new Map() }));
    this.keyCounts = new Batcher(
      (keys) => d.e2ee.deviceKeys.keyCountsOf(keys.map((k) => ({ userId: k.split("\u0000")[0]!, deviceId: k.split("\u0000")[1]! }))),
      () => ({ oneTimeKeyCounts: { signed_curve25519: 0 }, unusedFallbackKeyTypes: [] }),
    );
  }

  /**
   * Events this process committed, before their change is published: the recent-events cache gets
   * them, and cached unread counts get what they did (from their push actions).
   */
  committed(events: readonly PersistedEvent[]): void {
    if (events.every((e) => e.stored)) this.recent.add(events.map((e) => e.stored!));
    else this.recent.dropRooms([...new Set(events.map((e) => e.roomId))]);
    this.unreadGeneration++;
    if (this.d.pushActions.forgotten !== this.pushActionsForgotten) {
      this.pushActionsForgotten = this.d.pushActions.forgotten;
      this.unreadCache.clear();
    }
    for (const e of events) {
      const of = this.d.pushActions.take(e.eventId);
      if (!of) continue; // a room with no local member: nobody's counts change
      for (const a of of.notified) {
        const entry = this.unreadCache.get(a.userId);
        if (entry && e.streamOrdering > entry.asOf) addCounts(entry.rooms, e.roomId, a.threadId, 1, a.highlight ? 1 : 0);
      }
      if (of.reader) this.unreadCache.delete(of.reader.userId);
    }
  }

  /** Starts listening to other processes and reads the streams' positions. */
  async start(): Promise<void> {
    const positions = await this.d.notifier.start(() => readStreamPositions(this.d.db));
    this.d.typing.start(positions.typing);
  }

  /** Shutdown: every waiting long-poll answers at once. */
  async close(): Promise<void> {
    await this.d.notifier.close();
    this.d.typing.stop();
  }

  async sync(req: SyncRequest): Promise<SyncResponse> {
    const { userId, deviceId } = req.requester;
    const filter = await this.resolveFilter(userId, req.filter);
    const since = req.since ? decodeSyncToken(req.since) : undefined;
    const presenceDone = await this.d.presence.syncStarted(userId, req.setPresence);
    try {
      if (since) await this.acknowledgeToDevice(userId, deviceId, since.to_device);
      const deviceKey = `${userId}\u0000${deviceId}`;
      if (!since || req.fullState) this.lazyLoaded.delete(deviceKey);

      // A token is itself a safe bound (it was one when handed out): never go back behind it.
      let upper = since ? maxPositions(await this.safeUpperBound(), since) : await this.safeUpperBound();
      const pass: Pass = { userId, deviceId, filter, fullState: req.fullState, initial: !since, from: since ?? zeroPositions(), upper };
      const started = performance.now();
      let wakes = 0;
      let { response, empty, rooms } = await this.compute(pass);
      // "full_state ... the timeout parameter will be ignored and the query will return immediately"
      const timeout = Math.min(Math.max(req.timeoutMs, 0), MAX_TIMEOUT_MS);
      const deadline = performance.now() + timeout * (1 - TIMEOUT_JITTER * Math.random());
      // Only a request that will wait is watched: most syncs answer at once.
      const watch = empty && since && !req.fullState && timeout > 0 ? this.watchDevice(deviceKey, req.signal) : undefined;
      try {
        while (watch) {
          const left = deadline - performance.now();
          if (left <= 0) break;
          const woken = await this.d.notifier.wait({ userId, rooms, after: pass.upper, timeoutMs: left, signal: watch.signal });
          if (watch.deleted) throw loggedOut();
          if (!woken) break;
          // Nothing visible happened up to the bound just covered: carry on from there.
          upper = maxPositions(pass.upper, this.d.notifier.positions());
          pass.from = pass.upper;
          pass.upper = upper;
          wakes++;
          ({ response, empty, rooms } = await this.compute(pass));
          if (!empty) break;
        }
      } finally {
        watch?.done();
      }
      // Why a client sees what it sees (or waits): what it asked from, what it got, how long it waited.
      this.d.logger.debug(
        { user: userId, device: deviceId, initial: !since, since: req.since, next: response.next_batch, empty, rooms: rooms.length, wakes, ms: Math.round(performance.now() - started) },
        "sync answered",
      );
      return response;
    } finally {
      presenceDone();
    }
  }

  /**
   * The deprecated `GET /events`: the room events of the user's rooms past `from`, waiting up to
   * `timeoutMs` when there are none. Its tokens are sync tokens, so `end` serves as a /sync `since`
   * and a `next_batch` as `from`. Only the `events` position moves: the other streams (account data,
   * to-device, ...) are not delivered here, so a /sync from `end` still delivers them. Without
   * `from` it answers at once with the current position (what clients use to start streaming).
   */
  async eventStream(req: EventStreamRequest): Promise<EventStreamResponse> {
    // A client streaming events is as present as one that syncs (Synapse marks it online too).
    const presenceDone = await this.d.presence.syncStarted(req.requester.userId, undefined);
    try {
      return await this.streamEvents(req);
    } finally {
      presenceDone();
    }
  }

  /** How many long-polls of this device are in progress (tests, to act while one waits). */
  longPollsOf(userId: string, deviceId: string): number {
    return this.longPolls.get(`${userId}\u0000${deviceId}`)?.size ?? 0;
  }

  /** A long-poll of this device: its signal aborts when the request goes away or the device is deleted. */
  private watchDevice(deviceKey: string, requestSignal: AbortSignal | undefined): DeviceWatch {
    const controller = new AbortController();
    const onRequestGone = () => controller.abort();
    requestSignal?.addEventListener("abort", onRequestGone, { once: true });
    if (requestSignal?.aborted) controller.abort();
    const watches = this.longPolls;
    const watch: DeviceWatch = {
      signal: controller.signal,
      deleted: false,
      end() {
        watch.deleted = true;
        controller.abort();
      },
      done() {
        requestSignal?.removeEventListener("abort", onRequestGone);
        const set = watches.get(deviceKey);
        set?.delete(watch);
        if (set?.size === 0) watches.delete(deviceKey);
      },
    };
    let set = watches.get(deviceKey);
    if (!set) watches.set(deviceKey, (set = new Set()));
    set.add(watch);
    return watch;
  }

  private async streamEvents(req: EventStreamRequest): Promise<EventStreamResponse> {
    const { userId, deviceId } = req.requester;
    if (req.from === undefined || req.from === "") {
      const now = encodeSyncToken(await this.safeUpperBound());
      return { chunk: [], start: now, end: now };
    }
    let from: StreamPositions;
    try {
      from = decodeSyncToken(req.from);
    } catch {
      throw invalidParam("from: not an event stream token of this server");
    }
    const timeout = Math.min(Math.max(req.timeoutMs, 0), MAX_TIMEOUT_MS);
    const deadline = performance.now() + timeout * (1 - TIMEOUT_JITTER * Math.random());
    let after = from.events;
    let upper = maxPositions(await this.safeUpperBound(), from);
    for (;;) {
      const { chunk, rooms, bound } = await this.eventsBetween(userId, deviceId, req.roomId, after, upper.events);
      upper.events = Math.max(upper.events, bound);
      const left = deadline - performance.now();
      if (chunk.length || left <= 0) {
        return { chunk, start: req.from, end: encodeSyncToken({ ...from, events: upper.events }) };
      }
      const watch = this.watchDevice(`${userId}\u0000${deviceId}`, req.signal);
      let woken: boolean;
      try {
        woken = await this.d.notifier.wait({ userId, rooms, after: upper, timeoutMs: left, signal: watch.signal });
      } finally {
        watch.done();
      }
      if (watch.deleted) throw loggedOut();
      if (!woken) return { chunk, start: req.from, end: encodeSyncToken({ ...from, events: upper.events }) };
      after = upper.events;
      upper = maxPositions(upper, this.d.notifier.positions());
    }
  }

  /**
   * The events of `(after, to]` in the rooms the user is (or was, until they left in that range)
   * joined to, oldest first; `rooms`: the rooms to wait on; `bound`: a safe bound at least `to`
   * (membership rows read are committed).
   */
  private async eventsBetween(
    userId: string,
    deviceId: string,
    onlyRoom: string | undefined,
    after: number,
    to: number,
  ): Promise<{ chunk: ClientEvent[]; rooms: string[]; bound: number }> {
    const memberships = (await this.memberships.get(userId)).filter((m) => onlyRoom === undefined || m.roomId === onlyRoom);
    let bound = to;
    for (const m of memberships) if (m.streamOrdering > bound) bound = m.streamOrdering;
    // A room left (or banned from) within the range gives its events up to the leave, the leave included.
    const rooms = memberships.filter((m) => m.membership === "join" || ((m.membership === "leave" || m.membership === "ban") && m.streamOrdering > after));
    const perRoom = await Promise.all(
      rooms.map(async (m) => {
        const until = m.membership === "join" ? bound : m.streamOrdering;
        if (until <= after) return [];
        const { events } = await this.timeline(m.roomId, after, until, EVENT_STREAM_ROOM_LIMIT, undefined);
        // Events from before the user's join are subject to the room's history visibility.
        const before = events.filter((e) => e.streamOrdering! < m.streamOrdering);
        if (m.membership !== "join" || before.length === 0) return events;
        const visible = new Set((await this.d.visibility.filter({ userId, joinedUntil: Number.POSITIVE_INFINITY }, before)).map((e) => e.eventId));
        return events.filter((e) => e.streamOrdering! >= m.streamOrdering || visible.has(e.eventId));
      }),
    );
    const events = perRoom.flat().sort((a, b) => a.streamOrdering! - b.streamOrdering!);
    const chunk = await this.d.eventStore.format(events, { userId, deviceId }, { aggregations: false });
    return { chunk, rooms: rooms.filter((m) => m.membership === "join").map((m) => m.roomId), bound };
  }

  /** `generation` counts the cache's invalidations: a read that overlapped one is used but not kept. */
  private async cached<V>(cache: Map<string, V>, generation: () => number, key: string, read: () => Promise<V>): Promise<V> {
    const hit = cache.get(key);
    if (hit !== undefined) return hit;
    const before = generation();
    const value = await read();
    if (before === generation()) {
      if (cache.size >= MAX_CACHED) cache.clear();
      cache.set(key, value);
    }
    return value;
  }

  /**
   * Every stream's position, at or below which everything is committed: the database's rows, with
   * typing (in memory) as far as this process has applied it.
   */
  private async safeUpperBound(): Promise<StreamPositions> {
    // A read in flight (or a few milliseconds old) gives a bound that is safe, if a little behind:
    // what it misses was published after it began, and the notifier wakes the request for that.
    const stored = await this.positionReads.get("", () => readStreamPositions(this.d.db));
    const known = this.d.notifier.positions();
    this.d.notifier.observe({ ...stored, typing: known.typing });
    return { ...maxPositions(stored, known), typing: known.typing };
  }

  // ---- Filters ---------------------------------------------------------------------------------------

  /** A filter ID, or inline JSON (it starts with `{`); none is the empty filter. */
  private async resolveFilter(userId: string, param: string | undefined): Promise<Filter> {
    if (param === undefined || param === "") return {};
    const key = `${userId}\u0000${param}`;
    const cached = this.filters.get(key);
    if (cached) return cached;
    let raw: unknown;
    if (param.trimStart().startsWith("{")) {
      raw = parseJsonFromOthers(param, { what: "filter" });
    } else {
      try {
        raw = await this.d.userData.getFilter(userId, param);
      } catch (err) {
        if (err instanceof MatrixError && err.status === 404) throw invalidParam(`filter: no such filter: ${param.slice(0, 40)}`);
        throw err;
      }
    }
    const parsed = filterSchema.safeParse(raw);
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      throw new MatrixError(400, "M_BAD_JSON", `Invalid filter: ${issue?.path.join(".") || "filter"}: ${issue?.message ?? "invalid"}`);
    }
    if (this.filters.size > 10_000) this.filters.clear();
    this.filters.set(key, parsed.data);
    return parsed.data;
  }

  // ---- One response ------------------------------------------------------------------------------------

  /**
   * The users `userId` ignores. "Following an update of the m.ignored_user_list, the sync API for
   * all clients should immediately start ignoring (or un-ignoring) the user."
   */
  private async ignoredUsers(userId: string, position: number): Promise<ReadonlySet<string>> {
    const cached = this.ignoredCache.get(userId);
    if (cached && cached.position >= position) return cached.users;
    const users = await this.d.userData.ignoredUsers(userId);
    if (this.ignoredCache.size >= 50_000) this.ignoredCache.clear();
    this.ignoredCache.set(userId, { position, users });
    return users;
  }

  private async compute(pass: Pass): Promise<{ response: SyncResponse; empty: boolean; rooms: string[] }> {
    const { userId, deviceId, filter, from } = pass;
    pass.ignored = await this.ignoredUsers(userId, pass.upper.account_data);
    // Cached memberships are complete only as far as this process has heard of every room event.
    const readMemberships = () => this.memberships.get(userId);
    const all = pass.upper.events <= this.d.notifier.coveredEvents() ? await this.cached(this.membershipCache, () => this.membershipGeneration, userId, readMemberships) : await readMemberships();
    const memberships = all.filter((m) => roomAllowed(filter.room, m.roomId));
    // Unread counts change with room events and receipts: read them alongside (one query for all
    // the requests a change woke).
    const readUnread = () =>
      pass.upper.events <= this.d.notifier.coveredEvents()
        ? this.cached(this.unreadCache, () => this.unreadGeneration, userId, () => this.unreadCounts.get(userId))
        : this.unreadCounts.get(userId);
    const unreadRead = pass.initial || pass.upper.events > from.events || pass.upper.receipts > from.receipts ? readUnread() : undefined;
    unreadRead?.catch(() => {}); // awaited below when a room needs it
    // A membership row read now is committed, and so is everything below it: a safe bound too.
    for (const m of memberships) if (m.streamOrdering > pass.upper.events) pass.upper.events = m.streamOrdering;
    const { upper } = pass;
    const moved = (s: (typeof STREAMS)[number]) => pass.initial || upper[s] > from[s];

    const joined = memberships.filter((m) => m.membership === "join");
    // Rooms new to this sync: every room on an initial sync, else those the user was not joined to
    // at the token. A membership row changed since the token may be a display-name or avatar change
    // of a member all along, which is no join (it must not resend the room's whole state).
    const newlyJoined = new Set<string>();
    await Promise.all(
      joined.map(async (m) => {
        if (pass.initial || (m.streamOrdering > from.events && !(await this.wasJoinedAt(m.eventId, from.events)))) newlyJoined.add(m.roomId);
      }),
    );
    const changedSince = (m: RoomMembership) => pass.initial || m.streamOrdering > from.events;

    const [accountData, presence, toDevice, keyCounts] = await Promise.all([
      moved("account_data") ? this.d.userData.accountDataSince(userId, pass.initial ? 0 : from.account_data, upper.account_data) : ([] as AccountDataChange[]),
      this.presenceFor(pass, moved("presence"), pass.initial ? [] : [...newlyJoined]),
      moved("to_device") ? this.d.e2ee.toDevice.fetchToDevice(userId, deviceId, from.to_device, TO_DEVICE_LIMIT) : undefined,
      this.cached(this.keyCountCache, () => this.keyCountGeneration, `${userId}\u0000${deviceId}`, () => this.keyCounts.get(`${userId}\u0000${deviceId}`)),
    ]);
    // An initial sync has the push rules even if the user never changed them (the server's
    // defaults): clients read them from here, not from /pushrules.
    if (pass.initial && !accountData.some((a) => a.roomId === "" && a.type === PUSH_RULES_TYPE)) {
      accountData.push({ roomId: "", type: PUSH_RULES_TYPE, content: await this.d.userData.getPushRules(userId), streamId: 0 });
    }
    // Room account data of rooms joined since the token: all of it, not only what changed.
    const newlyJoinedIds = pass.initial ? new Set<string>() : newlyJoined;
    const rejoinedData =
      newlyJoinedIds.size > 0 ? (await this.d.userData.accountDataSince(userId, 0, upper.account_data)).filter((a) => newlyJoinedIds.has(a.roomId)) : [];

    const roomAccountData = new Map<string, JsonObject[]>();
    const globalAccountData: JsonObject[] = [];
    const seen = new Set<string>();
    for (const a of [...accountData, ...rejoinedData]) {
      const k = `${a.roomId}\u0000${a.type}`;
      if (seen.has(k)) continue;
      seen.add(k);
      const event = { type: a.type, content: a.content };
      if (a.roomId === "") {
        if (passesFilter(filter.account_data, event)) globalAccountData.push(event);
      } else if (passesFilter(filter.room?.account_data, { ...event, room_id: a.roomId })) {
        let list = roomAccountData.get(a.roomId);
        if (!list) roomAccountData.set(a.roomId, (list = []));
        list.push(event);
      }
    }

    // Ephemeral data of the joined rooms; rooms new to this sync get all of theirs.
    const joinedIds = joined.map((m) => m.roomId);
    const fresh = newlyJoined;
    const known = joinedIds.filter((r) => !fresh.has(r));
    const ephemeralFilter = filter.room?.ephemeral;
    const wantsEphemeral = (type: string) => passesFilter(ephemeralFilter, { type });
    const typing = new Map<string, string[]>();
    const receipts = new Map<string, ReceiptContent>();
    if (wantsEphemeral("m.typing")) {
      if (moved("typing")) for (const [r, t] of this.d.typing.typingIn(known, from.typing, upper.typing)) typing.set(r, t);
      for (const [r, t] of this.d.typing.typingIn(fresh, null, upper.typing)) typing.set(r, t);
    }
    if (wantsEphemeral("m.receipt")) {
      const [changed, all] = await Promise.all([
        moved("receipts") ? this.d.receipts.receiptsIn(known, from.receipts, upper.receipts, userId) : new Map<string, ReceiptContent>(),
        this.d.receipts.receiptsIn([...fresh], 0, upper.receipts, userId),
      ]);
      for (const [r, c] of [...changed, ...all]) receipts.set(r, c);
    }

    // Keyed by room IDs and thread roots (an event ID any sender may write in m.relates_to): no prototypes.
    const joinResponses = dictionary<JoinedRoomResponse>();
    const joinedResults = await Promise.all(
      joined.map((m) => this.joinedRoom(pass, m, newlyJoined.has(m.roomId), {
        typing: typing.get(m.roomId),
        receipts: receipts.get(m.roomId),
        accountData: roomAccountData.get(m.roomId) ?? [],
      })),
    );
    const included = joinedResults.filter((r): r is NonNullable<typeof r> => r !== undefined);
    const unread = included.length ? (await (unreadRead ?? readUnread())).rooms : undefined;
    const threadCounts = filter.room?.timeline?.unread_thread_notifications === true;
    // Copies: cached counts keep changing.
    const copy = (c: { notification_count: number; highlight_count: number } | undefined) =>
      c ? { notification_count: c.notification_count, highlight_count: c.highlight_count } : { notification_count: 0, highlight_count: 0 };
    for (const r of included) {
      const counts = unread?.get(r.roomId);
      if (threadCounts) {
        r.response.unread_notifications = copy(counts?.threads.get("main"));
        const threads: JoinedRoomResponse["unread_thread_notifications"] = dictionary();
        for (const [thread, c] of counts?.threads ?? []) if (thread !== "main" && c.notification_count > 0) threads[thread] = copy(c);
        if (Object.keys(threads).length) r.response.unread_thread_notifications = threads;
      } else {
        r.response.unread_notifications = copy(counts?.all);
      }
      joinResponses[r.roomId] = r.response;
    }

    // Invites and knocks: the stripped state of the room and the membership event itself.
    const inviteResponses: NonNullable<NonNullable<SyncResponse["rooms"]>["invite"]> = dictionary();
    const knockResponses: NonNullable<NonNullable<SyncResponse["rooms"]>["knock"]> = dictionary();
    for (const m of memberships) {
      if ((m.membership !== "invite" && m.membership !== "knock") || !changedSince(m)) continue;
      const events = await this.d.reads.inviteState(m.roomId, m.eventId);
      // "Servers must not send room invites from ignored users to clients."
      const own = events.find((e) => e.type === "m.room.member" && e.state_key === userId);
      if (m.membership === "invite" && own && pass.ignored.has(own.sender)) continue;
      if (m.membership === "invite") inviteResponses[m.roomId] = { invite_state: { events } };
      else knockResponses[m.roomId] = { knock_state: { events } };
    }

    const leaveResponses: NonNullable<NonNullable<SyncResponse["rooms"]>["leave"]> = dictionary();
    for (const m of memberships) {
      if (m.membership !== "leave" && m.membership !== "ban") continue;
      if (pass.initial || pass.fullState ? filter.room?.include_leave !== true : !changedSince(m)) continue;
      leaveResponses[m.roomId] = await this.leftRoom(pass, m, roomAccountData.get(m.roomId) ?? []);
    }

    const deviceLists = pass.initial ? undefined : await this.deviceListChanges(pass, joined, memberships, joinedResults);

    const response: SyncResponse = {
      next_batch: "",
      device_one_time_keys_count: keyCounts.oneTimeKeyCounts,
      device_unused_fallback_key_types: keyCounts.unusedFallbackKeyTypes,
    };
    const rooms: NonNullable<SyncResponse["rooms"]> = {};
    if (Object.keys(joinResponses).length) rooms.join = joinResponses;
    if (Object.keys(inviteResponses).length) rooms.invite = inviteResponses;
    if (Object.keys(knockResponses).length) rooms.knock = knockResponses;
    if (Object.keys(leaveResponses).length) rooms.leave = leaveResponses;
    if (Object.keys(rooms).length) response.rooms = rooms;
    // The presence of users who just joined a room the user was already in, whether or not it
    // changed since the token (Synapse sends it too: "Existing members see new member's presence").
    const joiners = new Set(included.flatMap((r) => r.joiners).filter((u) => !presence.some((e) => e.sender === u)));
    if (!pass.initial && joiners.size > 0 && passesFilter(filter.presence, { type: "m.presence" })) {
      for (const e of await this.d.presence.presenceOf([...joiners], upper.presence, true)) if (passesFilter(filter.presence, e)) presence.push(e);
    }
    if (presence.length) response.presence = { events: presence };
    if (globalAccountData.length) response.account_data = { events: globalAccountData };
    const next = { ...upper };
    if (toDevice) {
      if (toDevice.events.length) response.to_device = { events: toDevice.events };
      // A full batch may leave messages behind: the next sync starts after the last one sent. A
      // message past `upper` was committed (we read it), so its position is a safe bound too.
      next.to_device = toDevice.events.length >= TO_DEVICE_LIMIT ? toDevice.position : Math.max(upper.to_device, toDevice.position);
    }
    if (deviceLists && (deviceLists.changed.length || deviceLists.left.length)) response.device_lists = deviceLists;
    response.next_batch = encodeSyncToken(next);

    const empty = !response.rooms && !response.presence && !response.account_data && !response.to_device && !response.device_lists;
    return { response, empty, rooms: joinedIds };
  }

  /**
   * Whether the user was joined at stream position `at`, walking back from their current member
   * event through the member events each replaced, down to the one in force at `at`. Any other
   * membership on the way means they left and came back since.
   */
  private async wasJoinedAt(memberEventId: string, at: number): Promise<boolean> {
    let eventId: string | null | undefined = memberEventId;
    for (let hops = 0; eventId && hops < 50; hops++) {
      const event: StoredEvent | undefined = (await this.d.reads.getEvents([eventId])).get(eventId);
      if (!event || event.streamOrdering === null || event.streamOrdering === undefined) return false;
      const joined = (event.pdu.content as JsonObject | undefined)?.membership === "join";
      if (event.streamOrdering <= at || !joined) return event.streamOrdering <= at && joined;
      eventId = event.replacesState;
    }
    return false;
  }

  /**
   * Presence changes since the token of the users sharing a room with the user, and the presence
   * of everyone in the rooms joined since it, whether it changed or not (the user had no reason to
   * know it before; Synapse does the same).
   */
  private async presenceFor(pass: Pass, moved: boolean, newlyJoinedRooms: readonly string[]): Promise<PresenceEvent[]> {
    const sharing = () => this.d.reads.usersSharingRoomsWith(pass.userId);
    const [changes, newcomers] = await Promise.all([
      moved ? this.d.presence.presenceFor(pass.userId, pass.initial ? 0 : pass.from.presence, pass.upper.presence, sharing) : [],
      newlyJoinedRooms.length
        ? Promise.all(newlyJoinedRooms.map((r) => this.d.reads.joinedMembers(r))).then((lists) =>
            this.d.presence.presenceOf([...new Set(lists.flat())].filter((u) => u !== pass.userId), pass.upper.presence, true),
          )
        : [],
    ]);
    const seen = new Set(changes.map((e) => e.sender));
    const events = [...changes, ...newcomers.filter((e) => !seen.has(e.sender))];
    return events.filter((e) => passesFilter(pass.filter.presence, e));
  }

  private async acknowledgeToDevice(userId: string, deviceId: string, upTo: number): Promise<void> {
    const key = `${userId}\u0000${deviceId}`;
    if (upTo <= 0 || (this.toDeviceAcked.get(key) ?? 0) >= upTo) return;
    await this.d.e2ee.toDevice.ackToDevice(userId, deviceId, upTo);
    if (this.toDeviceAcked.size > 50_000) this.toDeviceAcked.clear();
    this.toDeviceAcked.set(key, upTo);
  }

  // ---- Rooms -------------------------------------------------------------------------------------------

  /** A room's timeline events, shared between the requests that ask for the same range at once. */
  /**
   * A room's timeline events in `(from, to]`: from memory when this process has them all (recent
   * events), else one read shared between the requests that ask for the same range at once.
   */
  private timeline(roomId: string, from: number, to: number, limit: number, filter: RoomEventFilter | undefined): Promise<RoomTimeline> {
    const typeFilter: EventTypeFilter = {
      types: filter?.types,
      notTypes: filter?.not_types,
      senders: filter?.senders,
      notSenders: filter?.not_senders,
    };
    const unfiltered = typeFilter.types === undefined && typeFilter.notTypes === undefined && typeFilter.senders === undefined && typeFilter.notSenders === undefined;
    if (to <= this.d.notifier.coveredEvents()) {
      const hit = this.recent.get(roomId, from, to, limit, unfiltered ? undefined : filter);
      if (hit) return Promise.resolve({ events: hit.events, limited: hit.limited, withRelations: relatedWithin(hit.all) });
    }
    const key = `${roomId}|${from}|${to}|${limit}|${JSON.stringify(typeFilter)}`;
    return this.timelines.get(key, async () => {
      const { events, limited } = await this.d.reads.roomEvents(roomId, from, to, limit, typeFilter);
      // A complete incremental range holds every event that relates to the events in it (a child
      // comes after its parent); otherwise ask.
      const complete = from > 0 && !limited && unfiltered;
      if (!limited && unfiltered && this.d.notifier.lastInRoom(roomId, "events") <= to) this.recent.learn(roomId, from, to, events);
      const parents = events.filter((e) => e.stateKey === undefined).map((e) => e.eventId);
      const withRelations = complete ? relatedWithin(events) : await this.d.reads.withRelations(parents);
      return { events, limited, withRelations };
    });
  }

  private async joinedRoom(
    pass: Pass,
    m: RoomMembership,
    newlyJoined: boolean,
    ephemeral: { typing?: string[]; receipts?: ReceiptContent; accountData: JsonObject[] },
  ): Promise<{ roomId: string; response: JoinedRoomResponse; joiners: string[] } | undefined> {
    const { filter, from, upper, userId } = pass;
    const roomId = m.roomId;
    const timelineFilter = filter.room?.timeline;
    const limit = timelineLimit(timelineFilter);
    const start = newlyJoined ? 0 : from.events;
    const fetched = await this.timeline(roomId, start, upper.events, limit, timelineFilter);
    let events = fetched.events;
    // A room joined since the token is limited: the client has none of its history and may page
    // back (as Synapse answers), unless the timeline reaches back to the room's creation.
    const limited = fetched.limited || (newlyJoined && !pass.initial && events[0]?.type !== "m.room.create");
    // Events from before the user's join are subject to the room's history visibility.
    const visibleOf = async (batch: StoredEvent[]) => {
      const before = batch.filter((e) => e.streamOrdering! < m.streamOrdering);
      if (before.length === 0) return batch;
      // State events still in the room's current state show whatever the visibility: the client
      // sees the room as it is (who is in it), as Synapse does (matrix-ios-sdk#341).
      const [visible, current] = await Promise.all([
        this.d.visibility.filter({ userId, joinedUntil: Number.POSITIVE_INFINITY }, before),
        this.d.reads.inCurrentState(roomId, before.filter((e) => e.stateKey !== undefined).map((e) => e.eventId)),
      ]);
      const shown = new Set(visible.map((e) => e.eventId));
      return batch.filter((e) => e.streamOrdering! >= m.streamOrdering || shown.has(e.eventId) || current.has(e.eventId));
    };
    if (events.length && events[0]!.streamOrdering! < m.streamOrdering) {
      events = await visibleOf(events);
      // A window of events hidden from the user leaves the timeline short: look further back (up
      // to five windows of three timelines, as Synapse does) for what they may see, the room's
      // current state among it.
      let oldest = fetched.events[0]!.streamOrdering!;
      for (let round = 0; fetched.limited && events.length < limit && round < 5 && oldest > start + 1; round++) {
        const more = await this.timeline(roomId, start, oldest - 1, Math.max(limit * 3, 10), timelineFilter);
        if (more.events.length === 0) break;
        oldest = more.events[0]!.streamOrdering!;
        events = [...(await visibleOf(more.events)), ...events].slice(-limit);
        if (!more.limited) break;
      }
    }
    if (timelineFilter?.contains_url !== undefined) {
      events = events.filter((e) => passesFilter({ contains_url: timelineFilter.contains_url }, { type: e.type, content: e.pdu.content }));
    }
    // Ignored users' events are left out; their state events stay ("so that parts such as the
    // room name do not appear different").
    const ignored = pass.ignored;
    if (ignored?.size) events = events.filter((e) => e.stateKey !== undefined || !ignored.has(e.sender));

    const wholeState = newlyJoined || pass.fullState;
    const isMember = (e: StoredEvent) => e.type === "m.room.member";
    // The summary's heroes also choose lazy-loaded members, so it is read before the state.
    const summary = wholeState || limited || events.some(isMember) ? await this.d.reads.summary(roomId, userId) : undefined;
    const stateEvents = (await this.stateSection(pass, roomId, events, limited, wholeState, summary?.heroes ?? [])).filter((e) =>
      passesFilter(filter.room?.state, { type: e.type, sender: e.sender, content: e.pdu.content }),
    );
    // "If this field has not changed since the last sync, it may be omitted."
    const membersChanged = wholeState || events.some(isMember) || stateEvents.some(isMember);

    const ephemeralEvents: JsonObject[] = [];
    if (ephemeral.typing) ephemeralEvents.push({ type: "m.typing", content: { user_ids: ephemeral.typing } });
    if (ephemeral.receipts) ephemeralEvents.push({ type: "m.receipt", content: ephemeral.receipts });
    const ephemeralFiltered = ephemeralEvents.filter((e) => passesFilter(filter.room?.ephemeral, { type: e.type as string, room_id: roomId }));

    if (!wholeState && events.length === 0 && stateEvents.length === 0 && ephemeralFiltered.length === 0 && ephemeral.accountData.length === 0) {
      return undefined;
    }
    const reader = { userId, deviceId: pass.deviceId };
    // Bundled aggregations only when some event has children (rarely so for new events).
    const aggregations = events.some((e) => fetched.withRelations.has(e.eventId));
    const [timelineEvents, formattedState] = await Promise.all([
      this.d.eventStore.format(events, reader, { aggregations }),
      this.d.eventStore.format(stateEvents, reader, { aggregations: false }),
    ]);
    const fields = filter.event_fields;
    const response: JoinedRoomResponse = {
      state: { events: formattedState.map((e) => pickEventFields(e, fields)) },
      timeline: {
        events: timelineEvents.map((e) => pickEventFields(e, fields)),
        limited,
        prev_batch: events.length ? formatToken(pointBefore(events[0]!)) : streamToken(upper.events),
      },
      ephemeral: { events: ephemeralFiltered },
      account_data: { events: ephemeral.accountData },
      unread_notifications: { notification_count: 0, highlight_count: 0 },
    };
    if (summary && membersChanged) {
      response.summary = {
        ...(summary.heroes.length ? { "m.heroes": summary.heroes } : {}),
        "m.joined_member_count": summary.joinedMemberCount,
        "m.invited_member_count": summary.invitedMemberCount,
      };
    }
    // Users who joined in this timeline: the syncing user may not have their presence yet.
    const joiners = events.filter((e) => e.type === "m.room.member" && e.stateKey !== userId && (e.pdu.content as JsonObject)?.membership === "join").map((e) => e.stateKey!);
    return { roomId, response, joiners };
  }

  /**
   * The state section: the whole state at the start of the timeline for a room new to this sync
   * (or with full_state); for a limited incremental timeline, what changed between the token and
   * the start of the timeline; otherwise nothing (every change is in the timeline).
   *
   * Lazy loading (`lazy_load_members` on the state filter): instead of every member, the member
   * events of the timeline's senders, the heroes and (on a join or full state) the user; those
   * already sent to this device are left out unless `include_redundant_members`. Membership changes
   * in the gap of a limited sync are always sent. Only the member events needed are read.
   */
  private async stateSection(
    pass: Pass,
    roomId: string,
    timeline: StoredEvent[],
    limited: boolean,
    wholeState: boolean,
    heroes: string[],
  ): Promise<StoredEvent[]> {
    const stateFilter = pass.filter.room?.state;
    const lazy = stateFilter?.lazy_load_members === true;
    if (!wholeState && !limited && !lazy) return [];
    const startGroup = () => (timeline.length ? Promise.resolve(timeline[0]!.stateBeforeGroup) : this.d.reads.groupAt(roomId, pass.upper.events));

    // Members the client should have (lazy loading), less those it already has.
    const sent = lazy && stateFilter.include_redundant_members !== true ? this.lazyLoadedIn(pass, roomId, wholeState) : undefined;
    const wanted = new Set<string>();
    if (lazy) {
      for (const e of timeline) wanted.add(e.sender);
      for (const h of heroes) wanted.add(h);
      if (wholeState) wanted.add(pass.userId);
      // The timeline carries its own member events.
      for (const e of timeline) if (e.type === "m.room.member") wanted.delete(e.stateKey!);
      if (sent) for (const u of sent) wanted.delete(u);
    }

    let ids: string[];
    if (wholeState) {
      const state = await this.d.reads.stateOfGroup(await startGroup(), lazy ? [...wanted] : "all");
      ids = [...state.values()];
    } else if (limited) {
      const [atStart, atSince] = await Promise.all([
        startGroup().then((g) => this.d.reads.stateOfGroup(g)),
        this.d.reads.groupAt(roomId, pass.from.events).then((g) => this.d.reads.stateOfGroup(g)),
      ]);
      const changed = new Set<string>();
      for (const [k, id] of atStart) if (atSince.get(k) !== id) changed.add(id);
      // Lazy loading: the wanted members not in the delta, from the state at the timeline's start.
      for (const [k, id] of atStart) {
        const [type, stateKey] = splitStateMapKey(k);
        if (type === "m.room.member" && wanted.has(stateKey)) changed.add(id);
      }
      ids = [...changed];
    } else {
      if (wanted.size === 0) return [];
      const state = await this.d.reads.stateOfGroup(await startGroup(), [...wanted]);
      ids = [];
      for (const [k, id] of state) if (splitStateMapKey(k)[0] === "m.room.member") ids.push(id);
    }
    const events = [...(await this.d.reads.getEvents(ids)).values()];
    if (sent) {
      for (const e of [...events, ...timeline]) if (e.type === "m.room.member") sent.add(e.stateKey!);
    }
    return events;
  }

  /** The members whose events this device already has in the room (lazy loading); reset by a join or full state. */
  private lazyLoadedIn(pass: Pass, roomId: string, reset: boolean): Set<string> {
    const deviceKey = `${pass.userId}\u0000${pass.deviceId}`;
    let rooms = this.lazyLoaded.get(deviceKey);
    if (!rooms) {
      if (this.lazyLoaded.size >= MAX_LAZY_LOAD_DEVICES) this.lazyLoaded.delete(this.lazyLoaded.keys().next().value!);
      this.lazyLoaded.set(deviceKey, (rooms = new Map()));
    }
    let sent = rooms.get(roomId);
    if (!sent || reset) rooms.set(roomId, (sent = new Set()));
    return sent;
  }

  private async leftRoom(pass: Pass, m: RoomMembership, accountData: JsonObject[]) {
    const { filter, userId } = pass;
    const limit = timelineLimit(filter.room?.timeline);
    const start = pass.initial || pass.fullState ? 0 : pass.from.events;
    const leaveEvent = (await this.d.reads.getEvents([m.eventId])).get(m.eventId);
    let events: StoredEvent[] = [];
    let limited = false;
    const prevMembership = leaveEvent?.replacesState
      ? ((await this.d.reads.getEvents([leaveEvent.replacesState])).get(leaveEvent.replacesState)?.pdu.content as JsonObject | undefined)?.membership
      : undefined;
    if (prevMembership === "join") {
      // A former member sees the timeline up to their leave (as history visibility allows).
      const fetched = await this.timeline(m.roomId, start, m.streamOrdering, limit, filter.room?.timeline);
      events = await this.d.visibility.filter({ userId, joinedUntil: m.streamOrdering + 1 }, fetched.events);
      limited = fetched.limited;
    } else if (leaveEvent && leaveEvent.streamOrdering! > start) {
      // An invite (or knock) that ended: only the event that ended it.
      events = [leaveEvent];
    }
    // A room joined and left since the token is new to the client: its state comes whole.
    const joinedSinceToken =
      !pass.initial && prevMembership === "join" && leaveEvent?.replacesState ? !(await this.wasJoinedAt(leaveEvent.replacesState, pass.from.events)) : false;
    // The state at the timeline's start; with no timeline (filtered away), the state at the leave.
    const stateGroup = events.length ? events[0]!.stateBeforeGroup : joinedSinceToken ? leaveEvent?.stateBeforeGroup : undefined;
    const state = stateGroup !== undefined && (limited || pass.initial || pass.fullState || joinedSinceToken)
      ? [...(await this.d.reads.getEvents([...(await this.d.reads.stateOfGroup(stateGroup)).values()])).values()]
      : [];
    const reader = { userId, deviceId: pass.deviceId };
    return {
      state: {
        events: await this.d.eventStore.format(
          state.filter((e) => passesFilter(filter.room?.state, { type: e.type, sender: e.sender, content: e.pdu.content })),
          reader,
          { aggregations: false },
        ),
      },
      timeline: {
        events: await this.d.eventStore.format(events, reader),
        limited,
        prev_batch: events.length ? formatToken(pointBefore(events[0]!)) : streamToken(m.streamOrdering),
      },
      account_data: { events: accountData },
    };
  }

  // ---- Device lists ------------------------------------------------------------------------------------

  /**
   * `device_lists` (device-list-changes.ts). Joined rooms whose timeline in this response is complete
   * and unfiltered, with no member event in it, had no membership change: they need no query.
   */
  private deviceListChanges(
    pass: Pass,
    joined: RoomMembership[],
    memberships: RoomMembership[],
    joinedResults: Array<{ roomId: string; response: JoinedRoomResponse } | undefined>,
  ): Promise<{ changed: string[]; left: string[] }> {
    const quiet = new Set<string>();
    if (showsEveryEvent(pass.filter.room?.timeline, pass.filter.event_fields)) {
      const timelines = new Map(joinedResults.filter((r) => r !== undefined).map((r) => [r.roomId, r.response.timeline]));
      for (const m of joined) {
        const t = timelines.get(m.roomId);
        if (!t || (!t.limited && !t.events.some((e) => e.type === "m.room.member"))) quiet.add(m.roomId);
      }
    }
    return this.d.deviceListChanges.between(pass.userId, pass.from, pass.upper, memberships, quiet);
  }
}

/**
 * Whether a timeline under this filter holds every event of its range, with its `type`: then a
 * room's membership changes are all in its (unlimited) timeline.
 */
function showsEveryEvent(filter: RoomEventFilter | undefined, eventFields: readonly string[] | undefined): boolean {
  const restricted =
    filter !== undefined &&
    (filter.types !== undefined || filter.not_types?.length || filter.senders !== undefined || filter.not_senders?.length || filter.contains_url !== undefined);
  return !restricted && (eventFields === undefined || eventFields.includes("type"));
}

/** The events of `events` that other events of `events` relate to (replies are not relations). */
function relatedWithin(events: readonly StoredEvent[]): Set<string> {
  const ids = new Set(events.map((e) => e.eventId));
  const out = new Set<string>();
  for (const e of events) {
    const relatesTo = (e.pdu.content as JsonObject | undefined)?.["m.relates_to"] as JsonObject | undefined;
    const target = relatesTo?.event_id;
    if (typeof target === "string" && relatesTo?.rel_type !== undefined && ids.has(target)) out.add(target);
  }
  return out;
}
