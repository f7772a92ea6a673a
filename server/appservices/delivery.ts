// Pushing events to application services: one durable queue per registered service.
// https://spec.matrix.org/latest/application-service-api/#pushing-events
//
// - A service's queue is its position in the room-event stream (`appservice_delivery`), not a copy
//   of events: positions are gap-free and committed in order (server/rooms/persister.ts), so every
//   event past the position and at or below the committed stream position is read in order from
//   `events`, filtered by interest (interest.ts), up to MAX_EVENTS per transaction.
// - A transaction is recorded before it is sent (ID, the position it covers up to, its event IDs and
//   ephemeral data); a retry after a failure, a restart or a handover sends the same transaction
//   under the same ID: the spec forbids altering a transaction's events on retries, and the
//   service's idempotency on the ID makes delivery exactly-once. The position moves only once the
//   service answered 2xx. Transaction IDs are numbers increasing by one per service.
// - The persist path only wakes the queues (the notifier's "events" changes, from this process or
//   another); nothing here runs inside it, and a slow or dead service only delays itself.
// - Failures back off exponentially (with jitter) up to a cap. `markReachable` (the service called
//   us) clears the backoff.
// - Paths: `PUT {url}/_matrix/app/v1/transactions/{txnId}` first; if the service answers a status
//   that is not a success, the legacy `{url}/transactions/{txnId}` (the spec's "Legacy routes"), with
//   the token also as the `access_token` query parameter as those versions expected. Whichever
//   answered 2xx is used from then on (remembered per service, in memory). While that is unknown, a
//   versioned path left unanswered for PROBE_TIMEOUT_MS is also tried in its legacy form (older
//   services, sytest's among them, leave paths they do not know hanging), as queries.ts does.
// - Ephemeral data (typing, receipts, presence) for services with `receive_ephemeral`, and to-device
//   messages for `receive_to_device`, are best-effort: held in memory until the next transaction
//   is built (then recorded with it, so its retries carry them too); lost if the process stops first.
// - Several processes on one PostgreSQL: a service is sent by the process holding its lease (a row
//   lease, renewed while sending); every state change is conditional on the state read, so even two
//   senders at once cannot skip or repeat a transaction.
import { randomUUID } from "node:crypto";
import { and, eq, isNull, lt, or, sql } from "drizzle-orm";
import type { Logger } from "pino";
import { Agent, fetch } from "undici";
import { type OpenedDatabase, rowsOf, schema } from "../../schema/db.ts";
import { EVENT_COLUMNS, type EventStore, type StoredEvent } from "../rooms/event-store.ts";
import { filterInteresting } from "./interest.ts";
import type { AppService, AppServiceRegistry } from "./registration.ts";

type JsonObject = Record<string, unknown>;

/** Events per transaction, at most. */
const MAX_EVENTS = 100;
/** Stream positions read per step when looking for events of interest. */
const SCAN_LIMIT = 1_000;
/** Ephemeral items held per service while it is unreachable, at most (the oldest go first). */
const MAX_EPHEMERAL = 500;
const MAX_EPHEMERAL_PER_TXN = 100;
const LEASE_MS = 60_000;
/** How long the versioned path may go unanswered, while the service's kind is unknown, before the legacy path is tried. */
const PROBE_TIMEOUT_MS = 2_500;

export interface AppServiceDeliveryOptions {
  database: OpenedDatabase;
  registry: AppServiceRegistry;
  serverName: string;
  eventStore: EventStore;
  /** The room-event stream position at or below which every event is committed. */
  currentStreamPosition(): Promise<number>;
  now(): number;
  logger: Logger;
  maxEvents?: number;
  backoffInitialMs?: number;
  backoffMaxMs?: number;
  requestTimeoutMs?: number;
  /**
   * `federation_insecure`: a service whose URL's host is named there (or every service, with `*`) is
   * reached without certificate checks, as federation reaches those names (sytest's mock services
   * use a self-signed certificate). Only for closed test networks.
   */
  insecure?: readonly string[];
  /** How often every queue is woken anyway (another process died holding a lease, a lost notification). */
  sweepIntervalMs?: number;
}

