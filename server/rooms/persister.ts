// The one "persist an event" path (ARCHITECTURE.md, "One event path", "Per-room serial"); the
// design notes are in README.md.
//
// Local events: a job is queued for its room. A batch takes the queued jobs of every room that has
// no batch in flight (a room is in one batch at a time; up to MAX_CONCURRENT_BATCHES batches run at
// once, so under load one transaction carries many rooms' events: group commit). The transaction
// locks the rooms' rows (`SELECT ... ORDER BY room_id FOR UPDATE`: the database-level guard when
// several processes share a PostgreSQL), and for each job builds its events on its room's current
// state: prev_events = the forward extremities, depth = their depth + 1, auth_events selected per
// spec (`selectAuthEvents`), hashed and signed (`signEvent`), checked against the state before them
// (`checkAuth`). Accepted events are applied to the in-memory state (so the next event builds on
// them) and stored together; the transaction commits before any caller gets an answer. A job that
// fails fails alone, whatever it throws and at whatever stage (prepare, build, sign, event ID, auth,
// in-memory state, SQL text, push actions): its changes to the in-memory state are undone and the
// next job of its room builds on the state before it. A transaction the database refuses is retried
// without its batching: each of its jobs once more in a transaction of its own, so only the job that
// causes the refusal fails (see batchFailed).
//
// The storage step (`writeEvents`) takes events that are already built and checked — the same step a
// remote event will enter once it has passed its own checks (format, signatures, hashes, auth against
// its auth events and the state before it, soft-fail against the current state).
//
// Room-event stream positions (`stream_ordering`) are taken from the `events` row of
// `stream_positions` by the LAST statement of the transaction (the same statement inserts the event
// rows), sent together with its COMMIT. Its row lock is held until commit, so transactions that
// persist events commit in stream order: every position at or below the row's committed value is
// committed and visible, and `currentStreamPosition()` is that value. Positions are gap-free (an
// aborted transaction gives its positions back). The cost: the commit tails of all event
// transactions, across rooms and processes, run one at a time — one statement plus the commit (and
// its WAL flush when synchronous_commit is on). Everything else, including building and signing,
// runs in parallel; group commit shares the tail among the events of a batch.
//
// The current state of recently used rooms is cached in memory (state map, memberships, the state
// events the auth rules need). The room row read under the lock says whether another process wrote
// in between (its current state group differs); the cache is then reloaded.
import { randomBytes } from "node:crypto";
import { type SQL, sql } from "drizzle-orm";
import type { Logger } from "pino";
import { type Database, type OpenedDatabase, inlineSql, rowsOf, sqlLiteral } from "../../schema/db.ts";
import { CanonicalJsonError } from "../../federation/protocol/canonical-json.ts";
import { authTypesForEvent, selectAuthEvents } from "../../federation/protocol/auth-events-selection.ts";
import { checkAuth } from "../../federation/protocol/auth-rules.ts";
import { computeEventId, computeRoomIdFromCreateEvent } from "../../federation/protocol/event-hashes.ts";
import { signEvent } from "../../federation/protocol/event-signing.ts";
import { serverNameOf } from "../../federation/protocol/identifiers.ts";
import { MAX_PDU_BYTES, type Pdu, type RoomEvent } from "../../federation/protocol/pdu.ts";
import { type StateMapKey, stateMapKey } from "../../federation/protocol/room-state.ts";
import { type RoomVersionRules, roomVersionRules } from "../../federation/protocol/room-versions.ts";
import type { SigningKey } from "../../federation/protocol/signing.ts";
import { MatrixError, badJson, forbidden, notFound } from "../http/errors.ts";
import type { StoredEvent } from "./event-store.ts";
import {
  type NewStateGroup,
  type StateGroupRef,
  StateGroupIds,
  nextStateGroup,
  stateGroupEntryRows,
  stateGroupRef,
} from "./state-groups.ts";

type JsonObject = Record<string, unknown>;

/** Batches (transactions) in flight at once; each takes a connection of the pool. */
const MAX_CONCURRENT_BATCHES = 4;
/** Queued jobs of one room taken into one batch, at most. */
const MAX_JOBS_PER_ROOM = 64;
/** Rooms and jobs in one batch, at most. */
const MAX_ROOMS_PER_BATCH = 64;
const MAX_JOBS_PER_BATCH = 256;
/** prev_events of a local event, at most (the spec allows 20). */
const MAX_PREV_EVENTS = 10;
/** Rooms whose current state stays cached in memory. */
const MAX_CACHED_ROOMS = 2_000;

/** A client transaction ID, stored with the event it produced. */
export interface TxnRef {
  userId: string;
  deviceId: string;
  /** The request path without the transaction ID, e.g. `/rooms/!r/send/m.room.message`. */
  endpoint: string;
  txnId: string;
}

/** What a local event is built from. */
export interface EventTemplate {
  type: string;
  state_key?: string;
  sender: string;
  content: JsonObject;
  /** m.room.redaction: the redacted event (top-level `redacts` before v11, `content.redacts` from v11). */
  redacts?: string;
  txn?: TxnRef;
  /** Defaults to now. */
  originServerTs?: number;
}

/** An event as persisted: where it sits in the room-event stream and the room's graph. */
export interface PersistedEvent {
  eventId: string;
  roomId: string;
  type: string;
  stateKey: string | undefined;
  sender: string;
  /** For m.room.member events. */
  membership: string | undefined;
  streamOrdering: number;
  topologicalOrdering: number;
  /**
   * The event as a read of the events table would return it (what /sync serves from memory); for
   * events stored by this batch (not for a transaction ID's earlier event).
   */
  stored?: StoredEvent;
}

/** Called after events of a room committed (sync wakes its waiters here). */
export type EventsPersistedListener = (roomId: string, events: readonly PersistedEvent[]) => void;
/**
 * Called once per committed batch with its events of every room, in stream order: one
 * notification for the whole batch (a NOTIFY per room would cost a round trip and a commit each).
 */
export type BatchPersistedListener = (events: readonly PersistedEvent[]) => void;

/** A read-only view of a room's current state, for checks made in the room's serial section. */
export interface RoomView {
  readonly roomId: string;
  readonly rules: RoomVersionRules;
  stateEventId(type: string, stateKey: string): string | undefined;
  stateEvent(type: string, stateKey: string): Promise<RoomEvent | undefined>;
  membership(userId: string): string | undefined;
  /** The users whose membership is `join`. */
  joinedMembers(): string[];
  /** Any event of the room (not only state), as stored; undefined if unknown or in another room. */
  event(eventId: string): Promise<RoomEvent | undefined>;
}

/**
 * More rows written with a batch of events, in the statement that stores them, so they commit
 * together (push actions: a sync that sees an event sees the notifications it caused). Runs in the
 * room's serial section with the room's state after the batch; `events` are the accepted events of
 * the batch and `position(i)` is the SQL of the stream position `events[i]` gets. Reads go through
 * `tx` (the transaction holds the only connection on PGlite). Returns data-modifying statements,
 * each of which becomes a CTE of that statement.
 */
export type EventsWriteExtension = (
  tx: Database,
  view: RoomView,
  events: readonly RoomEvent[],
  position: (i: number) => SQL,
) => Promise<SQL[]>;

/** Where an event can fail on its way through the persister (named by test-only fault injection). */
export type PersistStage =
  | "prepare"
  | "build"
  | "sign"
  | "event-id"
  | "auth"
  | "apply"
  | "rows"
  | "push-actions"
  | "database"
  | "announce";

/**
 * Test-only fault injection (StartOptions.persisterFaults): called at each stage an event passes;
 * what it throws is thrown there, as a bug at that stage would throw it. At "database" a throw
 * instead gives the event's row a value the database refuses (one that slipped past every check);
 * at "announce" it runs as the first batch-persisted listener.
 */
