// The notifier: long-polling /sync requests wait here, keyed by user and room, and every write a
// user can see wakes exactly the waiting requests that can see it. No polling loops.
//
// - A write publishes a `Change` after it commits: its stream, its position, and who can see it (the
//   members of `rooms`, and `users`). Waiters registered under one of those keys are woken.
// - Several Parley processes on one PostgreSQL wake each other with LISTEN/NOTIFY on one channel.
//   Each process ignores its own notifications (it has already applied them), except changes
//   published with `publishOrdered`, which every process (this one included) applies from the
//   channel, in commit order: what in-memory streams (typing) need.
// - A change is a safe upper bound (its writer took its position as the last step of its
//   transaction, see streams.ts), so `positions` — the highest position notified per stream — is a
//   bound a woken request may use without a query.
// - A request computes its response, finds nothing, then waits: a change published in between must
//   not be lost. So the notifier remembers, per room and per user, the last position of each stream
//   that concerned it (`lastChange`), and `wait` returns at once when a key it watches moved past the
//   request's upper bound.
import { randomUUID } from "node:crypto";
import { sql } from "drizzle-orm";
import type { Logger } from "pino";
import { type OpenedDatabase, rowsOf } from "../../schema/db.ts";
import { type Queryable, STREAMS, type StreamName, type StreamPositions, maxPositions, zeroPositions } from "./streams.ts";

export const SYNC_CHANNEL = "parley_sync";
/** PostgreSQL refuses NOTIFY payloads of 8000 bytes or more. */
const MAX_PAYLOAD = 7900;
/** A gap in room-event notifications older than this is taken for a lost notification. */
const GAP_GIVEN_UP_MS = 5_000;
/** Beyond this many remembered keys, forget them all and raise the floor (see `lastChangeOf`). */
const MAX_REMEMBERED_KEYS = 200_000;
/**
 * Long-polls time out on a wheel of this many milliseconds per slot, one timer for all of them: a
 * timer per long-poll (each with its own fractional, jittered duration) cost a Timeout and a timer
 * list each. A long-poll answers up to this much after its timeout.
 */
const WHEEL_TICK_MS = 100;

export interface Change {
  stream: StreamName;
  position: number;
  /** Users who can see the change (the owner of account data or to-device messages, a member event's target). */
  users?: readonly string[];
  /** Rooms whose members can see the change. */
  rooms?: readonly string[];
  /** Stream-specific data for in-memory streams (typing), handed to the stream's handler. */
  data?: unknown;
  /** Wake every waiter (a change too large to describe in one notification). */
  everyone?: boolean;
  /** Set on changes that came from another process (their data, if any, is not in this one). */
  remote?: boolean;
  /**
   * The first position of a change that covers a range `[first, position]` (a batch of room
   * events). With it the notifier knows up to where it has heard of every change (`covered`).
   */
  first?: number;
}

export interface WaitOptions {
  userId: string;
  rooms: Iterable<string>;
  /** The upper bound of the response computed so far: wake for changes past it. */
  after: StreamPositions;
  timeoutMs: number;
  signal?: AbortSignal;
}

type ChangeHandler = (change: Change) => void;
type BroadcastHandler = (data: unknown) => void;

/**
 * What a waiting long-poll holds here: its user, its rooms (the request's own array: no per-waiter
 * copies of room IDs or keys), its slot on the timeout wheel, and how to end it.
 */
interface Waiter {
  userId: string;
  rooms: readonly string[];
  slot: number;
  end: (woken: boolean) => void;
}

const userKey = (userId: string) => `u:${userId}`;
const roomKey = (roomId: string) => `r:${roomId}`;

export class Notifier {
  /** The highest position notified per stream (and read from the database): a safe upper bound. */
  private current = zeroPositions();
  private readonly userWaiters = new Map<string, Set<Waiter>>();
  private readonly roomWaiters = new Map<string, Set<Waiter>>();
  /** The timeout wheel: slot (deadline / WHEEL_TICK_MS, rounded up) → the waiters ending then. */
  private readonly wheel = new Map<number, Set<Waiter>>();
  /** The first slot not yet expired; the wheel's one timer runs while it holds waiters. */
  private wheelCursor = 0;
  private wheelTimer: ReturnType<typeof setInterval> | undefined;
  private readonly lastChange = new Map<string, Partial<StreamPositions>>();
  /** Positions at or below which forgotten keys may have changed. */
  private floor = zeroPositions();
  private readonly handlers = new Map<StreamName, ChangeHandler[]>();
  private readonly broadcastHandlers = new Map<string, BroadcastHandler[]>();
  private readonly origin = randomUUID().slice(0, 8);
  private unlisten: (() => Promise<void>) | undefined;
  private closed = false;
  /**
   * Room events: every change at or below `upTo` has been applied here; `pending` holds the ranges
   * heard of beyond a gap (a notification from another process still on its way).
   */
  private readonly eventsCoverage = { upTo: 0, pending: [] as Array<[number, number]>, gapSince: 0 };