/** What the admin command shows of a service's queue. */
export interface AppServiceQueueState {
  id: string;
  url: string | null;
  sender: string;
  namespaces: number;
  /** Events of interest not yet delivered (counted up to `limit`; `more` when there are more). */
  queued: number;
  more: boolean;
  deliveredPosition: number | null;
  pendingTxnId: number | null;
  failures: number;
  lastError: string | null;
  lastErrorTs: number | null;
  lastSuccessTs: number | null;
  retryAtTs: number | null;
}

interface DeliveryRow {
  deliveredPosition: number;
  lastTxnId: number;
  pendingTxnId: number | null;
  pendingUpTo: number | null;
  pendingJson: string | null;
  failures: number;
  retryAtTs: number | null;
}

interface PendingContent {
  events: string[];
  ephemeral: JsonObject[];
  to_device: JsonObject[];
}

export class AppServiceDelivery {
  private readonly queues = new Map<string, ServiceQueue>();
  private readonly opts: Required<AppServiceDeliveryOptions>;
  private sweepTimer?: NodeJS.Timeout;
  private stopped = false;
  readonly processId = randomUUID();
  /** The highest committed room-event stream position heard of (the notifier's, or read). */
  private known = 0;

  constructor(options: AppServiceDeliveryOptions) {
    this.opts = {
      maxEvents: MAX_EVENTS,
      backoffInitialMs: 1_000,
      backoffMaxMs: 5 * 60_000,
      requestTimeoutMs: 30_000,
      sweepIntervalMs: 5_000,
      insecure: [],
      ...options,
    };
    for (const service of options.registry.services) {
      if (service.url !== null) this.queues.set(service.id, new ServiceQueue(service, this));
    }
  }

  get options(): Required<AppServiceDeliveryOptions> {
    return this.opts;
  }

  /** Creates the rows of services seen for the first time (at the current position) and starts sending. */
  async start(): Promise<void> {
    if (this.queues.size === 0) return;
    const position = await this.opts.currentStreamPosition();
    this.known = Math.max(this.known, position);
    const t = schema.appserviceDelivery;
    await this.opts.database.db
      .insert(t)
      .values([...this.queues.keys()].map((asId) => ({ asId, deliveredPosition: position })))
      .onConflictDoNothing();
    this.wakeAll();
    this.sweepTimer = setInterval(() => {
      this.opts
        .currentStreamPosition()
        .then((p) => this.wakeAll(p))
        .catch((err) => this.opts.logger.warn({ err }, "application-service sweep failed"));
    }, this.opts.sweepIntervalMs);
    this.sweepTimer.unref();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.sweepTimer);
    await Promise.all([...this.queues.values()].map((q) => q.stop()));
  }

  /**
   * New room events were committed (here or in another process) up to `position` (a committed
   * position: positions commit in order, so everything at or below it is visible): every queue looks.
   */
  wakeAll(position?: number): void {
    if (this.stopped) return;
    if (position !== undefined && position > this.known) this.known = position;
    for (const q of this.queues.values()) q.wake();
  }

  /** The committed stream position as far as this process heard (no query). */
  get knownPosition(): number {
    return this.known;
  }

  /** The service reached us: it is up, so its backoff ends and what waits is sent at once. */
  markReachable(asId: string): void {
    this.queues.get(asId)?.resetBackoff();
  }

  /** Best-effort ephemeral data (an `m.typing`, `m.receipt` or `m.presence` event) for one service. */
  pushEphemeral(asId: string, event: JsonObject): void {
    this.queues.get(asId)?.addEphemeral("ephemeral", event);
  }

  /** Best-effort to-device message for one service (MSC2409 `to_device`). */
  pushToDevice(asId: string, message: JsonObject): void {
    this.queues.get(asId)?.addEphemeral("to_device", message);
  }

  /** The registered services and their queues (for `parley admin appservices`). */
  async list(limit = 10_000): Promise<AppServiceQueueState[]> {
    return listQueues(this.opts, limit);
  }
}

/**
 * The queue of every registered service, read from the database (the admin command runs without
 * the server): what is delivered, what waits (events of interest past the position), the last error.
 */