export type PersistFaults = (stage: PersistStage, event: { roomId: string; type: string; sender: string; content: JsonObject }) => void;

/** Builds the events of one job from the room's current state (the view); may throw a MatrixError. */
export type Prepare = (view: RoomView) => EventTemplate[] | Promise<EventTemplate[]>;

/** The current state of a room, cached between transactions. */
interface RoomSnapshot {
  roomId: string;
  rules: RoomVersionRules;
  stateGroup: StateGroupRef | undefined;
  state: Map<StateMapKey, string>;
  /** Membership of every user with an m.room.member event in the current state. */
  memberships: Map<string, string>;
  extremities: string[];
  /** The depth of the deepest forward extremity. */
  maxDepth: number;
  /** State events loaded for the auth rules (immutable, so safe to keep while in the state). */
  events: Map<string, RoomEvent>;
}

/** An event ready to store: built and signed here, or received and checked. */
export interface EventToStore {
  eventId: string;
  pdu: Pdu;
  /** The PDU as stored: JSON text. */
  json: string;
  stateBefore: StateGroupRef | undefined;
  /** The state group after an accepted state event. */
  stateAfter: StateGroupRef | undefined;
  newStateGroup: NewStateGroup | undefined;
  /** The event it replaced in the state, for state events. */
  replacesState: string | undefined;
  rejectedReason: string | undefined;
  softFailed: boolean;
  txn: TxnRef | undefined;
  /** For an accepted redaction that applies: the event it redacts. */
  redactsEventId: string | undefined;
  /** Its rows as SQL text, built in its job's stage (so a value that cannot be written fails that job). */
  sql?: EventSql;
  /** What its caller and the listeners get once it is committed (the stream position is set then). */
  persisted?: PersistedEvent;
}

/** The SQL text of one event's rows in the write statement (see writeEvents). */
interface EventSql {
  /** The event's index in its batch: its position in the statement is `positionOf(index)`. */
  index: number;
  event: string;
  edges: string[];
  auth: string[];
  relations: string[];
  txn: string | undefined;
  /** A CTE marking the redacted event. */
  redaction: string | undefined;
  group: string | undefined;
  entries: string[];
  /** A new full state snapshot too large for the statement: written before it, in chunks. */
  largeSnapshot: ReturnType<typeof stateGroupEntryRows> | undefined;
}

interface Job {
  prepare: Prepare;
  /** A client transaction: when it already produced an event, the job resolves with that event. */
  txn?: TxnRef;
  resolve(events: PersistedEvent[]): void;
  reject(err: unknown): void;
  /** Set when a batch the job was in failed in the database: it runs in a transaction of its own. */
  alone?: boolean;
}

/** How a job of a batch ended; a job with none when the batch commits runs again in a later batch. */
type Outcome =
  | { ok: true; events: EventToStore[] }
  | { ok: true; existing: PersistedEvent }
  /** The same client transaction as an earlier job of the batch: its answer. */
  | { ok: true; sameAs: Job }
  | { ok: false; error: unknown };

interface RoomBatch {
  roomId: string;
  jobs: Job[];
}

/** What one room contributes to a batch's statement. */
interface RoomWrite {
  snapshot: RoomSnapshot;
  events: EventToStore[];
  newRoom?: { creator: string; isPublic: boolean };
  /** The write extensions' statements (CTE bodies), when already computed. */
  extensionSql?: string[];
}

/** Thrown inside a batch to make one job fail with an error for its caller. */
class JobFailure extends Error {
  constructor(override readonly cause: unknown) {
    super("job failed");
  }
}

/** Records changes to a snapshot so that a failed job's changes can be undone. */
class UndoLog {
  private readonly entries: Array<() => void> = [];
  mark(): number {
    return this.entries.length;
  }
  push(undo: () => void): void {
    this.entries.push(undo);
  }
  rollbackTo(mark: number): void {
    while (this.entries.length > mark) this.entries.pop()!();
  }
}

export class EventPersister {
  /** Jobs waiting, per room. */
  private readonly pending = new Map<string, Job[]>();
  /** Rooms with pending jobs and no batch in flight, oldest first. */
  private readonly ready = new Set<string>();
  /** Rooms in a batch in flight. */
  private readonly busy = new Set<string>();
  private running = 0;
  /** Least recently used first (Map insertion order). */
  private readonly snapshots = new Map<string, RoomSnapshot>();
  private readonly groupIds = new StateGroupIds();
  private lastCreateTs = 0;
  private readonly listeners: EventsPersistedListener[] = [];
  private readonly batchListeners: BatchPersistedListener[] = [];
  private readonly extensions: EventsWriteExtension[] = [];

  private readonly db: Database;

  constructor(
    private readonly database: OpenedDatabase,
    private readonly serverName: string,
    private readonly signingKey: SigningKey,
    private readonly now: () => number,
    private readonly logger: Logger,
    private readonly faults?: PersistFaults,
  ) {
    this.db = database.db;
    if (faults) {
      this.batchListeners.push((events) => {
        for (const e of events) if (e.stored) faults("announce", { roomId: e.roomId, type: e.type, sender: e.sender, content: e.stored.pdu.content as JsonObject });
      });
    }
  }

  /** Jobs queued and not yet in a batch. */
  get queuedJobs(): number {
    let n = 0;
    for (const jobs of this.pending.values()) n += jobs.length;
    return n;
  }

  private fault(stage: PersistStage, roomId: string, event: { type: string; sender: string; content: JsonObject }): void {
    this.faults?.(stage, { roomId, type: event.type, sender: event.sender, content: event.content });
  }

  onEventsPersisted(listener: EventsPersistedListener): void {
    this.listeners.push(listener);
  }

  onBatchPersisted(listener: BatchPersistedListener): void {
    this.batchListeners.push(listener);
  }

  /** Adds writes to every batch of events (see EventsWriteExtension). */
  extendWrites(extension: EventsWriteExtension): void {
    this.extensions.push(extension);
  }

  /**
   * The room-event stream position at or below which every event is committed and visible: the
   * `events` row of `stream_positions` (see the top of this file).
   */
  async currentStreamPosition(): Promise<number> {
    const rows = rowsOf<{ position: string | number }>(
      await this.db.execute(sql`select position from stream_positions where stream = 'events'`),
    );
    return rows[0] ? Number(rows[0].position) : 0;
  }