  constructor(
    private readonly database: OpenedDatabase,
    private readonly logger: Logger,
  ) {}

  /**
   * Starts listening to the other processes, then reads the positions to start from (so nothing
   * committed in between is missed).
   */
  async start(readPositions: () => Promise<StreamPositions>): Promise<StreamPositions> {
    if (this.database.kind === "postgres") {
      this.unlisten = await this.database.listen(SYNC_CHANNEL, (payload) => this.receive(payload));
    }
    const initial = await readPositions();
    this.current = maxPositions(this.current, initial);
    this.floor = { ...this.current };
    this.cover(0, initial.events);
    return initial;
  }

  /**
   * Up to where this process has applied every room-event change: data cached from notifications
   * (memberships) is complete up to here. Beyond it a notification is still on its way.
   */
  coveredEvents(): number {
    return this.eventsCoverage.upTo;
  }

  /** Wakes every waiting request (they answer at once) and refuses to wait from now on: shutdown. */
  async close(): Promise<void> {
    this.closed = true;
    this.wakeAll();
    await this.unlisten?.().catch(() => {});
  }

  /**
   * The handler runs for every change of the stream, from this process or another, before waiters
   * wake (in-memory streams keep their state with it; caches drop stale entries).
   */
  onChange(stream: StreamName, handler: ChangeHandler): void {
    let list = this.handlers.get(stream);
    if (!list) this.handlers.set(stream, (list = []));
    list.push(handler);
  }

  /**
   * Tells every process (this one first) something that is not a stream change: caches of derived
   * data (key counts) drop entries with it. Handlers registered with `onBroadcast` run.
   */
  broadcast(topic: string, data: unknown): void {
    this.deliver(topic, data);
    if (this.database.kind === "postgres") {
      const payload = `b|${JSON.stringify({ o: this.origin, t: topic, d: data })}`;
      if (payload.length > MAX_PAYLOAD) {
        this.logger.warn({ topic }, "a broadcast too large for NOTIFY was not sent to other processes");
        return;
      }
      void this.database.notify(SYNC_CHANNEL, payload).catch((err) => this.logger.warn({ err, topic }, "could not notify other processes"));
    }
  }

  onBroadcast(topic: string, handler: BroadcastHandler): void {
    let list = this.broadcastHandlers.get(topic);
    if (!list) this.broadcastHandlers.set(topic, (list = []));
    list.push(handler);
  }

  private deliver(topic: string, data: unknown): void {
    for (const handler of this.broadcastHandlers.get(topic) ?? []) handler(data);
  }

  /** The highest safe position known per stream. */
  positions(): StreamPositions {
    return { ...this.current };
  }

  /**
   * Raises this process's known position of `stream` to one just committed, before the change is
   * published (when the publication waits on a lookup): a request answered meanwhile covers it, as
   * its writer expects, and reads what it covers from the database.
   */
  raise(stream: StreamName, position: number): void {
    if (stream !== "events" && position > this.current[stream]) this.current[stream] = position;
  }

  /**
   * Raises the known positions with ones just read from the database. A gap in the room-event
   * notifications that lasts (a notification lost with a dropped connection) is given up on: the
   * coverage jumps to what the database says and every handler hears "everyone" (caches start over).
   */
  observe(positions: StreamPositions): void {
    this.current = maxPositions(this.current, positions);
    const coverage = this.eventsCoverage;
    if (coverage.upTo >= positions.events) {
      coverage.gapSince = 0;
    } else if (coverage.gapSince === 0) {
      coverage.gapSince = performance.now();
    } else if (performance.now() - coverage.gapSince > GAP_GIVEN_UP_MS) {
      this.logger.warn({ covered: coverage.upTo, stored: positions.events }, "room-event notifications missing; starting caches over");
      coverage.upTo = positions.events;
      coverage.pending = coverage.pending.filter(([, last]) => last > coverage.upTo);
      coverage.gapSince = 0;
      this.apply({ stream: "events", position: positions.events, everyone: true, first: positions.events });
    }
  }

  /**
   * Announces a committed change: wakes the waiters here that can see it at once, and tells the
   * other processes.
   */
  publish(change: Change): void {
    this.apply(change);
    if (this.database.kind === "postgres") {
      void this.database
        .notify(SYNC_CHANNEL, this.payload(change, true))
        .catch((err) => this.logger.warn({ err, stream: change.stream }, "could not notify other processes"));
    }
  }