export async function listQueues(
  o: Pick<AppServiceDeliveryOptions, "database" | "registry" | "serverName" | "eventStore" | "currentStreamPosition">,
  limit = 10_000,
): Promise<AppServiceQueueState[]> {
  const t = schema.appserviceDelivery;
  const rows = await o.database.db.select().from(t);
  const byId = new Map(rows.map((r) => [r.asId, r]));
  const current = await o.currentStreamPosition();
  const out: AppServiceQueueState[] = [];
  for (const s of o.registry.services) {
    const row = byId.get(s.id);
    let queued = 0;
    let more = false;
    if (row && s.url !== null) {
      let from = row.deliveredPosition;
      while (from < current && queued < limit) {
        const scanned = await readEvents(o.eventStore, from, current, SCAN_LIMIT);
        if (scanned.length === 0) break;
        queued += (await filterInteresting(o.database.db, o.serverName, s, scanned)).length;
        from = scanned[scanned.length - 1]!.streamOrdering!;
        if (scanned.length < SCAN_LIMIT) break;
      }
      if (queued >= limit) more = true;
    }
    out.push({
      id: s.id,
      url: s.url,
      sender: s.senderUserId,
      namespaces: s.namespaces.users.length + s.namespaces.aliases.length + s.namespaces.rooms.length,
      queued: Math.min(queued, limit),
      more,
      deliveredPosition: row?.deliveredPosition ?? null,
      pendingTxnId: row?.pendingTxnId ?? null,
      failures: row?.failures ?? 0,
      lastError: row?.lastError ?? null,
      lastErrorTs: row?.lastErrorTs ?? null,
      lastSuccessTs: row?.lastSuccessTs ?? null,
      retryAtTs: row?.retryAtTs ?? null,
    });
  }
  return out;
}

/** The committed room-event stream position, read directly (for the admin command, which has no persister). */
export async function committedStreamPosition(database: OpenedDatabase): Promise<number> {
  const rows = rowsOf<{ position: string | number }>(await database.db.execute(sql`select position from stream_positions where stream = 'events'`));
  return Number(rows[0]?.position ?? 0);
}

/** Timeline events with a stream position in `(from, to]`, oldest first, at most `limit`. */
function readEvents(eventStore: EventStore, from: number, to: number, limit: number) {
  return eventStore.query(sql`select ${EVENT_COLUMNS} from events e join rooms r on r.room_id = e.room_id
    where e.stream_ordering > ${from} and e.stream_ordering <= ${to}
      and not e.outlier and e.rejected_reason is null and not e.soft_failed
    order by e.stream_ordering limit ${limit}`);
}

/** A failed attempt: what the admin sees as the last error. */
class DeliveryError extends Error {
  override name = "DeliveryError";
  constructor(
    message: string,
    /** The service answered, or left the request unanswered: its other path may be tried. */
    readonly fallBack = false,
  ) {
    super(message);
  }
}

class ServiceQueue {
  private running?: Promise<void>;
  private wakeUp?: () => void;
  private woken = false;
  private stopped = false;
  private retryAt = 0;
  private failures = 0;
  /**
   * The service's row as this queue last read or wrote it; every write is conditional on it, so a
   * write that finds the row changed (another process) drops it and it is read again.
   */
  private state: DeliveryRow | undefined;
  /** The events of the transaction recorded last, as read when it was built (saves reading them again). */
  private built: { txnId: number; events: StoredEvent[] } | undefined;
  private leaseUntil = 0;
  /** Which path answered 2xx last: the spec's, or the legacy one; unknown until one did. */
  private path: "v1" | "legacy" | undefined;
  /** Aborts the request in flight when the server stops. */
  private readonly stopping = new AbortController();
  /** Keeps connections to the service open between transactions, once its path is known. */
  private readonly dispatcher: Agent;
  private readonly connectOptions: { rejectUnauthorized?: boolean };
  private readonly held: { ephemeral: JsonObject[]; to_device: JsonObject[] } = { ephemeral: [], to_device: [] };

  constructor(
    readonly service: AppService,
    private readonly delivery: AppServiceDelivery,
  ) {
    const { insecure } = delivery.options;
    const host = service.url === null ? "" : new URL(service.url).hostname;
    const verify = !(insecure.includes("*") || insecure.includes(host));
    this.connectOptions = verify ? {} : { rejectUnauthorized: false };
    this.dispatcher = new Agent({ keepAliveTimeout: 30_000, connect: this.connectOptions });
  }

  /** In memory only: the row's backoff is cleared by the next success. */
  resetBackoff(): void {
    if (this.retryAt === 0 && this.failures === 0) return;
    this.retryAt = 0;
    this.failures = 0;
    this.wakeUp?.();
    this.wake();
  }