  /**
   * Creates a room: builds the create event (whose ID is the room ID in v12), then `templates(roomId)`
   * in order, checks each against the state the previous ones made, and stores them all in one
   * transaction — or nothing, when one is refused.
   */
  async createRoom(options: {
    version: string;
    creator: string;
    createContent: JsonObject;
    templates: (roomId: string) => EventTemplate[];
    /** Published in the room directory. */
    isPublic: boolean;
    /** Runs in the same transaction before the events are written (aliases). */
    alongside?: (tx: Database, roomId: string) => Promise<void>;
  }): Promise<{ roomId: string; events: PersistedEvent[] }> {
    const { version, creator, createContent, templates, isPublic, alongside } = options;
    const rules = roomVersionRules(version);
    // A v12 room ID is the hash of the create event: two identical create events (same creator,
    // content and millisecond) would name the same room. Each create event of this process gets a
    // later timestamp than the last, and a collision with another process's room is retried.
    for (let attempt = 0; ; attempt++) {
      const createTs = Math.max(this.now(), this.lastCreateTs + 1);
      this.lastCreateTs = createTs;
      const snapshot: RoomSnapshot = {
        roomId: rules.roomIdIsCreateEventId ? "" : `!${randomBytes(13).toString("base64url").replace(/[-_]/g, "x")}:${this.serverName}`,
        rules,
        stateGroup: undefined,
        state: new Map(),
        memberships: new Map(),
        extremities: [],
        maxDepth: 0,
        events: new Map(),
      };
      try {
        const built = await this.inTransaction(async (t) => {
          await t.start();
          const tx = t.db;
          const undo = new UndoLog();
          const out: EventToStore[] = [];
          const create: EventTemplate = { type: "m.room.create", state_key: "", sender: creator, content: createContent, originServerTs: createTs };
          out.push(await this.build(tx, snapshot, undo, create));
          if (rules.roomIdIsCreateEventId) snapshot.roomId = computeRoomIdFromCreateEvent(rules, out[0]!.pdu);
          for (const template of templates(snapshot.roomId)) out.push(await this.build(tx, snapshot, undo, template));
          await alongside?.(tx, snapshot.roomId);
          const last = await this.writeEvents(t, [{ snapshot, events: out, newRoom: { creator, isPublic } }]);
          return [...this.persistedEvents([{ snapshot, events: out }], last).values()];
        });
        this.cache(snapshot);
        this.announce(snapshot.roomId, built);
        this.announceBatch(built);
        return { roomId: snapshot.roomId, events: built };
      } catch (err) {
        if (attempt < 3 && isRoomIdTaken(err)) continue;
        // A refused event: the caller gets the reason (403, 400, 413), and nothing was stored.
        throw jobError(err);
      }
    }
  }

  /**
   * Queues a job for a room and waits until its events are committed. `prepare` runs in the room's
   * serial section with the current state; its events are built, checked and stored in order.
   */
  enqueue(roomId: string, prepare: Prepare, txn?: TxnRef): Promise<PersistedEvent[]> {
    return new Promise((resolve, reject) => {
      let jobs = this.pending.get(roomId);
      if (!jobs) this.pending.set(roomId, (jobs = []));
      jobs.push({ prepare, txn, resolve, reject });
      if (!this.busy.has(roomId)) this.ready.add(roomId);
      this.pump();
    });
  }

  /**
   * Starts batches while fewer than MAX_CONCURRENT_BATCHES run: each takes the rooms that have
   * queued jobs and no batch in flight (a room is in at most one batch: its events persist one at a
   * time), with up to MAX_JOBS_PER_ROOM jobs of each. Under light load every event gets a batch of
   * its own at once; under load the rooms' queued events share transactions (group commit). A job
   * marked `alone` (its batch failed in the database) gets a batch of its own.
   */
  private pump(): void {
    while (this.running < MAX_CONCURRENT_BATCHES && this.ready.size > 0) {
      const batch: RoomBatch[] = [];
      let jobCount = 0;
      for (const roomId of this.ready) {
        if (batch.length >= MAX_ROOMS_PER_BATCH || jobCount >= MAX_JOBS_PER_BATCH) break;
        const queued = this.pending.get(roomId);
        if (!queued || queued.length === 0) {
          this.pending.delete(roomId);
          this.ready.delete(roomId);
          continue;
        }
        const alone = queued[0]!.alone === true;
        if (alone && batch.length > 0) continue;
        let take = 1;
        if (!alone) while (take < queued.length && take < MAX_JOBS_PER_ROOM && !queued[take]!.alone) take++;
        const jobs = queued.splice(0, take);
        if (queued.length === 0) this.pending.delete(roomId);
        this.ready.delete(roomId);
        this.busy.add(roomId);
        batch.push({ roomId, jobs });
        jobCount += jobs.length;
        if (alone) break;
      }
      if (batch.length === 0) break;
      this.running++;
      // runBatch settles every job itself; whatever happens, the rooms are released and the queue moves on.
      void this.runBatch(batch)
        .catch((err: unknown) => {
          for (const { jobs } of batch) for (const job of jobs) job.reject(asError(err));
          this.logger.error({ err }, "a persist batch failed unexpectedly");
        })
        .finally(() => {
          this.running--;
          for (const { roomId } of batch) {
            this.busy.delete(roomId);
            if (this.pending.has(roomId)) this.ready.add(roomId);
          }
          this.pump();
        })
        .catch((err: unknown) => this.logger.error({ err }, "the persist queue failed to move on"));
    }
  }

  /** One transaction for the queued jobs of several rooms. Never throws: each job gets its outcome. */
  private async runBatch(batch: RoomBatch[]): Promise<void> {
    const outcomes = new Map<Job, Outcome>();
    const snapshots = new Map<string, RoomSnapshot>();
    const writes: RoomWrite[] = [];
    let lastPosition = 0;
    const progress = { commitSent: false };
    // Rooms in a fixed order: the row locks of concurrent batches (in any process) never cross.
    const rooms = [...batch].sort((a, b) => (a.roomId < b.roomId ? -1 : a.roomId > b.roomId ? 1 : 0));
    try {
      await this.inTransaction(async (t) => {
        // BEGIN, the rooms' row locks and the batch's transaction IDs: one round trip.
        const txns = rooms.flatMap((r) => r.jobs.flatMap((j) => (j.txn ? [j.txn] : [])));
        const [row] = (await t.start(lockRoomsQuery(rooms.map((r) => r.roomId), txns))) as Array<{ rooms: unknown; txns: unknown }>;
        const rowOf = new Map(jsonRows<{ room_id: string }>(row?.rooms).map((r) => [r.room_id, r]));
        const done = parseStoredTransactions(jsonRows(row?.txns));
        const tx = t.db;
        const ts = this.now();
        let index = 0;
        for (const { roomId, jobs } of rooms) {
          const row = rowOf.get(roomId);
          if (!row) {
            for (const job of jobs) outcomes.set(job, { ok: false, error: notFound("Unknown room") });
            continue;
          }
          const snapshot = await this.snapshotOf(tx, roomId, row);
          snapshots.set(roomId, snapshot);
          const write = await this.buildJobs(tx, snapshot, jobs, done, outcomes, index, ts);
          if (write) {
            writes.push(write);
            index += write.events.length;
          }
        }
        if (writes.length > 0) lastPosition = await this.writeEvents(t, writes);
      }, progress);
    } catch (err) {
      this.batchFailed(batch, outcomes, err, progress.commitSent);
      return;
    }

    // Committed. Nothing from here on may fail a job: its events are stored.
    for (const snapshot of snapshots.values()) this.cache(snapshot);
    const committed: PersistedEvent[] = [];
    let position = lastPosition - writes.reduce((n, w) => n + w.events.length, 0) + 1;
    for (const { events } of writes) {
      for (const e of events) {
        const p = e.persisted!;
        p.streamOrdering = position;
        p.stored!.streamOrdering = position;
        committed.push(p);
        position++;
      }
    }
    for (const { roomId, jobs } of batch) {
      // Jobs without an outcome were built on a job that failed late: they run again, first in their room.
      const again = jobs.filter((job) => !outcomes.has(job));
      if (again.length > 0) this.requeue(roomId, again, false);
      for (const job of jobs) this.settle(job, outcomes);
    }
    const byRoom = new Map<string, PersistedEvent[]>();
    for (const event of committed) {
      let list = byRoom.get(event.roomId);
      if (!list) byRoom.set(event.roomId, (list = []));
      list.push(event);
    }
    for (const [roomId, events] of byRoom) this.announce(roomId, events);
    if (committed.length > 0) this.announceBatch(committed);
  }