  /**
   * Takes the next position of `stream` and announces the change built from it, so that every
   * process (this one included) applies the changes of the stream in position order. On PostgreSQL
   * the position and the NOTIFY are one statement: notifications are delivered in commit order,
   * and the row lock makes commit order position order. PGlite has one process and one connection,
   * so the statements already run in order.
   */
  async publishOrdered(q: Queryable, stream: StreamName, build: (position: number) => Omit<Change, "position" | "stream">): Promise<number> {
    // The change's description does not depend on the position: build it once with a placeholder.
    const body = build(0);
    if (this.database.kind !== "postgres") {
      const rows = rowsOf<{ position: string | number }>(
        await q.execute(sql`insert into stream_positions (stream, position) values (${stream}, 1)
          on conflict (stream) do update set position = stream_positions.position + 1 returning position`),
      );
      const position = Number(rows[0]!.position);
      this.apply({ ...body, stream, position });
      return position;
    }
    const json = this.payload({ ...body, stream, position: 0 }, false);
    const rows = rowsOf<{ position: string | number }>(
      await q.execute(sql`with p as (
          insert into stream_positions (stream, position) values (${stream}, 1)
          on conflict (stream) do update set position = stream_positions.position + 1 returning position)
        select position, pg_notify(${SYNC_CHANNEL}, position::text || '|' || ${json}) from p`),
    );
    return Number(rows[0]!.position);
  }

