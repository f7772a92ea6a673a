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
import { checkAuth, checkAuthAgainstAuthEvents, powerLevelValue, userPowerLevel } from "../../federation/protocol/auth-rules.ts";
import { resolveState } from "../../federation/protocol/state-resolution.ts";
import { unconflictedAuthEventIdsV1 } from "../../federation/protocol/state-resolution-v1.ts";
import { computeEventId, computeRoomIdFromCreateEvent, createEventIdOfRoom, referenceHashes } from "../../federation/protocol/event-hashes.ts";
import { signEvent } from "../../federation/protocol/event-signing.ts";
import { serverNameOf } from "../../federation/protocol/identifiers.ts";
import { MAX_PDU_BYTES, eventReferences, pduOf, referencedIds, type Pdu, type RoomEvent } from "../../federation/protocol/pdu.ts";
import { type StateMapKey, splitStateMapKey, stateMapKey } from "../../federation/protocol/room-state.ts";
import { type RoomVersionRules, roomVersionRules } from "../../federation/protocol/room-versions.ts";
import type { SigningKey } from "../../federation/protocol/signing.ts";
import { MatrixError, badJson, forbidden, notFound } from "../http/errors.ts";
import type { StoredEvent } from "./event-store.ts";
import {
  type NewStateGroup,
  MAX_CHAIN_LENGTH,
  type StateGroupRef,
  StateGroupIds,
  loadStateGroup,
  nextStateGroup,
  stateGroupEntryRows,
  stateGroupRef,
} from "./state-groups.ts";
import { unsafeTestBreak } from "../unsafe-test-break.ts";

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
  /** The servers of the joined members (ours included when one of our users is joined). */
  joinedServers(): string[];
  /** The current state, forward extremities and the deepest extremity's depth (read only). */
  currentState(): ReadonlyMap<StateMapKey, string>;
  forwardExtremities(): readonly string[];
  maxDepth(): number;
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

/**
 * More rows written with events stored from a room's past (`storeHistorical`: backfill), in their
 * transaction: the search index. `events` are the accepted ones, with the stream position each got.
 */
export type HistoricalWriteExtension = (
  tx: Database,
  roomId: string,
  events: ReadonlyArray<{ event: RoomEvent; streamOrdering: number }>,
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

/**
 * An event received from another server, after the checks that need no room state (format,
 * signatures, content hash: the PDU is the redacted form when the hash failed).
 */
export interface RemoteEventInput {
  eventId: string;
  pdu: Pdu;
  /**
   * The state before the event, when the caller knows it better than the event's prev_events can
   * tell (a join's state from send_join; the state fetched for an event whose prev_events are unknown).
   */
  stateBefore?: ReadonlyMap<StateMapKey, string>;
  /**
   * The state after prev_events this server does not hold, as the sender has it (/state_ids at the
   * prev event plus the event): resolved with the states after the prev_events we do hold, as if
   * we held them all.
   */
  prevStates?: ReadonlyMap<string, ReadonlyMap<StateMapKey, string>>;
  /**
   * The event becomes the room's only forward extremity and its state the current state (our own
   * join into a room through another server: what we knew of the room before is out of date).
   */
  resetsCurrent?: boolean;
  /**
   * A membership of a local user in a room this server is not in (an invite from another server,
   * our leave after rejecting one): stored as an outlier with a stream position, outside the room's
   * state, with the user's membership row (so their /sync sees it). Kept with its `unsigned`.
   */
  outOfBand?: { userId: string; membership: string };
}

/** What became of a received event. */
export interface RemoteEventOutcome {
  eventId: string;
  status: "accepted" | "soft-failed" | "rejected" | "duplicate" | "unplaced";
  /** Why it was rejected, soft-failed or could not be placed. */
  reason?: string;
  /** For unplaced events: the prev_events or auth_events this server does not have. */
  missing?: string[];
}

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
  /** State keys whose current value changed in the batch being built (written by writeEvents). */
  dirty: Set<StateMapKey>;
  /**
   * Joined members per server, built when first asked and kept current by each membership change
   * (so a join in a large room costs no walk over its members); `servers` lists its keys, rebuilt
   * when a server comes or goes.
   */
  serverCounts?: Map<string, number>;
  servers?: string[];
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
  /**
   * The accepted redaction of this event written in the same statement: set on its row as it is
   * inserted (the statement's update of `redacted_by` cannot see rows that statement inserts).
   */
  redactedBy?: string;
  /** Its rows as SQL text, built in its job's stage (so a value that cannot be written fails that job). */
  sql?: EventSql;
  /** State groups written with it besides newStateGroup (the state before a received event, a resolved state). */
  extraStateGroups?: NewStateGroup[];
  /** A received event stored before as an outlier: that row is replaced. */
  replacesOutlier?: boolean;
  /** Stored as an outlier with a stream position and a local membership (RemoteEventInput.outOfBand). */
  outOfBand?: { userId: string; membership: string };
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
  groups: string[];
  entries: string[];
  /** New full state snapshots too large for the statement: written before it, in chunks. */
  largeSnapshots: Array<ReturnType<typeof stateGroupEntryRows>>;
  /** An outlier row of the same event, deleted before the statement. */
  deleteOutlier: string | undefined;
  /** A local membership row (an out-of-band membership). */
  membership: string | undefined;
}

interface Job {
  prepare: Prepare;
  /** A job of received events (prepare is unused): their outcomes are filled in as they are built. */
  remote?: { inputs: RemoteEventInput[]; outcomes: RemoteEventOutcome[] };
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
  private readonly historicalExtensions: HistoricalWriteExtension[] = [];

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