  /** Answers a job from its outcome (a job without one runs again). */
  private settle(job: Job, outcomes: Map<Job, Outcome>): void {
    let outcome = outcomes.get(job);
    if (!outcome) return;
    if (outcome.ok && "sameAs" in outcome) {
      // The earlier job with the same transaction ID comes first in its room: it has an outcome
      // whenever this one has (the jobs after a job that fails late all run again).
      const first = outcomes.get(outcome.sameAs);
      if (first && first.ok && "events" in first) outcome = { ok: true, events: first.events.slice(0, 1) };
      else outcome = first && !first.ok ? first : { ok: false, error: new Error("the first request with this transaction ID did not finish") };
    }
    if (!outcome.ok) job.reject(outcome.error);
    else if ("existing" in outcome) job.resolve([outcome.existing]);
    else if ("events" in outcome) job.resolve(outcome.events.map((e) => e.persisted!));
  }

  /**
   * The batch's transaction failed: nothing was stored (unless the connection was lost while the
   * COMMIT was on its way: then nobody can tell, and the jobs fail as before). The cached states of
   * its rooms may be ahead of the database: they are dropped. When the database refused the
   * transaction, the jobs that did not fail on their own run again, each in a transaction of its
   * own and first in its room's queue, so whichever job caused the refusal fails alone.
   */
  private batchFailed(batch: RoomBatch[], outcomes: Map<Job, Outcome>, err: unknown, commitSent: boolean): void {
    const open = batch.flatMap(({ roomId, jobs }) => jobs.filter((job) => outcomes.get(job)?.ok !== false).map((job) => ({ roomId, job })));
    for (const { roomId } of batch) this.snapshots.delete(roomId);
    for (const { jobs } of batch) for (const job of jobs) if (outcomes.get(job)?.ok === false) this.settle(job, outcomes);
    const maybeCommitted = commitSent && !refusedByDatabase(err);
    // The only job of a batch (one running alone, say) failed on its own.
    const shared = batch.reduce((n, r) => n + r.jobs.length, 0) > 1;
    if (!maybeCommitted && shared && open.length > 0) {
      this.logger.warn({ err, jobs: open.length }, "a persist batch failed; its jobs run again one by one");
      for (const { roomId } of batch) {
        const again = open.filter((o) => o.roomId === roomId).map((o) => o.job);
        if (again.length > 0) this.requeue(roomId, again, true);
      }
      return;
    }
    // A job alone that the database refuses as too large (a btree index entry holds about 2,700
    // bytes, and some IDs in content are indexed): the client's request, not our fault.
    const tooLarge = !shared && !maybeCommitted && sqlStateOf(err) === "54000";
    for (const { job } of open) {
      job.reject(tooLarge ? new MatrixError(413, "M_TOO_LARGE", "The event holds a value too large to store") : asError(err));
    }
    if (!tooLarge) this.logger.error({ err, rooms: batch.map((r) => r.roomId) }, "persisting events failed");
  }

  /** Puts jobs back at the head of their room's queue (the room is busy: pump makes it ready). */
  private requeue(roomId: string, jobs: Job[], alone: boolean): void {
    if (alone) for (const job of jobs) job.alone = true;
    const queued = this.pending.get(roomId) ?? [];
    this.pending.set(roomId, [...jobs, ...queued]);
  }

  /**
   * Builds the jobs of one room on its snapshot, in order, and the write extensions' statements.
   * A job that throws, whatever it throws and at whatever stage, fails alone: its changes to the
   * snapshot are undone and the next job builds on the state before it. A database error is thrown
   * on (the transaction is aborted: see batchFailed). Returns the room's write, if it has events.
   */
  private async buildJobs(
    tx: Database,
    snapshot: RoomSnapshot,
    jobs: Job[],
    done: Map<string, PersistedEvent>,
    outcomes: Map<Job, Outcome>,
    first: number,
    ts: number,
  ): Promise<RoomWrite | undefined> {
    const roomId = snapshot.roomId;
    const room = sqlLiteral(roomId);
    const undo = new UndoLog();
    const all: EventToStore[] = [];
    const view = this.view(tx, snapshot);
    const txnsInBatch = new Map<string, Job>();
    /** The jobs that added events: where they are in `jobs`, the undo log and `all`. */
    const built: Array<{ job: Job; at: number; mark: number; start: number }> = [];
    for (const [at, job] of jobs.entries()) {
      const key = job.txn && txnKey(job.txn);
      const existing = key === undefined ? undefined : done.get(key);
      if (existing) {
        outcomes.set(job, { ok: true, existing });
        continue;
      }
      const sameBatch = key === undefined ? undefined : txnsInBatch.get(key);
      if (sameBatch) {
        outcomes.set(job, { ok: true, sameAs: sameBatch });
        continue;
      }
      const mark = undo.mark();
      const start = all.length;
      try {
        const templates = await job.prepare(view);
        for (const template of templates) this.fault("prepare", roomId, template);
        for (const template of templates) {
          const e = await this.build(tx, snapshot, undo, template);
          e.sql = this.eventSql(e, room, first + all.length, ts, roomId);
          e.persisted = persistedEvent(snapshot, e, 0);
          all.push(e);
        }
        outcomes.set(job, { ok: true, events: all.slice(start) });
        if (all.length > start) {
          built.push({ job, at, mark, start });
          if (key !== undefined) txnsInBatch.set(key, job);
        }
      } catch (err) {
        undo.rollbackTo(mark);
        all.length = start;
        if (isDatabaseError(err)) throw err;
        outcomes.set(job, { ok: false, error: jobError(err) });
      }
    }

    // The write extensions (push actions) see the room's events together. When they throw, the job
    // whose events make them throw fails, and the jobs after it (built on its state) run again.
    let extensionSql: string[] = [];
    while (all.length > 0) {
      try {
        extensionSql = await this.extensionSql(tx, snapshot, all, first);
        break;
      } catch (err) {
        if (isDatabaseError(err)) throw err;
        let offender = built.length - 1;
        let error = err;
        for (const [j, b] of built.entries()) {
          try {
            await this.extensionSql(tx, snapshot, all.slice(b.start, built[j + 1]?.start ?? all.length), first + b.start);
          } catch (e) {
            if (isDatabaseError(e)) throw e;
            offender = j;
            error = e;
            break;
          }
        }
        const bad = built[offender]!;
        undo.rollbackTo(bad.mark);
        all.length = bad.start;
        built.length = offender;
        outcomes.set(bad.job, { ok: false, error: jobError(error) });
        for (const job of jobs.slice(bad.at + 1)) outcomes.delete(job);
      }
    }
    return all.length > 0 ? { snapshot, events: all, extensionSql } : undefined;
  }

  /**
   * Runs `work` in one transaction. On PostgreSQL it holds a connection of its own and pipelines:
   * `start` sends BEGIN with the first queries, `commitWith` sends the last statement with COMMIT, so
   * the stream-position lock that statement takes is released without waiting for this process to
   * read its answer. On PGlite (one connection, in process) it is an ordinary transaction.
   */
  private async inTransaction<T>(work: (t: PersistTransaction) => Promise<T>, progress?: { commitSent: boolean }): Promise<T> {
    const reserve = this.database.reserve;
    if (!reserve) {
      return this.db.transaction(async (tx) => {
        let committed = false;
        return work({
          db: tx,
          start: async (query) => (query ? rowsOf(await tx.execute(query)) : []),
          commitWith: async (last) => {
            if (committed) throw new Error("transaction already finished");
            committed = true;
            return rowsOf(await tx.execute(last));
          },
        });
      });
    }
    const connection = await reserve.call(this.database);
    let state = "new" as "new" | "open" | "done";
    try {
      const result = await work({
        db: connection.db,
        // Each as one query string: one socket write and one round trip.
        start: async (query) => {
          state = "open";
          return connection.script(query ? [sql`begin`, query] : [sql`begin`]);
        },
        commitWith: async (last) => {
          if (progress) progress.commitSent = true;
          const rows = await connection.script([last, sql`commit`]);
          state = "done";
          return rows;
        },
      });
      if (state === "open") {
        if (progress) progress.commitSent = true;
        await connection.pipeline([sql`commit`]);
        state = "done";
      }
      return result;
    } catch (err) {
      // A failed statement left the transaction aborted (its COMMIT, sent with it, did not run).
      if (state !== "new") await connection.pipeline([sql`rollback`]).catch(() => {});
      throw err;
    } finally {
      connection.release();
    }
  }