  addEphemeral(kind: "ephemeral" | "to_device", item: JsonObject): void {
    const list = this.held[kind];
    list.push(item);
    if (list.length > MAX_EPHEMERAL) list.splice(0, list.length - MAX_EPHEMERAL);
    this.wake();
  }

  wake(): void {
    if (this.stopped) return;
    this.woken = true;
    if (this.retryAt <= this.delivery.options.now()) this.wakeUp?.();
    this.running ??= this.run().finally(() => {
      this.running = undefined;
      if (this.woken && !this.stopped) this.wake();
    });
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.stopping.abort();
    this.wakeUp?.();
    await this.running?.catch(() => {});
    await this.releaseLease().catch(() => {});
    await this.dispatcher.close().catch(() => {});
  }

  private sleep(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const timer = setTimeout(done, ms);
      function done() {
        clearTimeout(timer);
        resolve();
      }
      this.wakeUp = done;
    }).finally(() => {
      this.wakeUp = undefined;
    });
  }

  private get o() {
    return this.delivery.options;
  }

  private async run(): Promise<void> {
    const log = this.o.logger.child({ appservice: this.service.id });
    try {
      while (!this.stopped) {
        this.woken = false;
        const wait = this.retryAt - this.o.now();
        if (wait > 0) {
          await this.sleep(Math.min(wait, 60_000));
          continue;
        }
        if (!(await this.lease())) return; // another process sends to this service
        if (!this.state) {
          const row = await this.readRow();
          if (!row) return;
          this.state = row;
          this.failures = row.failures;
          this.retryAt = row.retryAtTs ?? 0;
          continue;
        }
        const row = this.state;
        if (row.pendingTxnId !== null) {
          await this.attempt(row, log);
          continue;
        }
        if (!(await this.buildTransaction(row))) break;
      }
    } catch (err) {
      // What is in memory may no longer be what the row says: read it again on the restart.
      this.state = undefined;
      this.built = undefined;
      if (!this.stopped) log.warn({ err }, "application-service queue stopped on an error; the sweep restarts it");
    }
  }

  private async readRow(): Promise<DeliveryRow | undefined> {
    const t = schema.appserviceDelivery;
    const [row] = await this.o.database.db
      .select({
        deliveredPosition: t.deliveredPosition,
        lastTxnId: t.lastTxnId,
        pendingTxnId: t.pendingTxnId,
        pendingUpTo: t.pendingUpTo,
        pendingJson: t.pendingJson,
        failures: t.failures,
        retryAtTs: t.retryAtTs,
      })
      .from(t)
      .where(eq(t.asId, this.service.id));
    return row;
  }

  /**
   * Records the next transaction (events of interest past the position, and the ephemeral data
   * held), or moves the position past events of no interest. Answers false when nothing is left.
   */
  private async buildTransaction(row: DeliveryRow): Promise<boolean> {
    const { database, eventStore, serverName, maxEvents } = this.o;
    const current = this.delivery.knownPosition;
    const hasHeld = this.held.ephemeral.length > 0 || this.held.to_device.length > 0;
    if (row.deliveredPosition >= current && !hasHeld) return false;
    let upTo = row.deliveredPosition;
    let picked: StoredEvent[] = [];
    if (row.deliveredPosition < current) {
      const scanned = await readEvents(eventStore, row.deliveredPosition, current, SCAN_LIMIT);
      const interesting = await filterInteresting(database.db, serverName, this.service, scanned);
      if (interesting.length > maxEvents) {
        picked = interesting.slice(0, maxEvents);
        upTo = interesting[maxEvents - 1]!.streamOrdering!;
      } else {
        picked = interesting;
        upTo = scanned.length < SCAN_LIMIT ? current : scanned[scanned.length - 1]!.streamOrdering!;
      }
    }
    const ephemeral = this.held.ephemeral.splice(0, MAX_EPHEMERAL_PER_TXN);
    const toDevice = this.held.to_device.splice(0, MAX_EPHEMERAL_PER_TXN);
    const t = schema.appserviceDelivery;
    const unchanged = and(eq(t.asId, this.service.id), isNull(t.pendingTxnId), eq(t.deliveredPosition, row.deliveredPosition));
    if (picked.length === 0 && ephemeral.length === 0 && toDevice.length === 0) {
      // Nothing for this service up to here: only the position moves.
      const moved = await database.db.update(t).set({ deliveredPosition: upTo }).where(unchanged).returning({ asId: t.asId });
      this.state = moved.length > 0 ? { ...row, deliveredPosition: upTo } : undefined;
      return true;
    }
    const content: PendingContent = { events: picked.map((e) => e.eventId), ephemeral, to_device: toDevice };
    const pendingJson = JSON.stringify(content);
    const built = await database.db
      .update(t)
      .set({ lastTxnId: sql`${t.lastTxnId} + 1`, pendingTxnId: sql`${t.lastTxnId} + 1`, pendingUpTo: upTo, pendingJson })
      .where(unchanged)
      .returning({ txnId: t.pendingTxnId });
    const txnId = built[0]?.txnId;
    if (txnId === undefined || txnId === null) {
      // Another process moved first: give the ephemeral data back and read the row again.
      this.held.ephemeral.unshift(...ephemeral);
      this.held.to_device.unshift(...toDevice);
      this.state = undefined;
      return true;
    }
    this.state = { ...row, lastTxnId: txnId, pendingTxnId: txnId, pendingUpTo: upTo, pendingJson };
    this.built = { txnId, events: picked };
    return true;
  }

  /** Sends the recorded transaction; on success the position moves past it. */
  private async attempt(row: DeliveryRow, log: Logger): Promise<void> {
    const { database, eventStore, now } = this.o;
    const txnId = row.pendingTxnId!;
    const content = JSON.parse(row.pendingJson ?? "{}") as Partial<PendingContent>;
    const ids = content.events ?? [];
    let chosen: StoredEvent[];
    if (this.built?.txnId === txnId) {
      chosen = this.built.events;
    } else {
      const stored = await eventStore.getEvents(ids);
      // In the recorded order; an event gone since (purged) is left out rather than blocking the queue.
      chosen = ids.map((id) => stored.get(id)).filter((e) => e !== undefined);
    }
    const events = await eventStore.format(chosen, undefined, { aggregations: false });
    const body: JsonObject = { events };
    if (this.service.receiveEphemeral) {
      body.ephemeral = content.ephemeral ?? [];
      body["de.sorunome.msc2409.ephemeral"] = content.ephemeral ?? [];
    }
    if (this.service.receiveToDevice) body["org.matrix.msc2409.to_device"] = content.to_device ?? [];
    const t = schema.appserviceDelivery;
    try {
      await this.send(txnId, body);
    } catch (err) {
      if (this.stopped) return;
      await this.recordFailure(txnId, err, log);
      return;
    }
    const ts = now();
    this.failures = 0;
    this.retryAt = 0;
    this.built = undefined;
    const acknowledged = await database.db
      .update(t)
      .set({
        deliveredPosition: sql`greatest(${t.deliveredPosition}, ${row.pendingUpTo ?? row.deliveredPosition})`,
        pendingTxnId: null,
        pendingUpTo: null,
        pendingJson: null,
        lastSuccessTs: ts,
        lastAttemptTs: ts,
        failures: 0,
        retryAtTs: null,
      })
      .where(and(eq(t.asId, this.service.id), eq(t.pendingTxnId, txnId)))
      .returning({ deliveredPosition: t.deliveredPosition });
    const delivered = acknowledged[0]?.deliveredPosition;
    this.state =
      delivered === undefined ? undefined : { ...row, deliveredPosition: delivered, pendingTxnId: null, pendingUpTo: null, pendingJson: null, failures: 0, retryAtTs: null };
  }

  private async send(txnId: number, body: JsonObject): Promise<void> {
    const payload = JSON.stringify(body);
    const paths = this.path === undefined ? (["v1", "legacy"] as const) : [this.path];
    // While the path is unknown, each request gets a connection of its own, closed with it: a
    // request given up on (an unanswered versioned path) must leave nothing that the next could
    // queue behind or race with (undici would open a spare connection and drop it mid-handshake,
    // which sytest's mock services count as an error); as queries.ts does.
    const probing = this.path === undefined;
    let last = "";
    for (const path of paths) {
      const agent = probing ? new Agent({ pipelining: 0, connect: this.connectOptions }) : this.dispatcher;
      try {
        await this.sendOnce(path, agent, txnId, payload);
        this.path = path;
        return;
      } catch (err) {
        if (!(err instanceof DeliveryError)) throw err;
        last = err.message;
        // Older services leave paths they do not know unanswered or answer them with an error:
        // while we do not know which this one speaks, the legacy form is tried next.
        if (!(probing && path === "v1" && err.fallBack)) throw err;
      } finally {
        if (agent !== this.dispatcher) agent.destroy().catch(() => {});
      }
    }
    throw new DeliveryError(last);
  }

  /** One PUT of the transaction; throws DeliveryError (with whether the legacy path may be tried). */
  private async sendOnce(path: "v1" | "legacy", agent: Agent, txnId: number, payload: string): Promise<void> {
    const url = this.service.url!;
    const token = this.service.hsToken;
    const probing = this.path === undefined && path === "v1";
    const target =
      path === "v1" ? `${url}/_matrix/app/v1/transactions/${txnId}` : `${url}/transactions/${txnId}?access_token=${encodeURIComponent(token)}`;
    const timeout = AbortSignal.timeout(probing ? Math.min(PROBE_TIMEOUT_MS, this.o.requestTimeoutMs) : this.o.requestTimeoutMs);
    let res: Awaited<ReturnType<typeof fetch>>;
    try {
      res = await fetch(target, {
        dispatcher: agent,
        method: "PUT",
        headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
        body: payload,
        // The operator chose the URL; still, a redirect is not followed (it is a failure).
        redirect: "manual",
        signal: AbortSignal.any([timeout, this.stopping.signal]),
      });
    } catch (err) {
      const cause = (err as { cause?: { code?: string; message?: string } }).cause;
      const message = `${path === "v1" ? "" : "legacy path: "}cannot reach ${url}: ${cause?.code ?? cause?.message ?? (err as Error).message}`;
      throw new DeliveryError(message, timeout.aborted && !this.stopping.signal.aborted);
    }
    await res.body?.cancel().catch(() => {});
    if (res.status < 200 || res.status >= 300) {
      throw new DeliveryError(`${path === "v1" ? "/_matrix/app/v1/transactions" : "legacy /transactions"} answered ${res.status}`, true);
    }
  }

  private async recordFailure(txnId: number, err: unknown, log: Logger): Promise<void> {
    const { database, now, backoffInitialMs, backoffMaxMs } = this.o;
    this.failures++;
    const base = Math.min(backoffInitialMs * 2 ** Math.min(this.failures - 1, 30), backoffMaxMs);
    // ±20% jitter, so services that failed together do not retry together.
    const delay = Math.round(base * (0.8 + Math.random() * 0.4));
    const ts = now();
    this.retryAt = ts + delay;
    const message = (err instanceof Error ? err.message : String(err)).slice(0, 500);
    log.info({ txnId, failures: this.failures, retryInMs: delay, error: message }, "application-service transaction failed");
    const t = schema.appserviceDelivery;
    await database.db
      .update(t)
      .set({ failures: this.failures, retryAtTs: this.retryAt, lastAttemptTs: ts, lastError: message, lastErrorTs: ts })
      .where(eq(t.asId, this.service.id));
  }

  /** PostgreSQL: holds (or takes over an expired) lease on the service; PGlite has one process. */
  private async lease(): Promise<boolean> {
    const { database, now } = this.o;
    if (database.kind !== "postgres") return true;
    const ts = now();
    if (this.leaseUntil - ts > LEASE_MS / 2) return true;
    const t = schema.appserviceDelivery;
    const me = this.delivery.processId;
    const rows = await database.db
      .update(t)
      .set({ leaseOwner: me, leaseUntilTs: ts + LEASE_MS })
      .where(and(eq(t.asId, this.service.id), or(isNull(t.leaseOwner), eq(t.leaseOwner, me), lt(t.leaseUntilTs, ts))))
      .returning({ asId: t.asId });
    if (rows.length === 0) {
      this.leaseUntil = 0;
      this.state = undefined;
      return false;
    }
    if (this.leaseUntil === 0) this.state = undefined; // newly taken: read the row (and its backoff) again
    this.leaseUntil = ts + LEASE_MS;
    return true;
  }

  private async releaseLease(): Promise<void> {
    if (this.o.database.kind !== "postgres" || this.leaseUntil === 0) return;
    this.leaseUntil = 0;
    const t = schema.appserviceDelivery;
    await this.o.database.db
      .update(t)
      .set({ leaseOwner: null, leaseUntilTs: null })
      .where(and(eq(t.asId, this.service.id), eq(t.leaseOwner, this.delivery.processId)));
  }
}