  /** Adds writes to every store of historical events (see HistoricalWriteExtension). */
  extendHistoricalWrites(extension: HistoricalWriteExtension): void {
    this.historicalExtensions.push(extension);
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
    /** The room ID, chosen beforehand (versions before 12; a room upgrade names it in the tombstone first). */
    roomId?: string;
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
        roomId: rules.roomIdIsCreateEventId ? "" : (options.roomId ?? newRoomIdWithDomain(this.serverName)),
        rules,
        stateGroup: undefined,
        state: new Map(),
        memberships: new Map(),
        extremities: [],
        maxDepth: 0,
        events: new Map(),
        dirty: new Set(),
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
   * An event as this server would build it on the room's current state, unsigned and not stored
   * (make_join, make_leave, an invite another server must sign first), with whether the auth
   * rules allow it on that state. Undefined when the room is unknown.
   */
  async draft(roomId: string, template: EventTemplate): Promise<{ pdu: JsonObject; allowed: boolean; reason?: string; version: string }> {
    let out: { pdu: JsonObject; allowed: boolean; reason?: string; version: string } | undefined;
    await this.enqueue(roomId, async (view) => {
      const rules = view.rules;
      const state = view.currentState();
      const pdu = unsignedPdu(rules, roomId, template, { maxDepth: view.maxDepth(), extremities: view.forwardExtremities(), state }, this.now());
      if (rules.eventFormat === "v1") await this.hashReferences(view.event, rules, pdu);
      const keys = authTypesForEvent(rules, template).map(([type, stateKey]) => stateMapKey(type, stateKey));
      keys.push(stateMapKey("m.room.create", ""));
      const authState = new Map<StateMapKey, RoomEvent>();
      for (const key of keys) {
        const id = state.get(key);
        const found = id === undefined ? undefined : await view.event(id);
        if (found) authState.set(key, found);
      }
      const decision = checkAuth(rules, { ...(pdu as unknown as Pdu), event_id: "$draft" }, authState);
      out = { pdu, allowed: decision.allowed, ...(decision.allowed ? {} : { reason: decision.reason }), version: rules.id };
      return [];
    });
    return out!;
  }

  /** The servers of a room's joined members, when its current state is cached here. */
  cachedJoinedServers(roomId: string): string[] | undefined {
    const snapshot = this.snapshots.get(roomId);
    return snapshot ? joinedServersOf(snapshot) : undefined;
  }

  /**
   * Queues events received from other servers for a room (whose row exists) and waits until they are
   * committed: each is checked against its auth events, the state before it (from its prev_events,
   * or `stateBefore`) and the current state, and stored as accepted, rejected or soft-failed; the
   * current state and forward extremities follow (state resolution where forks meet). Events that
   * cannot be placed (unknown prev_events or auth_events) are not stored: their outcome says what
   * is missing. Outcomes in input order.
   */
  async enqueueRemote(roomId: string, inputs: RemoteEventInput[]): Promise<RemoteEventOutcome[]> {
    if (inputs.length === 0) return [];
    const remote = { inputs, outcomes: [] as RemoteEventOutcome[] };
    await new Promise<PersistedEvent[]>((resolve, reject) => {
      let jobs = this.pending.get(roomId);
      if (!jobs) this.pending.set(roomId, (jobs = []));
      jobs.push({ prepare: () => [], remote, resolve, reject });
      if (!this.busy.has(roomId)) this.ready.add(roomId);
      this.pump();
    });
    return remote.outcomes;
  }

  /**
   * Stores events as outliers (known, checked against their own auth events, outside the room's
   * timeline and state): the state and auth chain a join brings, auth events fetched for an event.
   * Creates the room's row first when `newRoom` is given and the room is unknown. Events already
   * stored are left as they are.
   */
  async storeOutliers(
    roomId: string,
    events: ReadonlyArray<{ eventId: string; pdu: Pdu; rejectedReason?: string }>,
    newRoom?: { version: string; creator: string },
  ): Promise<void> {
    const L = sqlLiteral;
    const room = L(roomId);
    await this.inTransaction(async (t) => {
      await t.start();
      const tx = t.db;
      if (newRoom) {
        await tx.execute(sql`insert into rooms (room_id, room_version, creator, is_public, created_ts, forward_extremities, max_depth, current_state_group)
          values (${roomId}, ${newRoom.version}, ${newRoom.creator}, false, ${this.now()}, '{}'::text[], 0, null) on conflict (room_id) do nothing`);
      }
      for (let c = 0; c < events.length; c += 500) {
        const chunk = events.slice(c, c + 500);
        const rows = chunk.map(({ eventId, pdu, rejectedReason }) => {
          const { unsigned: _u, ...stored } = pdu;
          return `(${L(eventId)}, ${room}, ${L(pdu.type)}, ${L(pdu.state_key ?? null)}, ${L(pdu.sender)}, ${L(pdu.origin_server_ts)}, ${L(pdu.depth)}, ${L(JSON.stringify(stored))}, null, ${L(pdu.depth)}, true, ${L(rejectedReason ?? null)}, false)`;
        });
        const auth = chunk.flatMap(({ eventId, pdu }) => referencedIds(pdu.auth_events).map((a) => `(${L(eventId)}, ${L(a)}, ${room})`));
        await tx.execute(sql.raw(`insert into events (event_id, room_id, type, state_key, sender, origin_server_ts, depth, json,
          stream_ordering, topological_ordering, outlier, rejected_reason, soft_failed) values ${rows.join(", ")} on conflict (event_id) do nothing`));
        if (auth.length) await tx.execute(sql.raw(`insert into event_auth (event_id, auth_event_id, room_id) values ${auth.join(", ")} on conflict do nothing`));
      }
    });
  }

  /**
   * Stores events fetched from the room's past (backfill): in the timeline, before everything we
   * had (negative stream positions, so /sync never sees them as new), outside the current state and
   * forward extremities. Each event's state before is `stateBeforeGroup` (the state before the
   * event we had that follows them); events already in the timeline are skipped, outliers replaced.
   * Answers how many were stored.
   */
  async storeHistorical(
    roomId: string,
    events: ReadonlyArray<{ eventId: string; pdu: Pdu; rejectedReason?: string; stateBeforeGroup: number | null }>,
  ): Promise<number> {
    if (events.length === 0) return 0;
    const L = sqlLiteral;
    const room = L(roomId);
    return this.inTransaction(async (t) => {
      await t.start();
      const tx = t.db;
      const ids = events.map((e) => e.eventId);
      const present = new Set(
        rowsOf<{ event_id: string }>(
          await tx.execute(sql`select event_id from events where not outlier and event_id in (${sql.join(
            ids.map((id) => sql`${id}`),
            sql`, `,
          )})`),
        ).map((r) => r.event_id),
      );
      // Oldest last: the deepest event gets the position nearest zero.
      const fresh = events.filter((e) => !present.has(e.eventId)).sort((a, b) => Number(b.pdu.depth) - Number(a.pdu.depth));
      if (fresh.length === 0) return 0;
      const [pos] = rowsOf<{ position: string | number }>(
        await tx.execute(sql`insert into stream_positions (stream, position) values ('backfill', ${-fresh.length})
          on conflict (stream) do update set position = stream_positions.position - ${fresh.length} returning position`),
      );
      const lowest = Number(pos!.position);
      // An outlier we had (the state a join brought) keeps the verdict it got then.
      const outliers = new Map(
        rowsOf<{ event_id: string; rejected_reason: string | null }>(
          await tx.execute(sql.raw(`delete from events where outlier and event_id in (${fresh.map((e) => L(e.eventId)).join(", ")}) returning event_id, rejected_reason`)),
        ).map((r) => [r.event_id, r.rejected_reason]),
      );
      const rows: string[] = [];
      const edges: string[] = [];
      const auth: string[] = [];
      const relations: string[] = [];
      const accepted: Array<{ event: RoomEvent; streamOrdering: number }> = [];
      fresh.forEach((e, k) => {
        const { unsigned: _u, ...pdu } = e.pdu;
        const id = L(e.eventId);
        const position = lowest + fresh.length - 1 - k;
        const rejectedReason = outliers.has(e.eventId) ? outliers.get(e.eventId)! : (e.rejectedReason ?? null);
        rows.push(
          `(${id}, ${room}, ${L(pdu.type)}, ${L(pdu.state_key ?? null)}, ${L(pdu.sender)}, ${L(pdu.origin_server_ts)}, ${L(pdu.depth)}, ${L(JSON.stringify(pdu))}, ` +
            `${position}, ${L(pdu.depth)}, ${L(rejectedReason)}, false, ${L(e.stateBeforeGroup)}::bigint, null::bigint, null, false)`,
        );
        if (rejectedReason === null) accepted.push({ event: { ...pdu, room_id: roomId, event_id: e.eventId } as RoomEvent, streamOrdering: position });
        for (const p of referencedIds(pdu.prev_events)) edges.push(`(${id}, ${L(p)}, ${room})`);
        for (const a of referencedIds(pdu.auth_events)) auth.push(`(${id}, ${L(a)}, ${room})`);
        for (const r of relationRows(e.eventId, pdu.content)) relations.push(`(${id}, ${L(r.relType)}, ${L(r.relatesTo)}, ${room}, ${L(r.key)})`);
      });
      await tx.execute(sql.raw(`insert into events (event_id, room_id, type, state_key, sender, origin_server_ts, depth, json,
        stream_ordering, topological_ordering, rejected_reason, soft_failed, state_before_group, state_after_group, replaces_state, outlier)
        values ${rows.join(", ")}`));
      if (edges.length) await tx.execute(sql.raw(`insert into event_edges (event_id, prev_event_id, room_id) values ${edges.join(", ")} on conflict do nothing`));
      if (auth.length) await tx.execute(sql.raw(`insert into event_auth (event_id, auth_event_id, room_id) values ${auth.join(", ")} on conflict do nothing`));
      if (relations.length) {
        await tx.execute(sql.raw(`insert into event_relations (event_id, rel_type, relates_to_id, room_id, aggregation_key) values ${relations.join(", ")} on conflict do nothing`));
      }
      for (const extension of this.historicalExtensions) {
        for (const statement of await extension(tx, roomId, accepted)) await tx.execute(statement);
      }
      return fresh.length;
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
    snapshot.dirty.clear();
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
      if (job.remote) {
        // Each received event succeeds or fails alone; the job always has an outcome.
        for (const e of await this.buildRemote(tx, snapshot, undo, job.remote)) {
          e.sql = this.eventSql(e, room, first + all.length, ts, roomId);
          e.persisted = persistedEvent(snapshot, e, 0);
          all.push(e);
        }
        outcomes.set(job, { ok: true, events: all.slice(start) });
        if (all.length > start) built.push({ job, at, mark, start });
        continue;
      }
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
    if (this.logger.isLevelEnabled("debug")) {
      // Ids and types only: what was stored where, never the content.
      this.logger.debug({ events: events.map((e) => ({ eventId: e.eventId, roomId: e.roomId, type: e.type, position: e.streamOrdering })) }, "events persisted");
    }
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
    return { roomId, rules, stateGroup: ref, state, memberships, extremities, maxDepth, events: new Map(), dirty: new Set() };
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
      joinedServers: () => joinedServersOf(snapshot),
      currentState: () => snapshot.state,
      forwardExtremities: () => snapshot.extremities,
      maxDepth: () => snapshot.maxDepth,
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

  /**
   * Room versions 1–2: turns the prev_events and auth_events of an unsigned PDU (event IDs) into
   * `[event_id, {sha256: reference hash}]` pairs, as Synapse writes them.
   */
  private async hashReferences(lookUp: (eventId: string) => Promise<RoomEvent | undefined>, rules: RoomVersionRules, pdu: JsonObject): Promise<void> {
    const hashes = new Map<string, string>();
    for (const id of [...(pdu.prev_events as string[]), ...(pdu.auth_events as string[])]) {
      if (hashes.has(id)) continue;
      const event = await lookUp(id);
      if (event) hashes.set(id, referenceHashes(rules, pduOf(rules, event)).sha256);
    }
    pdu.prev_events = eventReferences(rules, pdu.prev_events as string[], (id) => hashes.get(id));
    pdu.auth_events = eventReferences(rules, pdu.auth_events as string[], (id) => hashes.get(id));
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
   * Builds the stored form of a job's received events, in order (see enqueueRemote). Each event
   * succeeds or fails alone: a throw undoes its own changes to the snapshot and leaves it unplaced.
   */
  private async buildRemote(tx: Database, snapshot: RoomSnapshot, undo: UndoLog, job: NonNullable<Job["remote"]>): Promise<EventToStore[]> {
    const rules = snapshot.rules;
    const out: EventToStore[] = [];
    const wanted = new Set<string>();
    for (const { eventId, pdu } of job.inputs) {
      wanted.add(eventId);
      for (const id of referencedIds(pdu.prev_events)) wanted.add(id);
      for (const id of referencedIds(pdu.auth_events)) wanted.add(id);
    }
    if (rules.roomIdIsCreateEventId) wanted.add(createEventIdOfRoom(snapshot.roomId));
    const known = new Map<string, KnownEvent>();
    // Events another room holds under an ID these events name: never prev events here, but an auth
    // event in another room is a reason to reject (rule "auth events in the same room").
    const foreign = new Map<string, RoomEvent>();
    const ids = [...wanted];
    for (let c = 0; c < ids.length; c += 500) {
      const rows = rowsOf<{
        event_id: string;
        room_id: string;
        json: string;
        outlier: boolean;
        rejected: boolean;
        soft_failed: boolean;
        state_before_group: string | number | null;
        state_after_group: string | number | null;
      }>(
        await tx.execute(sql`select event_id, room_id, json, outlier, rejected_reason is not null as rejected, soft_failed,
            state_before_group, state_after_group
          from events where event_id in (${sql.join(
            ids.slice(c, c + 500).map((id) => sql`${id}`),
            sql`, `,
          )})`),
      );
      for (const r of rows) {
        if (r.room_id !== snapshot.roomId) {
          foreign.set(r.event_id, { ...(JSON.parse(r.json) as Pdu), event_id: r.event_id });
          continue;
        }
        const group = r.state_after_group ?? r.state_before_group;
        known.set(r.event_id, {
          event: { ...(JSON.parse(r.json) as Pdu), event_id: r.event_id },
          outlier: r.outlier,
          rejected: r.rejected,
          softFailed: r.soft_failed,
          group: group === null ? undefined : Number(group),
          stored: true,
        });
      }
    }
    for (const input of job.inputs) {
      const mark = undo.mark();
      try {
        const { toStore, outcome } = await this.buildOneRemote(tx, snapshot, undo, input, known, foreign);
        job.outcomes.push(outcome);
        if (toStore) out.push(toStore);
      } catch (err) {
        undo.rollbackTo(mark);
        if (isDatabaseError(err)) throw err;
        this.logger.warn({ err, eventId: input.eventId, roomId: snapshot.roomId }, "a received event could not be placed");
        job.outcomes.push({ eventId: input.eventId, status: "unplaced", reason: err instanceof Error ? err.message : "internal error" });
      }
    }
    return out;
  }

  private async buildOneRemote(
    tx: Database,
    snapshot: RoomSnapshot,
    undo: UndoLog,
    input: RemoteEventInput,
    known: Map<string, KnownEvent>,
    foreign: ReadonlyMap<string, RoomEvent>,
  ): Promise<{ toStore?: EventToStore; outcome: RemoteEventOutcome }> {
    const { eventId } = input;
    const rules = snapshot.rules;
    const unplaced = (reason: string, missing?: string[]) => ({ outcome: { eventId, status: "unplaced" as const, reason, ...(missing ? { missing } : {}) } });
    const existing = known.get(eventId);
    if (existing && !existing.outlier) return { outcome: { eventId, status: "duplicate" } };
    if (input.outOfBand) {
      if (existing) return { outcome: { eventId, status: "duplicate" } };
      const pdu = input.pdu;
      if (containsNul([pdu.type, pdu.state_key ?? "", pdu.sender])) return unplaced("the event's type, state key or sender holds NUL");
      known.set(eventId, { event: { ...pdu, event_id: eventId }, outlier: true, rejected: false, softFailed: false, group: undefined, stored: false });
      const toStore: EventToStore = {
        eventId,
        pdu,
        json: JSON.stringify(pdu),
        stateBefore: undefined,
        stateAfter: undefined,
        newStateGroup: undefined,
        replacesState: undefined,
        rejectedReason: undefined,
        softFailed: false,
        txn: undefined,
        redactsEventId: undefined,
        outOfBand: input.outOfBand,
      };
      return { toStore, outcome: { eventId, status: "accepted" } };
    }
    const { unsigned: _unsigned, ...pdu } = input.pdu;
    if (pdu.room_id !== snapshot.roomId || pdu.type === "m.room.create") return unplaced("the event is not in this room's timeline");
    if (containsNul([pdu.type, pdu.state_key ?? "", pdu.sender])) return unplaced("the event's type, state key or sender holds NUL");
    const event: RoomEvent = { ...(pdu as Pdu), event_id: eventId };
    const key = typeof pdu.state_key === "string" ? stateMapKey(pdu.type, pdu.state_key) : undefined;

    // Its auth events must all be known (the caller fetches them first).
    const createId = rules.roomIdIsCreateEventId ? createEventIdOfRoom(snapshot.roomId) : undefined;
    const missingAuth = [...referencedIds(pdu.auth_events), ...(createId ? [createId] : [])].filter((id) => !known.has(id) && !foreign.has(id));
    if (missingAuth.length > 0) return unplaced("unknown auth events", [...new Set(missingAuth)]);
    const authDecision = checkAuthAgainstAuthEvents(rules, event, (id) => {
      const k = known.get(id);
      if (k) return { event: k.event, rejected: k.rejected };
      const elsewhere = foreign.get(id);
      return elsewhere ? { event: elsewhere, rejected: false } : undefined;
    });

    // The state before it.
    let before: ReadonlyMap<StateMapKey, string>;
    let beforeRef: StateGroupRef | undefined;
    const extraStateGroups: NewStateGroup[] = [];
    if (input.stateBefore) {
      before = new Map(input.stateBefore);
      const group: NewStateGroup = { id: await this.groupIds.next(tx), prev: undefined, chainLength: 0, entries: new Map(before) };
      extraStateGroups.push(group);
      beforeRef = { id: group.id, chainLength: 0 };
    } else {
      const prevs = [...new Set(referencedIds(pdu.prev_events))];
      if (prevs.length === 0) return unplaced("the event has no prev_events");
      const supplied = input.prevStates;
      const missingPrev = prevs.filter((id) => {
        if (supplied?.has(id)) return false;
        const k = known.get(id);
        return !k || k.outlier || k.group === undefined;
      });
      if (missingPrev.length > 0) return unplaced("unknown prev events", missingPrev);
      const groups = new Map<number, KnownEvent>();
      const suppliedStates: Array<ReadonlyMap<StateMapKey, string>> = [];
      for (const id of prevs) {
        const k = known.get(id);
        if (k && !k.outlier && k.group !== undefined) groups.set(k.group, k);
        else suppliedStates.push(supplied!.get(id)!);
      }
      const current = snapshot.stateGroup?.id;
      if (suppliedStates.length > 0) {
        // States of prev events we lack, with those of the ones we hold: resolved, kept whole.
        const states: Array<ReadonlyMap<StateMapKey, string>> = [...suppliedStates];
        for (const [group, k] of groups) {
          if (group === current) states.push(snapshot.state);
          else if (k.state) states.push(k.state);
          else if (k.stored) states.push(await loadStateGroup(tx, group));
          else return unplaced("its prev events' state is not at hand in this batch; send it again");
        }
        before = states.length === 1 ? new Map(states[0]) : await this.resolveStates(tx, snapshot, states, known);
        const group: NewStateGroup = { id: await this.groupIds.next(tx), prev: undefined, chainLength: 0, entries: new Map(before) };
        extraStateGroups.push(group);
        beforeRef = { id: group.id, chainLength: 0 };
      } else if (groups.size === 1 && current !== undefined && groups.has(current)) {
        before = snapshot.state;
        beforeRef = snapshot.stateGroup;
      } else {
        const states: Array<{ state: ReadonlyMap<StateMapKey, string>; ref: StateGroupRef }> = [];
        for (const [group, k] of groups) {
          if (group === current) states.push({ state: snapshot.state, ref: snapshot.stateGroup! });
          else if (k.state && k.ref) states.push({ state: k.state, ref: k.ref });
          else if (k.stored) states.push({ state: await loadStateGroup(tx, group), ref: (await stateGroupRef(tx, group)) ?? { id: group, chainLength: MAX_CHAIN_LENGTH } });
          else return unplaced("its prev events' state is not at hand in this batch; send it again");
        }
        if (states.length === 1) {
          before = states[0]!.state;
          beforeRef = states[0]!.ref;
        } else {
          const resolved = await this.resolveStates(tx, snapshot, states.map((x) => x.state), known);
          const group = nextStateGroup(await this.groupIds.next(tx), states[0]!.ref, stateDiff(states[0]!.state, resolved), resolved);
          extraStateGroups.push(group);
          before = resolved;
          beforeRef = { id: group.id, chainLength: group.chainLength };
        }
      }
    }

    // Auth against the state before it, then (soft-fail) against the current state.
    let rejectedReason = authDecision.allowed ? undefined : `not allowed by its auth events: ${authDecision.reason}`;
    if (rejectedReason === undefined) {
      const decision = checkAuth(rules, event, await this.authStateFrom(tx, snapshot, before, event, known));
      if (!decision.allowed) rejectedReason = `not allowed by the state before it: ${decision.reason}`;
    }
    if (rejectedReason !== undefined && unsafeTestBreak("skip-pdu-auth-check")) rejectedReason = undefined;
    let softFailReason: string | undefined;
    if (rejectedReason === undefined && before !== snapshot.state && !input.resetsCurrent && snapshot.stateGroup !== undefined) {
      const decision = checkAuth(rules, event, await this.authStateFrom(tx, snapshot, snapshot.state, event, known));
      if (!decision.allowed && !unsafeTestBreak("skip-soft-fail")) softFailReason = decision.reason;
    }

    const redacts = pdu.type === "m.room.redaction" ? (rules.redactsInContent ? pdu.content.redacts : pdu.redacts) : undefined;
    // The event it redacts, looked up once: in this batch, else in the database (any room).
    let redacted: RoomEvent | undefined;
    if (typeof redacts === "string" && rejectedReason === undefined) {
      redacted = known.get(redacts)?.event;
      if (!redacted) {
        const [row] = rowsOf<{ json: string; room_id: string }>(await tx.execute(sql`select json, room_id from events where event_id = ${redacts}`));
        if (row?.room_id === snapshot.roomId) redacted = { ...(JSON.parse(row.json) as Pdu), event_id: redacts };
        // A redaction of another room's event can never be applied ("Handling redactions": only
        // once both events are received and valid), so clients never see it: kept soft-failed.
        else if (row && softFailReason === undefined) softFailReason = `it redacts ${redacts}, an event of another room`;
      }
    }
    const toStore: EventToStore = {
      eventId,
      pdu: pdu as Pdu,
      json: JSON.stringify(pdu),
      stateBefore: beforeRef,
      stateAfter: undefined,
      newStateGroup: undefined,
      replacesState: key === undefined ? undefined : before.get(key),
      rejectedReason,
      softFailed: softFailReason !== undefined,
      txn: undefined,
      redactsEventId: redacted && (await this.mayRedact(tx, snapshot, before, event, redacted, known)) ? redacted.event_id : undefined,
      extraStateGroups,
      replacesOutlier: existing?.outlier === true,
    };
    const entry: KnownEvent = { event, outlier: false, rejected: rejectedReason !== undefined, softFailed: softFailReason !== undefined, group: beforeRef?.id, stored: false };
    if (rejectedReason !== undefined) {
      known.set(eventId, entry);
      return { toStore, outcome: { eventId, status: "rejected", reason: rejectedReason } };
    }

    const prevSet = new Set(referencedIds(pdu.prev_events));
    const extremities = input.resetsCurrent ? [eventId] : [...snapshot.extremities.filter((x) => !prevSet.has(x)), eventId];
    const depth = Math.max(input.resetsCurrent ? 0 : snapshot.maxDepth, Number(pdu.depth));
    if (before === snapshot.state && softFailReason === undefined) {
      // Built on the current state (the common case): applied as a local event is.
      await this.applyToSnapshot(tx, snapshot, undo, toStore, event);
      snapshot.extremities = extremities;
      snapshot.maxDepth = depth;
      entry.group = snapshot.stateGroup?.id;
      entry.ref = snapshot.stateGroup;
      known.set(eventId, entry);
      return { toStore, outcome: { eventId, status: "accepted" } };
    }

    let after: ReadonlyMap<StateMapKey, string> = before;
    let afterRef = beforeRef;
    if (key !== undefined) {
      const afterMap = new Map(before);
      afterMap.set(key, eventId);
      const group = nextStateGroup(await this.groupIds.next(tx), beforeRef, new Map([[key, eventId]]), afterMap);
      toStore.newStateGroup = group;
      toStore.stateAfter = { id: group.id, chainLength: group.chainLength };
      after = afterMap;
      afterRef = toStore.stateAfter;
    }
    entry.group = afterRef?.id;
    entry.ref = afterRef;
    entry.state = after;
    known.set(eventId, entry);
    if (softFailReason !== undefined) {
      return { toStore, outcome: { eventId, status: "soft-failed", reason: softFailReason } };
    }

    // It becomes part of the current state: alone when it follows every forward extremity (or
    // resets them), else resolved with the current state.
    let current: ReadonlyMap<StateMapKey, string> = after;
    let currentRef = afterRef!;
    if (extremities.length > 1) {
      current = await this.resolveStates(tx, snapshot, [snapshot.state, after], known);
      const changes = stateDiff(after, current);
      if (changes.size > 0) {
        const group = nextStateGroup(await this.groupIds.next(tx), afterRef, changes, current);
        extraStateGroups.push(group);
        currentRef = { id: group.id, chainLength: group.chainLength };
      }
    }
    await this.replaceCurrentState(tx, snapshot, undo, current, currentRef, extremities, depth, known);
    if (key !== undefined) snapshot.events.set(eventId, event);
    return { toStore, outcome: { eventId, status: "accepted" } };
  }

  /** The state events the auth rules read for `event`, from `state`. */
  private async authStateFrom(
    tx: Database,
    snapshot: RoomSnapshot,
    state: ReadonlyMap<StateMapKey, string>,
    event: RoomEvent,
    known: Map<string, KnownEvent>,
  ): Promise<Map<StateMapKey, RoomEvent>> {
    const keys = authTypesForEvent(snapshot.rules, event as unknown as EventTemplate).map(([type, stateKey]) => stateMapKey(type, stateKey));
    keys.push(stateMapKey("m.room.create", ""));
    const ids = keys.map((k) => state.get(k)).filter((id): id is string => id !== undefined && !known.has(id));
    await this.loadEvents(tx, snapshot, ids);
    const authState = new Map<StateMapKey, RoomEvent>();
    for (const k of keys) {
      const id = state.get(k);
      const found = id === undefined ? undefined : (known.get(id)?.event ?? snapshot.events.get(id));
      if (found) authState.set(k, found);
    }
    return authState;
  }

  /**
   * Whether a received redaction takes effect: its sender's server sent the original, or the
   * sender has the redact power level in the state before it ("Handling redactions").
   */
  private async mayRedact(
    tx: Database,
    snapshot: RoomSnapshot,
    state: ReadonlyMap<StateMapKey, string>,
    redaction: RoomEvent,
    original: RoomEvent,
    known: Map<string, KnownEvent>,
  ): Promise<boolean> {
    if (serverNameOf(original.sender) === serverNameOf(redaction.sender)) return true;
    const ids = [state.get(stateMapKey("m.room.create", "")), state.get(stateMapKey("m.room.power_levels", ""))].filter((x): x is string => !!x);
    await this.loadEvents(tx, snapshot, ids.filter((id) => !known.has(id)));
    const get = (id: string | undefined) => (id === undefined ? undefined : (known.get(id)?.event ?? snapshot.events.get(id)));
    const create = get(state.get(stateMapKey("m.room.create", "")));
    const powerLevels = get(state.get(stateMapKey("m.room.power_levels", "")));
    const level = userPowerLevel(snapshot.rules, redaction.sender, create, powerLevels);
    const needed = powerLevelValue(snapshot.rules, powerLevels?.content.redact) ?? 50;
    return level >= needed;
  }

  /** State resolution of several states of the room (the events and auth chains it reads are loaded). */
  private async resolveStates(
    tx: Database,
    snapshot: RoomSnapshot,
    states: ReadonlyArray<ReadonlyMap<StateMapKey, string>>,
    known: Map<string, KnownEvent>,
  ): Promise<Map<StateMapKey, string>> {
    const conflicted = new Set<string>();
    const keys = new Set<StateMapKey>();
    for (const state of states) for (const k of state.keys()) keys.add(k);
    for (const k of keys) {
      const first = states[0]!.get(k);
      if (states.every((state) => state.get(k) === first)) continue;
      for (const state of states) {
        const id = state.get(k);
        if (id !== undefined) conflicted.add(id);
      }
    }
    if (conflicted.size === 0) return new Map(states[0]);
    // The conflicted events and their auth chains: from this batch, and from the database.
    const events = new Map<string, { event: RoomEvent; rejected: boolean }>();
    const seeds = new Set<string>();
    const stack = [...conflicted];
    while (stack.length > 0) {
      const id = stack.pop()!;
      if (events.has(id) || seeds.has(id)) continue;
      const k = known.get(id);
      const cached = k?.event ?? snapshot.events.get(id);
      if (cached && (!k || !k.stored)) {
        events.set(id, { event: cached, rejected: k?.rejected ?? false });
        stack.push(...referencedIds(cached.auth_events));
      } else seeds.add(id);
    }
    // In v12 no auth_events name the create event (the room ID does), but every auth chain holds it.
    if (snapshot.rules.roomIdIsCreateEventId) {
      const createId = createEventIdOfRoom(snapshot.roomId);
      const cached = snapshot.events.get(createId);
      if (cached) events.set(createId, { event: cached, rejected: false });
      else if (!events.has(createId)) seeds.add(createId);
    }
    if (seeds.size > 0) {
      const rows = rowsOf<{ event_id: string; json: string; rejected: boolean }>(
        await tx.execute(sql`with recursive chain(id) as (
            select unnest(array[${sql.join(
              [...seeds].map((id) => sql`${id}`),
              sql`, `,
            )}]::text[])
            union
            select a.auth_event_id from event_auth a join chain c on a.event_id = c.id
          )
          select e.event_id, e.json, e.rejected_reason is not null as rejected from events e join chain c on c.id = e.event_id`),
      );
      for (const r of rows) if (!events.has(r.event_id)) events.set(r.event_id, { event: { ...(JSON.parse(r.json) as Pdu), event_id: r.event_id }, rejected: r.rejected });
    }
    const fetchEvent = (id: string) => events.get(id)?.event;
    const isRejected = (id: string) => events.get(id)?.rejected ?? false;
    if (snapshot.rules.stateResolution === "v1") {
      // v1 checks conflicted events against the unconflicted state, not their auth chains: load
      // the unconflicted events of the types their auth rules read.
      const wanted = [...unconflictedAuthEventIdsV1(snapshot.rules, states, fetchEvent, { isRejected })].filter((id) => !events.has(id));
      for (const id of wanted) {
        const k = known.get(id);
        const cached = k?.event ?? snapshot.events.get(id);
        if (cached) events.set(id, { event: cached, rejected: k?.rejected ?? false });
      }
      const missing = wanted.filter((id) => !events.has(id));
      if (missing.length > 0) {
        const rows = rowsOf<{ event_id: string; json: string; rejected: boolean }>(
          await tx.execute(sql`select event_id, json, rejected_reason is not null as rejected from events where event_id in (${sql.join(
            missing.map((id) => sql`${id}`),
            sql`, `,
          )})`),
        );
        for (const r of rows) events.set(r.event_id, { event: { ...(JSON.parse(r.json) as Pdu), event_id: r.event_id }, rejected: r.rejected });
      }
    }
    if (unsafeTestBreak("state-res-last-writer-wins")) return lastWriterWins(states, fetchEvent);
    return resolveState(snapshot.rules, states, fetchEvent, { isRejected });
  }

  /**
   * Makes `state` the room's current state (recording how to undo it): the changed keys are marked
   * for writing and the memberships follow.
   */
  private async replaceCurrentState(
    tx: Database,
    snapshot: RoomSnapshot,
    undo: UndoLog,
    state: ReadonlyMap<StateMapKey, string>,
    ref: StateGroupRef,
    extremities: string[],
    maxDepth: number,
    known: Map<string, KnownEvent>,
  ): Promise<void> {
    const previous = {
      state: snapshot.state,
      memberships: snapshot.memberships,
      extremities: snapshot.extremities,
      maxDepth: snapshot.maxDepth,
      stateGroup: snapshot.stateGroup,
      dirty: snapshot.dirty,
    };
    const changed = [...stateDiff(previous.state, state).keys()];
    const memberIds = changed
      .filter((k) => k.startsWith("m.room.member\u0000"))
      .map((k) => state.get(k))
      .filter((id): id is string => id !== undefined && !known.has(id));
    await this.loadEvents(tx, snapshot, memberIds);
    const memberships = new Map(previous.memberships);
    const dirty = new Set(previous.dirty);
    for (const k of changed) {
      dirty.add(k);
      const [type, stateKey] = splitStateMapKey(k);
      if (type !== "m.room.member") continue;
      const id = state.get(k);
      const membership = id === undefined ? undefined : (known.get(id)?.event ?? snapshot.events.get(id))?.content.membership;
      if (typeof membership === "string") memberships.set(stateKey, membership);
      else memberships.delete(stateKey);
    }
    undo.push(() => {
      snapshot.state = previous.state;
      snapshot.memberships = previous.memberships;
      snapshot.extremities = previous.extremities;
      snapshot.maxDepth = previous.maxDepth;
      snapshot.stateGroup = previous.stateGroup;
      snapshot.dirty = previous.dirty;
      snapshot.serverCounts = undefined;
      snapshot.servers = undefined;
    });
    snapshot.state = new Map(state);
    snapshot.memberships = memberships;
    snapshot.dirty = dirty;
    snapshot.extremities = extremities;
    snapshot.maxDepth = maxDepth;
    snapshot.stateGroup = ref;
    snapshot.serverCounts = undefined;
    snapshot.servers = undefined;
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
    const pdu = unsignedPdu(rules, snapshot.roomId, template, snapshot, this.now());
    if (rules.eventFormat === "v1") {
      // Room versions 1–2: the event carries an ID this server chose, and names its prev and auth
      // events with their reference hashes.
      pdu.event_id = newEventIdWithDomain(this.serverName);
      await this.hashReferences(this.view(tx, snapshot).event, rules, pdu);
    }

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
      const wasDirty = snapshot.dirty.has(key);
      const joinedChange = isMember ? Number(membership === "join") - Number(previousMembership === "join") : 0;
      undo.push(() => {
        if (replaced === undefined) snapshot.state.delete(key);
        else snapshot.state.set(key, replaced);
        snapshot.events.delete(event.event_id);
        if (!wasDirty) snapshot.dirty.delete(key);
        if (isMember) {
          if (joinedChange !== 0) countJoined(snapshot, stateKey, -joinedChange);
          if (previousMembership === undefined) snapshot.memberships.delete(stateKey);
          else snapshot.memberships.set(stateKey, previousMembership);
        }
      });
      toStore.replacesState = replaced;
      snapshot.state.set(key, event.event_id);
      snapshot.dirty.add(key);
      snapshot.events.set(event.event_id, event);
      if (membership !== undefined) {
        snapshot.memberships.set(stateKey, membership);
        if (joinedChange !== 0) countJoined(snapshot, stateKey, joinedChange);
      }
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
    const deletedStateRows: string[] = [];
    const membershipRows: string[] = [];
    const relationRowsSql: string[] = [];
    const txnRows: string[] = [];
    const roomUpdates: string[] = [];
    const ts = this.now();
    let index = 0;
    let extensionCount = 0;

    // Redactions whose target is written in the same statement: the target's row carries them.
    const redactedInBatch = new Map<string, string>();
    for (const { events } of writes) {
      for (const e of events) {
        if (e.redactsEventId !== undefined && e.rejectedReason === undefined && !e.softFailed) redactedInBatch.set(e.redactsEventId, e.eventId);
      }
    }
    for (const { snapshot, events, newRoom, extensionSql } of writes) {
      const roomId = snapshot.roomId;
      const room = L(roomId);
      const first = index;
      for (const e of events) {
        const i = index++;
        const redactedBy = redactedInBatch.get(e.eventId);
        if (redactedBy !== undefined && e.redactedBy !== redactedBy && e.rejectedReason === undefined) {
          e.redactedBy = redactedBy;
          e.sql = undefined;
        }
        // Events of a batch come with their text, built in their job's stage (buildJobs).
        const text = e.sql?.index === i ? e.sql : this.eventSql(e, room, i, ts, roomId);
        eventRows.push(text.event);
        for (const x of text.edges) edges.push(x);
        for (const x of text.auth) auth.push(x);
        for (const x of text.relations) relationRowsSql.push(x);
        if (text.txn !== undefined) txnRows.push(text.txn);
        if (text.redaction !== undefined) ctes.push(text.redaction);
        for (const x of text.groups) groupRows.push(x);
        for (const x of text.entries) entryRows.push(x);
        if (text.deleteOutlier !== undefined) await tx.execute(sql.raw(text.deleteOutlier));
        if (text.membership !== undefined) membershipRows.push(text.membership);
        for (const rows of text.largeSnapshots) {
          for (let c = 0; c < rows.length; c += 2_000) {
            await tx.execute(sql`insert into state_group_entries (group_id, type, state_key, event_id) values ${sql.join(
              rows.slice(c, c + 2_000).map(([g, type, k, eid]) => sql`(${g}, ${type}, ${k}, ${eid})`),
              sql`, `,
            )}`);
          }
        }
      }

      // The current state and local memberships: every key whose value the batch changed (by an
      // event of the batch, or by state resolution when forks meet) gets the snapshot's value. A
      // local membership's stream position is that of the event that set it, or the batch's last.
      const indexOf = new Map<string, number>();
      events.forEach((e, k) => indexOf.set(e.eventId, first + k));
      const lastIndex = first + events.length - 1;
      for (const key of snapshot.dirty) {
        const [type, stateKey] = splitStateMapKey(key);
        const eventId = snapshot.state.get(key);
        if (eventId === undefined) {
          deletedStateRows.push(`(${room}, ${L(type)}, ${L(stateKey)})`);
          continue;
        }
        const membership = type === "m.room.member" ? (snapshot.memberships.get(stateKey) ?? null) : null;
        currentRows.push(`(${room}, ${L(type)}, ${L(stateKey)}, ${L(eventId)}, ${L(membership)})`);
        if (type === "m.room.member" && membership !== null && serverNameOf(stateKey) === this.serverName) {
          membershipRows.push(`(${L(stateKey)}, ${room}, ${L(membership)}, ${L(eventId)}, ${positionOf(indexOf.get(eventId) ?? lastIndex)})`);
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
        stream_ordering, topological_ordering, rejected_reason, soft_failed, state_before_group, state_after_group, replaces_state, outlier,
        redacted_by)
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
    if (deletedStateRows.length) {
      head.push(`curdel as (delete from current_state where (room_id, type, state_key) in (values ${deletedStateRows.join(", ")}))`);
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
        `${L(e.stateBefore?.id ?? null)}::bigint, ${L(e.stateAfter?.id ?? null)}::bigint, ${L(e.replacesState ?? null)}, ${L(e.outOfBand !== undefined)}, ` +
        `${L(e.redactedBy ?? null)})`,
      edges: referencedIds(e.pdu.prev_events).map((p) => `(${id}, ${L(p)}, ${room})`),
      auth: referencedIds(e.pdu.auth_events).map((a) => `(${id}, ${L(a)}, ${room})`),
      relations: relationRows(e.eventId, e.pdu.content).map((r) => `(${id}, ${L(r.relType)}, ${L(r.relatesTo)}, ${room}, ${L(r.key)})`),
      txn: e.txn && `(${L(e.txn.userId)}, ${L(e.txn.deviceId)}, ${L(e.txn.endpoint)}, ${L(e.txn.txnId)}, ${id}, ${ts})`,
      redaction:
        e.redactsEventId !== undefined && e.rejectedReason === undefined && !e.softFailed
          ? `red${i} as (update events set redacted_by = ${id} where event_id = ${L(e.redactsEventId)} and room_id = ${room} and redacted_by is null)`
          : undefined,
      groups: [],
      entries: [],
      largeSnapshots: [],
      deleteOutlier: e.replacesOutlier ? `delete from events where event_id = ${id} and outlier` : undefined,
      membership: e.outOfBand && `(${L(e.outOfBand.userId)}, ${room}, ${L(e.outOfBand.membership)}, ${id}, ${positionOf(i)})`,
    };
    for (const group of [...(e.extraStateGroups ?? []), ...(e.newStateGroup ? [e.newStateGroup] : [])]) {
      text.groups.push(`(${group.id}, ${room}, ${L(group.prev ?? null)}::bigint, ${group.chainLength})`);
      const rows = stateGroupEntryRows(group);
      // Large snapshots: written before the statement, in chunks.
      if (group.prev === undefined && rows.length > 500) text.largeSnapshots.push(rows);
      else for (const [g, type, k, eid] of rows) text.entries.push(`(${g}, ${L(type)}, ${L(k)}, ${L(eid)})`);
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
      outlier: e.outOfBand !== undefined,
      redactedBy: null,
      stateBeforeGroup: e.stateBefore?.id ?? null,
      stateAfterGroup: e.stateAfter?.id ?? null,
      replacesState: e.replacesState ?? null,
    },
  };
}

/** An event a batch of received events refers to: stored, or received earlier in the batch. */
interface KnownEvent {
  event: RoomEvent;
  outlier: boolean;
  rejected: boolean;
  softFailed: boolean;
  /** The state group after it (before it, for message and rejected events); none for outliers. */
  group: number | undefined;
  /** Whether it is in the database (its group can be loaded from there). */
  stored: boolean;
  /** For events of this batch: the group after it, and (when it is not the current state) that state. */
  ref?: StateGroupRef;
  state?: ReadonlyMap<StateMapKey, string>;
}

/** The keys whose value differs from `from` to `to` (undefined: removed). */
function stateDiff(from: ReadonlyMap<StateMapKey, string>, to: ReadonlyMap<StateMapKey, string>): Map<StateMapKey, string | undefined> {
  const changes = new Map<StateMapKey, string | undefined>();
  for (const [k, v] of to) if (from.get(k) !== v) changes.set(k, v);
  for (const k of from.keys()) if (!to.has(k)) changes.set(k, undefined);
  return changes;
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

/** A room ID of this server for versions before 12: `!opaque_id:domain` (appendices#room-ids). */
export function newRoomIdWithDomain(serverName: string): string {
  return `!${randomBytes(13).toString("base64url").replace(/[-_]/g, "x")}:${serverName}`;
}

/** A room version 1–2 event ID of this server: `$opaque_id:domain` (rooms/fragments/v1-event-ids). */
export function newEventIdWithDomain(serverName: string): string {
  return `$${randomBytes(18).toString("base64url")}:${serverName}`;
}

/**
 * A local event's PDU before hashing and signing, built on a room's current state: prev_events are
 * the forward extremities, depth one more than the deepest, auth_events as the spec selects them
 * (a v12 create event has no room_id; `redacts` sits in the content from v11).
 */
function unsignedPdu(
  rules: RoomVersionRules,
  roomId: string,
  template: EventTemplate,
  room: { maxDepth: number; extremities: readonly string[]; state: ReadonlyMap<StateMapKey, string> },
  now: number,
): JsonObject {
  let content = template.content;
  const pdu: JsonObject = {};
  if (!(template.type === "m.room.create" && rules.roomIdIsCreateEventId)) pdu.room_id = roomId;
  pdu.sender = template.sender;
  // Before v11 the redaction algorithm keeps a top-level `origin` (the sending server), which
  // Synapse 1.67 writes on every event and sytest expects; v11 dropped it.
  if (rules.redaction !== "v11") pdu.origin = serverNameOf(template.sender);
  pdu.type = template.type;
  if (template.state_key !== undefined) pdu.state_key = template.state_key;
  if (template.redacts !== undefined) {
    if (rules.redactsInContent) content = { ...content, redacts: template.redacts };
    else pdu.redacts = template.redacts;
  }
  pdu.content = content;
  pdu.origin_server_ts = template.originServerTs ?? now;
  pdu.depth = Math.min(room.maxDepth + 1, Number.MAX_SAFE_INTEGER);
  pdu.prev_events = room.extremities.slice(-MAX_PREV_EVENTS);
  pdu.auth_events = selectAuthEvents(rules, template, room.state);
  return pdu;
}

/** The servers of a room's joined members, from the snapshot's counts (built when first asked). */
function joinedServersOf(snapshot: RoomSnapshot): string[] {
  if (!snapshot.serverCounts) {
    const counts = new Map<string, number>();
    for (const [userId, membership] of snapshot.memberships) {
      if (membership !== "join") continue;
      const server = serverNameOf(userId);
      if (server !== undefined) counts.set(server, (counts.get(server) ?? 0) + 1);
    }
    snapshot.serverCounts = counts;
    snapshot.servers = undefined;
  }
  return (snapshot.servers ??= [...snapshot.serverCounts.keys()]);
}

/** One more (`delta` 1) or one fewer (-1) joined member of the user's server, when the counts are kept. */
function countJoined(snapshot: RoomSnapshot, userId: string, delta: number): void {
  const counts = snapshot.serverCounts;
  const server = serverNameOf(userId);
  if (!counts || server === undefined) return;
  const n = (counts.get(server) ?? 0) + delta;
  if (n > 0) {
    if (!counts.has(server)) snapshot.servers = undefined;
    counts.set(server, n);
  } else if (counts.delete(server)) {
    snapshot.servers = undefined;
  }
}

/** Test-only breakage ("state-res-last-writer-wins"): each key takes the latest of its events by origin_server_ts. */
function lastWriterWins(states: ReadonlyArray<ReadonlyMap<StateMapKey, string>>, fetchEvent: (id: string) => RoomEvent | undefined): Map<StateMapKey, string> {
  const out = new Map<StateMapKey, string>();
  for (const state of states) {
    for (const [k, id] of state) {
      const held = out.get(k);
      if (held === undefined || (fetchEvent(id)?.origin_server_ts ?? 0) > (fetchEvent(held)?.origin_server_ts ?? 0)) out.set(k, id);
    }
  }
  return out;
}