  private announceBatch(events: PersistedEvent[]): void {
    for (const listener of this.batchListeners) {
      try {
        listener(events);
      } catch (err) {
        this.logger.error({ err }, "a batch-persisted listener failed");
      }
    }
  }

  private announce(roomId: string, events: PersistedEvent[]): void {
    for (const listener of this.listeners) {
      try {
        listener(roomId, events);
      } catch (err) {
        this.logger.error({ err, roomId }, "an events-persisted listener failed");
      }
    }
  }

  private cache(snapshot: RoomSnapshot): void {
    this.snapshots.delete(snapshot.roomId);
    this.snapshots.set(snapshot.roomId, snapshot);
    while (this.snapshots.size > MAX_CACHED_ROOMS) {
      const oldest = this.snapshots.keys().next().value as string;
      this.snapshots.delete(oldest);
    }
  }

  /** Forgets the cached state of a room (tests; and after writes made outside this path). */
  invalidate(roomId: string): void {
    this.snapshots.delete(roomId);
  }

  /**
   * The room's current state, given its row as read under lock (lockRoomsQuery): the cached snapshot
   * when the row says nobody else wrote since, else one loaded from the database.
   */
  private async snapshotOf(tx: Database, roomId: string, row: unknown): Promise<RoomSnapshot> {
    const r = row as {
      room_version: string;
      forward_extremities: string[] | string;
      max_depth: string | number;
      current_state_group: string | number | null;
    };
    const extremities = parseTextArray(r.forward_extremities);
    const maxDepth = Number(r.max_depth);
    const group = r.current_state_group === null ? undefined : Number(r.current_state_group);
    const cached = this.snapshots.get(roomId);
    if (cached && cached.stateGroup?.id === group) {
      cached.extremities = extremities;
      cached.maxDepth = maxDepth;
      return cached;
    }
    const rules = roomVersionRules(r.room_version);
    const [stateRows, ref] = await Promise.all([
      tx.execute(sql`select type, state_key, event_id, membership from current_state where room_id = ${roomId}`),
      group === undefined ? Promise.resolve(undefined) : stateGroupRef(tx, group),
    ]);
    const state = new Map<StateMapKey, string>();
    const memberships = new Map<string, string>();
    for (const r of rowsOf<{ type: string; state_key: string; event_id: string; membership: string | null }>(stateRows)) {
      state.set(stateMapKey(r.type, r.state_key), r.event_id);
      if (r.type === "m.room.member" && r.membership !== null) memberships.set(r.state_key, r.membership);
    }
    return { roomId, rules, stateGroup: ref, state, memberships, extremities, maxDepth, events: new Map() };
  }

  private view(tx: Database, snapshot: RoomSnapshot): RoomView {
    return {
      roomId: snapshot.roomId,
      rules: snapshot.rules,
      stateEventId: (type, stateKey) => snapshot.state.get(stateMapKey(type, stateKey)),
      stateEvent: async (type, stateKey) => {
        const id = snapshot.state.get(stateMapKey(type, stateKey));
        if (id === undefined) return undefined;
        await this.loadEvents(tx, snapshot, [id]);
        return snapshot.events.get(id);
      },
      membership: (userId) => snapshot.memberships.get(userId),
      joinedMembers: () => [...snapshot.memberships].filter(([, m]) => m === "join").map(([u]) => u),
      event: async (eventId) => {
        const cached = snapshot.events.get(eventId);
        if (cached) return cached;
        const [row] = rowsOf<{ json: string; room_id: string }>(
          await tx.execute(sql`select json, room_id from events where event_id = ${eventId}`),
        );
        if (!row || row.room_id !== snapshot.roomId) return undefined;
        return { ...(JSON.parse(row.json) as Pdu), event_id: eventId };
      },
    };
  }

  /** Loads state events the auth rules need into the snapshot's event cache. */
  private async loadEvents(tx: Database, snapshot: RoomSnapshot, eventIds: readonly string[]): Promise<void> {
    const missing = eventIds.filter((id) => !snapshot.events.has(id));
    if (missing.length === 0) return;
    const rows = rowsOf<{ event_id: string; json: string }>(
      await tx.execute(sql`select event_id, json from events where event_id in (${sql.join(
        missing.map((id) => sql`${id}`),
        sql`, `,
      )})`),
    );
    for (const r of rows) snapshot.events.set(r.event_id, { ...(JSON.parse(r.json) as Pdu), event_id: r.event_id });
  }

  /**
   * Builds, signs and checks one local event on the snapshot's current state, then applies it to
   * the snapshot (recording how to undo that). Throws JobFailure (403, 400, 413) when it cannot be sent.
   */
  private async build(tx: Database, snapshot: RoomSnapshot, undo: UndoLog, template: EventTemplate): Promise<EventToStore> {
    // PostgreSQL text cannot hold NUL, and a database error would fail every room's events in the
    // batch: refuse this event alone, here.
    if (containsNul(template)) throw badJson("Events cannot contain NUL characters");
    this.fault("build", snapshot.roomId, template);
    const rules = snapshot.rules;
    const isCreate = template.type === "m.room.create";
    let content = template.content;
    const pdu: JsonObject = {};
    if (!(isCreate && rules.roomIdIsCreateEventId)) pdu.room_id = snapshot.roomId;
    pdu.sender = template.sender;
    pdu.type = template.type;
    if (template.state_key !== undefined) pdu.state_key = template.state_key;
    if (template.redacts !== undefined) {
      if (rules.redactsInContent) content = { ...content, redacts: template.redacts };
      else pdu.redacts = template.redacts;
    }
    pdu.content = content;
    pdu.origin_server_ts = template.originServerTs ?? this.now();
    pdu.depth = Math.min(snapshot.maxDepth + 1, Number.MAX_SAFE_INTEGER);
    pdu.prev_events = snapshot.extremities.slice(-MAX_PREV_EVENTS);
    pdu.auth_events = selectAuthEvents(rules, template, snapshot.state);

    let signed: Pdu;
    try {
      // Hashing encodes the whole event as canonical JSON, which refuses floats and the like.
      this.fault("sign", snapshot.roomId, template);
      signed = signEvent(rules, pdu, this.serverName, this.signingKey) as unknown as Pdu;
    } catch (err) {
      if (err instanceof CanonicalJsonError) throw new JobFailure(new MatrixError(400, "M_BAD_JSON", `Event is not canonical JSON: ${err.message}`));
      throw err;
    }
    // The stored text. Canonical JSON differs from it only in key order, so it has the same length.
    const json = JSON.stringify(signed);
    const size = Buffer.byteLength(json, "utf8");
    if (size > MAX_PDU_BYTES) {
      throw new JobFailure(new MatrixError(413, "M_TOO_LARGE", `Event is ${size} bytes; the limit is ${MAX_PDU_BYTES}`));
    }
    this.fault("event-id", snapshot.roomId, template);
    const eventId = computeEventId(rules, signed);
    const event: RoomEvent = { ...signed, event_id: eventId };

    // The auth rules read the create event, the selected auth events' keys and nothing else.
    const keys = authTypesForEvent(rules, template).map(([type, stateKey]) => stateMapKey(type, stateKey));
    keys.push(stateMapKey("m.room.create", ""));
    const ids = keys.map((k) => snapshot.state.get(k)).filter((id): id is string => id !== undefined);
    await this.loadEvents(tx, snapshot, ids);
    const authState = new Map<StateMapKey, RoomEvent>();
    for (const key of keys) {
      const id = snapshot.state.get(key);
      const authEvent = id === undefined ? undefined : snapshot.events.get(id);
      if (authEvent) authState.set(key, authEvent);
    }
    this.fault("auth", snapshot.roomId, template);
    const decision = checkAuth(rules, event, authState);
    if (!decision.allowed) throw new JobFailure(forbidden(decision.reason));

    const toStore: EventToStore = {
      eventId,
      pdu: signed,
      json,
      stateBefore: snapshot.stateGroup,
      stateAfter: undefined,
      newStateGroup: undefined,
      replacesState: undefined,
      rejectedReason: undefined,
      softFailed: false,
      txn: template.txn,
      redactsEventId: template.type === "m.room.redaction" ? template.redacts : undefined,
    };
    await this.applyToSnapshot(tx, snapshot, undo, toStore, event);
    return toStore;
  }