  /**
   * Waits until a change that `userId` (a member of `rooms`) can see moves past `after`, the
   * timeout passes, the request goes away, or the server shuts down. Returns whether it was woken
   * by a change.
   */
  wait(options: WaitOptions): Promise<boolean> {
    if (this.closed || options.timeoutMs <= 0 || options.signal?.aborted) return Promise.resolve(false);
    const { userId, signal } = options;
    const rooms = Array.isArray(options.rooms) ? (options.rooms as readonly string[]) : [...options.rooms];
    if (this.changedSince(userKey(userId), options.after)) return Promise.resolve(true);
    for (const r of rooms) if (this.changedSince(roomKey(r), options.after)) return Promise.resolve(true);
    return new Promise<boolean>((resolve) => {
      const onAbort = () => waiter.end(false);
      const waiter: Waiter = {
        userId,
        rooms,
        slot: Math.ceil((performance.now() + options.timeoutMs) / WHEEL_TICK_MS),
        end: (woken) => {
          this.remove(waiter);
          signal?.removeEventListener("abort", onAbort);
          resolve(woken && !this.closed);
        },
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      this.add(waiter);
    });
  }

  private add(waiter: Waiter): void {
    addTo(this.userWaiters, waiter.userId, waiter);
    for (const r of waiter.rooms) addTo(this.roomWaiters, r, waiter);
    if (!this.wheelTimer) {
      this.wheelCursor = Math.floor(performance.now() / WHEEL_TICK_MS);
      this.wheelTimer = setInterval(() => this.turnWheel(), WHEEL_TICK_MS);
      this.wheelTimer.unref();
    }
    addTo(this.wheel, Math.max(waiter.slot, this.wheelCursor), waiter);
  }

  /** Idempotent: a waiter ended twice (woken, then its abort) is removed once. */
  private remove(waiter: Waiter): void {
    removeFrom(this.userWaiters, waiter.userId, waiter);
    for (const r of waiter.rooms) removeFrom(this.roomWaiters, r, waiter);
    removeFrom(this.wheel, Math.max(waiter.slot, this.wheelCursor), waiter);
    removeFrom(this.wheel, waiter.slot, waiter);
    if (this.userWaiters.size === 0 && this.wheelTimer) {
      clearInterval(this.wheelTimer);
      this.wheelTimer = undefined;
    }
  }

  /** Ends the waiters whose slot has come (timed out). */
  private turnWheel(): void {
    const now = Math.floor(performance.now() / WHEEL_TICK_MS);
    for (; this.wheelCursor <= now; this.wheelCursor++) {
      const due = this.wheel.get(this.wheelCursor);
      if (!due) continue;
      this.wheel.delete(this.wheelCursor);
      for (const w of due) w.end(false);
    }
  }

  private wakeAll(): void {
    for (const set of [...this.userWaiters.values()]) for (const w of [...set]) w.end(true);
  }

  /** The last position of `stream` this process has heard of in the room (the floor when unknown). */
  lastInRoom(roomId: string, stream: StreamName): number {
    return this.lastChangeOf(roomKey(roomId))[stream] ?? this.floor[stream];
  }

  /** How many requests are waiting (tests and metrics). */
  get waiting(): number {
    let n = 0;
    for (const set of this.userWaiters.values()) n += set.size;
    return n;
  }

  private changedSince(key: string, after: StreamPositions): boolean {
    const last = this.lastChangeOf(key);
    for (const s of STREAMS) {
      const p = last[s];
      if (p !== undefined && p > after[s]) return true;
    }
    return false;
  }

  /** A key never seen (or forgotten) may have changed at any position up to the floor. */
  private lastChangeOf(key: string): Partial<StreamPositions> {
    return this.lastChange.get(key) ?? this.floor;
  }

  private apply(change: Change): void {
    const { stream, position } = change;
    if (position > this.current[stream]) this.current[stream] = position;
    if (stream === "events") this.cover(change.first ?? position, position);
    for (const handler of this.handlers.get(stream) ?? []) handler(change);
    if (change.everyone) {
      this.floor = { ...this.current };
      this.lastChange.clear();
      this.wakeAll();
      return;
    }
    const users = change.users ?? [];
    const rooms = change.rooms ?? [];
    if (this.lastChange.size + users.length + rooms.length > MAX_REMEMBERED_KEYS) {
      this.floor = { ...this.current };
      this.lastChange.clear();
    }
    const remember = (k: string) => {
      let last = this.lastChange.get(k);
      if (!last) this.lastChange.set(k, (last = {}));
      if ((last[stream] ?? 0) < position) last[stream] = position;
    };
    for (const u of users) {
      remember(userKey(u));
      const set = this.userWaiters.get(u);
      if (set) for (const w of [...set]) w.end(true);
    }
    for (const r of rooms) {
      remember(roomKey(r));
      const set = this.roomWaiters.get(r);
      if (set) for (const w of [...set]) w.end(true);
    }
  }

  private cover(first: number, last: number): void {
    const coverage = this.eventsCoverage;
    if (last <= coverage.upTo) return;
    coverage.pending.push([first, last]);
    coverage.pending.sort((a, b) => a[0] - b[0]);
    while (coverage.pending.length && coverage.pending[0]![0] <= coverage.upTo + 1) {
      coverage.upTo = Math.max(coverage.upTo, coverage.pending.shift()![1]);
    }
    if (coverage.pending.length === 0) coverage.gapSince = 0;
  }

  /** `<position>|<json>`; the JSON carries our origin, unless every process (us too) must apply it. */
  private payload(change: Change, withOrigin: boolean): string {
    const body: Record<string, unknown> = { s: change.stream };
    if (withOrigin) body.o = this.origin;
    if (change.users?.length) body.u = change.users;
    if (change.rooms?.length) body.r = change.rooms;
    if (change.data !== undefined) body.d = change.data;
    if (change.first !== undefined) body.f = change.first;
    let json = JSON.stringify(body);
    if (json.length > MAX_PAYLOAD) {
      json = JSON.stringify({ s: change.stream, ...(withOrigin ? { o: this.origin } : {}), e: 1, d: change.data, f: change.first });
    }
    return withOrigin ? `${change.position}|${json}` : json;
  }

  private receive(payload: string): void {
    try {
      if (payload.startsWith("b|")) {
        const body = JSON.parse(payload.slice(2)) as { o: string; t: string; d: unknown };
        if (body.o !== this.origin) this.deliver(body.t, body.d);
        return;
      }
      const bar = payload.indexOf("|");
      const position = Number(payload.slice(0, bar));
      const body = JSON.parse(payload.slice(bar + 1)) as {
        s: StreamName;
        o?: string;
        u?: string[];
        r?: string[];
        d?: unknown;
        e?: number;
        f?: number;
      };
      if (body.o === this.origin) return;
      if (!(STREAMS as readonly string[]).includes(body.s) || !Number.isSafeInteger(position)) return;
      this.apply({ stream: body.s, position, users: body.u, rooms: body.r, data: body.d, everyone: body.e === 1, first: body.f, remote: true });
    } catch (err) {
      this.logger.warn({ err }, "unreadable sync notification");
    }
  }
}

function addTo<K>(map: Map<K, Set<Waiter>>, key: K, waiter: Waiter): void {
  let set = map.get(key);
  if (!set) map.set(key, (set = new Set()));
  set.add(waiter);
}

function removeFrom<K>(map: Map<K, Set<Waiter>>, key: K, waiter: Waiter): void {
  const set = map.get(key);
  if (!set?.delete(waiter)) return;
  if (set.size === 0) map.delete(key);
}