  /**
   * Applies an accepted event to the in-memory current state: state, memberships, extremities. Each
   * undo is recorded before its change, so a throw at any point leaves nothing the undo log misses.
   */
  private async applyToSnapshot(tx: Database, snapshot: RoomSnapshot, undo: UndoLog, toStore: EventToStore, event: RoomEvent): Promise<void> {
    const previous = { extremities: snapshot.extremities, maxDepth: snapshot.maxDepth, stateGroup: snapshot.stateGroup };
    undo.push(() => {
      snapshot.extremities = previous.extremities;
      snapshot.maxDepth = previous.maxDepth;
      snapshot.stateGroup = previous.stateGroup;
    });
    if (typeof event.state_key === "string") {
      const stateKey = event.state_key;
      const key = stateMapKey(event.type, stateKey);
      const isMember = event.type === "m.room.member";
      const membership = isMember ? String(event.content.membership) : undefined;
      const replaced = snapshot.state.get(key);
      const previousMembership = isMember ? snapshot.memberships.get(stateKey) : undefined;
      undo.push(() => {
        if (replaced === undefined) snapshot.state.delete(key);
        else snapshot.state.set(key, replaced);
        snapshot.events.delete(event.event_id);
        if (isMember) {
          if (previousMembership === undefined) snapshot.memberships.delete(stateKey);
          else snapshot.memberships.set(stateKey, previousMembership);
        }
      });
      toStore.replacesState = replaced;
      snapshot.state.set(key, event.event_id);
      snapshot.events.set(event.event_id, event);
      if (membership !== undefined) snapshot.memberships.set(stateKey, membership);
      const group = nextStateGroup(await this.groupIds.next(tx), snapshot.stateGroup, new Map([[key, event.event_id]]), snapshot.state);
      toStore.newStateGroup = group;
      toStore.stateAfter = { id: group.id, chainLength: group.chainLength };
      snapshot.stateGroup = toStore.stateAfter;
    }
    snapshot.extremities = [event.event_id];
    snapshot.maxDepth = Number(event.depth);
    this.fault("apply", snapshot.roomId, event);
  }

  /** The stream positions the batch's events got: in order, ending at `lastPosition`. */
  private persistedEvents(writes: RoomWrite[], lastPosition: number): Map<string, PersistedEvent> {
    const total = writes.reduce((n, w) => n + w.events.length, 0);
    let position = lastPosition - total + 1;
    const out = new Map<string, PersistedEvent>();
    for (const { snapshot, events } of writes) {
      for (const e of events) out.set(e.eventId, persistedEvent(snapshot, e, position++));
    }
    return out;
  }

  /**
   * Stores built (or received and checked) events of one or more rooms and moves each room's current
   * state, forward extremities and local memberships to its snapshot's. Everything but large state
   * snapshots goes in one statement whose first step takes the stream positions (`pos`), sent with
   * the COMMIT: the stream-position row stays locked only for that statement and the commit.
   * Returns the stream position of the last event (the events get consecutive positions, in order).
   */
  async writeEvents(t: PersistTransaction, writes: RoomWrite[]): Promise<number> {
    const tx = t.db;
    const n = writes.reduce((sum, w) => sum + w.events.length, 0);
    // Built as text, values as literals (sqlLiteral): on the hot path, assembling drizzle SQL
    // objects for every value cost more than the statement itself. Extensions' SQL is inlined.
    const L = sqlLiteral;
    const ctes: string[] = [];
    const eventRows: string[] = [];
    const edges: string[] = [];
    const auth: string[] = [];
    const groupRows: string[] = [];
    const entryRows: string[] = [];
    const currentRows: string[] = [];
    const membershipRows: string[] = [];
    const relationRowsSql: string[] = [];
    const txnRows: string[] = [];
    const roomUpdates: string[] = [];
    const ts = this.now();
    let index = 0;
    let extensionCount = 0;

    for (const { snapshot, events, newRoom, extensionSql } of writes) {
      const roomId = snapshot.roomId;
      const room = L(roomId);
      const first = index;
      for (const e of events) {
        const i = index++;
        // Events of a batch come with their text, built in their job's stage (buildJobs).
        const text = e.sql?.index === i ? e.sql : this.eventSql(e, room, i, ts, roomId);
        eventRows.push(text.event);
        for (const x of text.edges) edges.push(x);
        for (const x of text.auth) auth.push(x);
        for (const x of text.relations) relationRowsSql.push(x);
        if (text.txn !== undefined) txnRows.push(text.txn);
        if (text.redaction !== undefined) ctes.push(text.redaction);
        if (text.group !== undefined) groupRows.push(text.group);
        for (const x of text.entries) entryRows.push(x);
        const rows = text.largeSnapshot;
        if (rows) {
          for (let c = 0; c < rows.length; c += 2_000) {
            await tx.execute(sql`insert into state_group_entries (group_id, type, state_key, event_id) values ${sql.join(
              rows.slice(c, c + 2_000).map(([g, type, k, eid]) => sql`(${g}, ${type}, ${k}, ${eid})`),
              sql`, `,
            )}`);
          }
        }
      }

      // The current state and local memberships: the last accepted event per key wins.
      const stateChanges = new Map<StateMapKey, { type: string; stateKey: string; eventId: string; membership: string | null; i: number }>();
      events.forEach((e, k) => {
        if (e.rejectedReason !== undefined || e.softFailed || e.stateAfter === undefined || e.pdu.state_key === undefined) return;
        const membership = e.pdu.type === "m.room.member" ? String(e.pdu.content.membership) : null;
        stateChanges.set(stateMapKey(e.pdu.type, e.pdu.state_key), { type: e.pdu.type, stateKey: e.pdu.state_key, eventId: e.eventId, membership, i: first + k });
      });
      for (const c of stateChanges.values()) {
        currentRows.push(`(${room}, ${L(c.type)}, ${L(c.stateKey)}, ${L(c.eventId)}, ${L(c.membership)})`);
        if (c.type === "m.room.member" && serverNameOf(c.stateKey) === this.serverName) {
          membershipRows.push(`(${L(c.stateKey)}, ${room}, ${L(c.membership)}, ${L(c.eventId)}, ${positionOf(c.i)})`);
        }
      }

      const extremities = `array[${snapshot.extremities.map((x) => L(x)).join(", ")}]::text[]`;
      const group = `${L(snapshot.stateGroup?.id ?? null)}::bigint`;
      if (newRoom) {
        ctes.push(`newroom as (insert into rooms (room_id, room_version, creator, is_public, created_ts, forward_extremities, max_depth, current_state_group)
          values (${room}, ${L(snapshot.rules.id)}, ${L(newRoom.creator)}, ${L(newRoom.isPublic)}, ${ts}, ${extremities}, ${snapshot.maxDepth}, ${group}))`);
      } else {
        roomUpdates.push(`(${room}::text, ${extremities}, ${snapshot.maxDepth}::bigint, ${group})`);
      }

      for (const statement of extensionSql ?? (await this.extensionSql(tx, snapshot, events, first))) {
        ctes.push(`ext${extensionCount++} as (${statement})`);
      }
    }

    const head = [
      `pos as (insert into stream_positions (stream, position) values ('events', ${n})
        on conflict (stream) do update set position = stream_positions.position + ${n} returning position, position - ${n - 1} as first)`,
      `ev as (insert into events (event_id, room_id, type, state_key, sender, origin_server_ts, depth, json,
        stream_ordering, topological_ordering, rejected_reason, soft_failed, state_before_group, state_after_group, replaces_state)
        values ${eventRows.join(", ")})`,
    ];
    if (edges.length) head.push(`edges as (insert into event_edges (event_id, prev_event_id, room_id) values ${edges.join(", ")} on conflict do nothing)`);
    if (auth.length) head.push(`auth as (insert into event_auth (event_id, auth_event_id, room_id) values ${auth.join(", ")} on conflict do nothing)`);
    if (groupRows.length) head.push(`sgroups as (insert into state_groups (id, room_id, prev_group, chain_length) values ${groupRows.join(", ")})`);
    if (entryRows.length) head.push(`entries as (insert into state_group_entries (group_id, type, state_key, event_id) values ${entryRows.join(", ")})`);
    if (currentRows.length) {
      head.push(`cur as (insert into current_state (room_id, type, state_key, event_id, membership) values ${currentRows.join(", ")}
        on conflict (room_id, type, state_key) do update set event_id = excluded.event_id, membership = excluded.membership)`);
    }
    if (membershipRows.length) {
      head.push(`mem as (insert into room_memberships (user_id, room_id, membership, event_id, stream_ordering) values ${membershipRows.join(", ")}
        on conflict (user_id, room_id) do update set membership = excluded.membership, event_id = excluded.event_id,
          stream_ordering = excluded.stream_ordering, forgotten = false)`);
    }
    if (relationRowsSql.length) {
      head.push(`rel as (insert into event_relations (event_id, rel_type, relates_to_id, room_id, aggregation_key) values ${relationRowsSql.join(", ")} on conflict do nothing)`);
    }
    if (txnRows.length) {
      head.push(`txn as (insert into event_transactions (user_id, device_id, endpoint, txn_id, event_id, created_ts) values ${txnRows.join(", ")} on conflict do nothing)`);
    }
    if (roomUpdates.length) {
      head.push(`rooms_moved as (update rooms set forward_extremities = v.extremities, max_depth = v.depth, current_state_group = v.grp
        from (values ${roomUpdates.join(", ")}) as v(room_id, extremities, depth, grp) where rooms.room_id = v.room_id)`);
    }

    const text = `with ${[...head, ...ctes].join(",\n")}\nselect position from pos`;
    const rows = (await t.commitWith(sql.raw(text))) as Array<{ position: string | number }>;
    return Number(rows[0]!.position);
  }

  /**
   * The SQL text of an event's rows, its values as literals: the step where a value that cannot be
   * written (NUL, a number that is no safe integer) throws. `i` is its index in the batch.
   */
  private eventSql(e: EventToStore, room: string, i: number, ts: number, roomId: string): EventSql {
    const L = sqlLiteral;
    this.fault("rows", roomId, e.pdu);
    let originServerTs = L(e.pdu.origin_server_ts);
    try {
      this.fault("database", roomId, e.pdu);
    } catch {
      originServerTs = `'refused by fault injection'::bigint`;
    }
    const id = L(e.eventId);
    const text: EventSql = {
      index: i,
      event:
        `(${id}, ${room}, ${L(e.pdu.type)}, ${L(e.pdu.state_key ?? null)}, ${L(e.pdu.sender)}, ${originServerTs}, ` +
        `${L(e.pdu.depth)}, ${L(e.json)}, ${positionOf(i)}, ${L(e.pdu.depth)}, ${L(e.rejectedReason ?? null)}, ${L(e.softFailed)}, ` +
        `${L(e.stateBefore?.id ?? null)}::bigint, ${L(e.stateAfter?.id ?? null)}::bigint, ${L(e.replacesState ?? null)})`,
      edges: e.pdu.prev_events.map((p) => `(${id}, ${L(p)}, ${room})`),
      auth: e.pdu.auth_events.map((a) => `(${id}, ${L(a)}, ${room})`),
      relations: relationRows(e.eventId, e.pdu.content).map((r) => `(${id}, ${L(r.relType)}, ${L(r.relatesTo)}, ${room}, ${L(r.key)})`),
      txn: e.txn && `(${L(e.txn.userId)}, ${L(e.txn.deviceId)}, ${L(e.txn.endpoint)}, ${L(e.txn.txnId)}, ${id}, ${ts})`,
      redaction:
        e.redactsEventId !== undefined && e.rejectedReason === undefined && !e.softFailed
          ? `red${i} as (update events set redacted_by = ${id} where event_id = ${L(e.redactsEventId)} and room_id = ${room} and redacted_by is null)`
          : undefined,
      group: undefined,
      entries: [],
      largeSnapshot: undefined,
    };
    const group = e.newStateGroup;
    if (group) {
      text.group = `(${group.id}, ${room}, ${L(group.prev ?? null)}::bigint, ${group.chainLength})`;
      const rows = stateGroupEntryRows(group);
      // Large snapshots: written before the statement, in chunks.
      if (group.prev === undefined && rows.length > 500) text.largeSnapshot = rows;
      else text.entries = rows.map(([g, type, k, eid]) => `(${g}, ${L(type)}, ${L(k)}, ${L(eid)})`);
    }
    return text;
  }

  /** The write extensions' statements (CTE bodies) for a room's events; `first` is the index of the first. */
  private async extensionSql(tx: Database, snapshot: RoomSnapshot, events: readonly EventToStore[], first: number): Promise<string[]> {
    if (this.extensions.length === 0) return [];
    const accepted = events.flatMap((e, k) => (e.rejectedReason === undefined && !e.softFailed ? [{ e, i: first + k }] : []));
    const pdus = accepted.map(({ e }) => ({ ...e.pdu, room_id: snapshot.roomId, event_id: e.eventId }) as RoomEvent);
    for (const pdu of pdus) this.fault("push-actions", snapshot.roomId, pdu);
    const view = this.view(tx, snapshot);
    const out: string[] = [];
    for (const extension of this.extensions) {
      for (const statement of await extension(tx, view, pdus, (k) => sql.raw(positionOf(accepted[k]!.i)))) out.push(inlineSql(statement));
    }
    return out;
  }
}

/** The SQL of the stream position the batch's i-th event gets (the write statement's `pos` step). */
function positionOf(i: number): string {
  return `((select first from pos) + ${i})`;
}

/** An event as its caller and the listeners see it once committed at `position`. */
function persistedEvent(snapshot: RoomSnapshot, e: EventToStore, position: number): PersistedEvent {
  return {
    eventId: e.eventId,
    roomId: snapshot.roomId,
    type: e.pdu.type,
    stateKey: e.pdu.state_key,
    sender: e.pdu.sender,
    membership: e.pdu.type === "m.room.member" ? String(e.pdu.content.membership) : undefined,
    streamOrdering: position,
    topologicalOrdering: e.pdu.depth,
    stored: {
      eventId: e.eventId,
      roomId: snapshot.roomId,
      roomVersion: snapshot.rules.id,
      type: e.pdu.type,
      stateKey: e.pdu.state_key,
      sender: e.pdu.sender,
      originServerTs: e.pdu.origin_server_ts,
      depth: e.pdu.depth,
      streamOrdering: position,
      topologicalOrdering: e.pdu.depth,
      pdu: e.pdu as unknown as Record<string, unknown>,
      rejected: e.rejectedReason !== undefined,
      softFailed: e.softFailed,
      outlier: false,
      redactedBy: null,
      stateBeforeGroup: e.stateBefore?.id ?? null,
      stateAfterGroup: e.stateAfter?.id ?? null,
      replacesState: e.replacesState ?? null,
    },
  };
}

/** What a job's caller gets for what it threw: always an Error (a non-Error value is wrapped). */
function jobError(err: unknown): unknown {
  if (err instanceof JobFailure) return err.cause;
  return asError(err);
}

function asError(err: unknown): Error {
  if (err instanceof Error) return err;
  let description: string;
  try {
    description = typeof err === "string" ? err : JSON.stringify(err) ?? typeof err;
  } catch {
    description = typeof err;
  }
  return new Error(`a persist job threw a non-Error value: ${description.slice(0, 200)}`, { cause: err });
}

/**
 * An error from the database or its driver (it carries a code: SQLSTATE, or a connection error's).
 * After one the transaction is aborted. Telling them apart is an optimisation only: an error taken
 * for the job's own leaves the batch's later statements failing, and the batch runs again job by job.
 */
function isDatabaseError(err: unknown): boolean {
  for (let e = err, depth = 0; e && typeof e === "object" && depth < 5; e = (e as { cause?: unknown }).cause, depth++) {
    if (typeof (e as { code?: unknown }).code === "string") return true;
  }
  return false;
}

/**
 * Whether the database answered that it refused a statement (a SQLSTATE error; not a lost
 * connection or a shutdown, after which a COMMIT already sent may or may not have happened).
 */
function refusedByDatabase(err: unknown): boolean {
  const code = sqlStateOf(err);
  return code !== undefined && !/^(08|57P)/.test(code);
}

/** The SQLSTATE of a database error, through drizzle's wrapping. */
function sqlStateOf(err: unknown): string | undefined {
  for (let e = err, depth = 0; e && typeof e === "object" && depth < 5; e = (e as { cause?: unknown }).cause, depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === "string" && /^[0-9A-Z]{5}$/.test(code)) return code;
  }
  return undefined;
}

/** The relations an event's content declares (`m.relates_to`), plus `m.in_reply_to` for replies. */
export function relationRows(_eventId: string, content: JsonObject): Array<{ relType: string; relatesTo: string; key: string | null }> {
  const relatesTo = content["m.relates_to"];
  if (typeof relatesTo !== "object" || relatesTo === null || Array.isArray(relatesTo)) return [];
  const r = relatesTo as JsonObject;
  const rows: Array<{ relType: string; relatesTo: string; key: string | null }> = [];
  if (typeof r.rel_type === "string" && typeof r.event_id === "string" && r.rel_type !== "m.in_reply_to") {
    rows.push({ relType: r.rel_type, relatesTo: r.event_id, key: r.rel_type === "m.annotation" && typeof r.key === "string" ? r.key : null });
  }
  const reply = r["m.in_reply_to"];
  if (typeof reply === "object" && reply !== null && typeof (reply as JsonObject).event_id === "string") {
    rows.push({ relType: "m.in_reply_to", relatesTo: (reply as JsonObject).event_id as string, key: null });
  }
  return rows;
}

/** One persist transaction (see EventPersister.inTransaction). */
export interface PersistTransaction {
  /** Queries inside the transaction (after `start`). */
  db: Database;
  /** Begins the transaction, running `query` with it (one round trip); answers its rows. */
  start(query?: SQL): Promise<unknown[]>;
  /** Runs the last statement and commits; answers the statement's rows. */
  commitWith(last: SQL): Promise<unknown[]>;
}

/**
 * Reads and locks the rooms' rows (`FOR UPDATE`, in room ID order): the database-level guard that
 * makes the events of one room persist one at a time across processes. Their columns say whether
 * the cached state is current. With them, in the same statement, the events already stored for the
 * batch's client transaction IDs. One row: `rooms` and `txns`, as JSON arrays.
 */
function lockRoomsQuery(roomIds: string[], txns: TxnRef[]): SQL {
  const txnLookup = txns.length
    ? sql`(select coalesce(json_agg(y), '[]') from (select t.user_id, t.device_id, t.endpoint, t.txn_id, e.event_id, e.room_id,
          e.type, e.state_key, e.sender, e.stream_ordering, e.topological_ordering
        from event_transactions t join events e on e.event_id = t.event_id
        where (t.user_id, t.device_id, t.endpoint, t.txn_id) in (${sql.join(
          txns.map((t) => sql`(${t.userId}, ${t.deviceId}, ${t.endpoint}, ${t.txnId})`),
          sql`, `,
        )})) y)`
    : sql`'[]'::json`;
  return sql`select
    (select coalesce(json_agg(x), '[]') from (select room_id, room_version, forward_extremities, max_depth, current_state_group
      from rooms where room_id in (${sql.join(
        roomIds.map((r) => sql`${r}`),
        sql`, `,
      )}) order by room_id for update) x) as rooms,
    ${txnLookup} as txns`;
}

/** A JSON array column, parsed by the driver or still text. */
function jsonRows<T>(value: unknown): T[] {
  if (typeof value === "string") return JSON.parse(value) as T[];
  return (value as T[] | null | undefined) ?? [];
}

function parseStoredTransactions(rows: unknown[]): Map<string, PersistedEvent> {
  const out = new Map<string, PersistedEvent>();
  for (const r of rows as Array<{
    user_id: string;
    device_id: string;
    endpoint: string;
    txn_id: string;
    event_id: string;
    room_id: string;
    type: string;
    state_key: string | null;
    sender: string;
    stream_ordering: string | number | null;
    topological_ordering: string | number;
  }>) {
    out.set(txnKey({ userId: r.user_id, deviceId: r.device_id, endpoint: r.endpoint, txnId: r.txn_id }), {
      eventId: r.event_id,
      roomId: r.room_id,
      type: r.type,
      stateKey: r.state_key ?? undefined,
      sender: r.sender,
      membership: undefined,
      streamOrdering: Number(r.stream_ordering ?? 0),
      topologicalOrdering: Number(r.topological_ordering),
    });
  }
  return out;
}

export function txnKey(txn: TxnRef): string {
  return `${txn.userId}\u0000${txn.deviceId}\u0000${txn.endpoint}\u0000${txn.txnId}`;
}

/** A unique violation on the rooms table's primary key (PostgreSQL and PGlite alike). */
function isRoomIdTaken(err: unknown): boolean {
  for (let e: unknown = err; e; e = (e as { cause?: unknown }).cause) {
    const { code, message } = e as { code?: string; message?: string };
    if (code === "23505" && /rooms_pkey/.test(message ?? "")) return true;
  }
  return false;
}

/** postgres.js returns text[] as an array; PGlite may too, or as the literal `{a,b}`. */
function parseTextArray(value: string[] | string): string[] {
  if (Array.isArray(value)) return value;
  if (value === "{}" || value === "") return [];
  return value
    .slice(1, -1)
    .split(",")
    .map((s) => (s.startsWith('"') ? s.slice(1, -1).replace(/\\(.)/g, "$1") : s));
}

/** Whether any string (or object key) inside `value` contains U+0000. */
function containsNul(value: unknown): boolean {
  if (typeof value === "string") return value.includes("\u0000");
  if (Array.isArray(value)) return value.some(containsNul);
  if (value !== null && typeof value === "object") {
    for (const [k, v] of Object.entries(value)) if (k.includes("\u0000") || containsNul(v)) return true;
  }
  return false;
}
