// The outbound queue: one durable queue per destination server.
// https://spec.matrix.org/latest/server-server-api/#transactions
//
// - PDUs and persistent EDUs (to-device, device-list and signing-key updates, receipts) are rows of
//   `federation_outbox`, written before the caller is answered, so they survive restarts. Typing
//   and presence are best-effort: held in memory and sent with the next transaction.
// - One transaction in flight per destination, at most 50 PDUs and 100 EDUs. A transaction first
//   claims its rows (writes its ID into them), so a retry sends exactly the same rows under the
//   same ID and the receiver's idempotency on (origin, txnId) makes delivery exactly-once.
// - Failures back off exponentially up to a cap; the backoff is reset the moment that server
//   reaches us (`markReachable`). A slow or dead destination only ever delays itself.
// - Several processes on one PostgreSQL: a destination is sent by the process holding its
//   advisory lock (session locks on one connection this process keeps; they go when it dies). A
//   NOTIFY wakes the owner when another process queued something; a periodic sweep picks up
//   destinations whose owner died.

import { createHash, randomBytes } from "node:crypto";
import { and, asc, eq, inArray, isNotNull, isNull, sql } from "drizzle-orm";
import type { Logger } from "pino";
import { type OpenedDatabase, type ReservedConnection, rowsOf, schema } from "../../schema/db.ts";
import { FederationRequestError, type FederationHttpClient } from "./http-client.ts";

export interface Edu {
  edu_type: string;
  content: unknown;
}

export interface FederationSenderOptions {
  database: OpenedDatabase;
  http: FederationHttpClient;
  serverName: string;
  now(): number;
  logger: Logger;
  maxPdus?: number;
  maxEdus?: number;
  /** First retry delay after a failure; doubles per failure up to `backoffMaxMs`. */
  backoffInitialMs?: number;
  backoffMaxMs?: number;
  /** How often to look for destinations nobody is sending (another process died, a NOTIFY lost). */
  sweepIntervalMs?: number;
}

const NOTIFY_CHANNEL = "parley_federation_outbox";
/** Best-effort EDUs older than this are dropped rather than sent late. */
const EPHEMERAL_MAX_AGE_MS = 30_000;
const EPHEMERAL_PER_DESTINATION = 200;
/** How long a destination's queue stays (lock and state kept) after it sent everything. */
const IDLE_LINGER_MS = 30_000;

interface QueuedEphemeral {
  edu: Edu;
  queuedAt: number;
}

interface OutboxRow {
  id: number;
  kind: string;
  payload: string;
  txnId: string | null;
}

export class FederationSender {
  private readonly queues = new Map<string, DestinationQueue>();
  private readonly ephemeral = new Map<string, QueuedEphemeral[]>();
  private readonly opts: Required<FederationSenderOptions>;
  private lockConnection?: ReservedConnection;
  private lockChain: Promise<unknown> = Promise.resolve();
  private readonly heldLocks = new Set<string>();
  private unlisten?: () => Promise<void>;
  private sweepTimer?: NodeJS.Timeout;
  private stopped = false;

  constructor(options: FederationSenderOptions) {
    this.opts = {
      maxPdus: 50,
      maxEdus: 100,
      backoffInitialMs: 1_000,
      backoffMaxMs: 5 * 60_000,
      sweepIntervalMs: 5_000,
      ...options,
    };
  }

  async start(): Promise<void> {
    this.unlisten = await this.opts.database.listen(NOTIFY_CHANNEL, (destination) => this.wake(destination));
    await this.sweep();
    this.sweepTimer = setInterval(() => {
      this.sweep().catch((err) => this.opts.logger.warn({ err }, "federation sweep failed"));
    }, this.opts.sweepIntervalMs);
    this.sweepTimer.unref();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.sweepTimer) clearInterval(this.sweepTimer);
    await this.unlisten?.().catch(() => {});
    await Promise.all([...this.queues.values()].map((q) => q.stop()));
    this.queues.clear();
    const conn = this.lockConnection;
    this.lockConnection = undefined;
    if (conn) {
      await this.lockChain.catch(() => {});
      await conn.db.execute(sql`select pg_advisory_unlock_all()`).catch(() => {});
      conn.release();
    }
  }

  /**
   * Queues PDUs and persistent EDUs for the destinations, durably: when this resolves, they will
   * be delivered even if this process dies now. Our own server name is skipped.
   */
  async enqueue(destinations: Iterable<string>, items: { pdus?: object[]; edus?: Edu[] }): Promise<void> {
    const targets = [...new Set(destinations)].filter((d) => d !== this.opts.serverName);
    if (targets.length === 0) return;
    const now = this.opts.now();
    const rows: { destination: string; kind: string; payload: string; createdTs: number }[] = [];
    for (const destination of targets) {
      for (const pdu of items.pdus ?? []) rows.push({ destination, kind: "pdu", payload: JSON.stringify(pdu), createdTs: now });
      for (const edu of items.edus ?? []) rows.push({ destination, kind: "edu", payload: JSON.stringify(edu), createdTs: now });
    }
    if (rows.length === 0) return;
    await this.opts.database.db.insert(schema.federationOutbox).values(rows);
    for (const destination of targets) {
      if (!this.wake(destination)) await this.opts.database.notify(NOTIFY_CHANNEL, destination).catch(() => {});
    }
  }

  /** Queues a best-effort EDU (typing, presence): sent with the next transaction, never stored. */
  sendEphemeral(destinations: Iterable<string>, edu: Edu): void {
    const now = this.opts.now();
    for (const destination of new Set(destinations)) {
      if (destination === this.opts.serverName) continue;
      const list = this.ephemeral.get(destination) ?? [];
      list.push({ edu, queuedAt: now });
      if (list.length > EPHEMERAL_PER_DESTINATION) list.splice(0, list.length - EPHEMERAL_PER_DESTINATION);
      this.ephemeral.set(destination, list);
      this.wake(destination);
    }
  }

  /** The destination reached us: it is up, so forget its backoff and send what waits at once. */
  async markReachable(destination: string): Promise<void> {
    const t = schema.federationDestinations;
    const queue = this.queues.get(destination);
    if (queue?.isBackingOff() === false) return;
    const updated = await this.opts.database.db
      .update(t)
      .set({ failures: 0, retryAtTs: null })
      .where(and(eq(t.destination, destination), isNotNull(t.retryAtTs)))
      .returning({ destination: t.destination });
    queue?.resetBackoff();
    if (updated.length > 0 || queue) this.wake(destination);
  }

  /**
   * Makes sure a queue runs for the destination in this process (if it may own it). Answers
   * whether this process already runs one (so a NOTIFY to others is not needed).
   */
  wake(destination: string): boolean {
    if (this.stopped) return false;
    let queue = this.queues.get(destination);
    const existed = queue !== undefined;
    if (!queue) {
      queue = new DestinationQueue(destination, this);
      this.queues.set(destination, queue);
    }
    queue.wake();
    return existed;
  }

  /** Called by a queue that found nothing to send (or lost its lock): it stops and goes away. */
  forget(queue: DestinationQueue): void {
    if (this.queues.get(queue.destination) === queue) this.queues.delete(queue.destination);
  }

  /** Starts a queue for every destination with something waiting and no queue in this process. */
  private async sweep(): Promise<void> {
    if (this.stopped) return;
    const o = schema.federationOutbox;
    const pending = await this.opts.database.db.selectDistinct({ destination: o.destination }).from(o);
    // A queue in backoff waits it out itself (its state is read from federation_destinations); an
    // idle one is woken too, in case the wake of what waits was lost (a NOTIFY on a dropped connection).
    for (const { destination } of pending) {
      const queue = this.queues.get(destination);
      if (!queue) this.wake(destination);
      else if (queue.isIdle()) queue.wake();
    }
  }

  /**
   * What waits to be sent, per destination (metrics): the durable PDUs and EDUs of the outbox, which
   * every process sharing the database sees, and the best-effort EDUs this process holds. The
   * `limit` destinations with most waiting, so a long tail of peers cannot flood the scraper.
   */
  async queueDepths(limit: number): Promise<{ destination: string; kind: string; count: number }[]> {
    const o = schema.federationOutbox;
    const rows = await this.opts.database.db
      .select({ destination: o.destination, kind: o.kind, count: sql<number>`count(*)::int` })
      .from(o)
      .groupBy(o.destination, o.kind);
    for (const [destination, list] of this.ephemeral) rows.push({ destination, kind: "ephemeral", count: list.length });
    const total = new Map<string, number>();
    for (const r of rows) total.set(r.destination, (total.get(r.destination) ?? 0) + Number(r.count));
    const kept = new Set([...total].sort((a, b) => b[1] - a[1]).slice(0, limit).map(([d]) => d));
    return rows.filter((r) => kept.has(r.destination)).map((r) => ({ ...r, count: Number(r.count) }));
  }

  // --- used by DestinationQueue ---

  get options(): Required<FederationSenderOptions> {
    return this.opts;
  }

  takeEphemeral(destination: string, max: number): Edu[] {
    const list = this.ephemeral.get(destination);
    if (!list) return [];
    const fresh = list.filter((e) => this.opts.now() - e.queuedAt <= EPHEMERAL_MAX_AGE_MS);
    const taken = fresh.splice(0, max);
    if (fresh.length > 0) this.ephemeral.set(destination, fresh);
    else this.ephemeral.delete(destination);
    return taken.map((e) => e.edu);
  }

  hasEphemeral(destination: string): boolean {
    return (this.ephemeral.get(destination)?.length ?? 0) > 0;
  }

  /** Takes the destination's advisory lock (PostgreSQL); PGlite has one process, so always true. */
  async lock(destination: string): Promise<boolean> {
    if (this.opts.database.kind !== "postgres") return true;
    if (this.heldLocks.has(destination)) return true;
    return this.onLockConnection(async (conn) => {
      const rows = rowsOf<{ ok: boolean }>(await conn.db.execute(sql`select pg_try_advisory_lock(${lockKey(destination)}) as ok`));
      const ok = rows[0]?.ok === true;
      if (ok) this.heldLocks.add(destination);
      return ok;
    });
  }

  async unlock(destination: string): Promise<void> {
    if (!this.heldLocks.delete(destination)) return;
    await this.onLockConnection((conn) => conn.db.execute(sql`select pg_advisory_unlock(${lockKey(destination)})`)).catch(() => {});
  }

  private onLockConnection<T>(fn: (conn: ReservedConnection) => Promise<T>): Promise<T> {
    const run = this.lockChain.then(async () => {
      if (!this.lockConnection) {
        const reserve = this.opts.database.reserve;
        if (!reserve) throw new Error("the database cannot reserve a connection");
        this.lockConnection = await reserve.call(this.opts.database);
      }
      try {
        return await fn(this.lockConnection);
      } catch (err) {
        // The connection (and with it every lock) may be gone: start again from nothing.
        this.lockConnection?.release();
        this.lockConnection = undefined;
        this.heldLocks.clear();
        throw err;
      }
    });
    this.lockChain = run.catch(() => {});
    return run;
  }
}

/** A stable 64-bit advisory-lock key per destination. */
function lockKey(destination: string): string {
  return createHash("sha256").update(`parley federation destination ${destination}`).digest().readBigInt64BE(0).toString();
}

class DestinationQueue {
  private running?: Promise<void>;
  private wakeUp?: () => void;
  private woken = false;
  private stopped = false;
  private retryAt = 0;
  private failures = 0;
  private loaded = false;
  /** Everything in the outbox was sent and nothing was queued since (the queue may go idle). */
  private drained = false;
  /** Known while the lock is held: no batch of this destination is claimed and unacknowledged. */
  private noClaimedBatch = false;

  constructor(
    readonly destination: string,
    private readonly sender: FederationSender,
  ) {}

  /** Lingering after it sent everything, holding its lock. */
  isIdle(): boolean {
    return this.drained && !this.woken && this.running !== undefined;
  }

  isBackingOff(): boolean {
    return this.retryAt > this.sender.options.now();
  }

  resetBackoff(): void {
    this.retryAt = 0;
    this.failures = 0;
  }

  wake(): void {
    this.woken = true;
    this.wakeUp?.();
    this.running ??= this.run().finally(() => {
      this.running = undefined;
      if (this.woken && !this.stopped) this.wake();
      else this.sender.forget(this);
    });
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.wakeUp?.();
    await this.running?.catch(() => {});
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

  private async run(): Promise<void> {
    const { options: o } = this.sender;
    const log = o.logger.child({ destination: this.destination });
    this.woken = false;
    this.drained = false;
    try {
      if (!(await this.sender.lock(this.destination))) return; // another process sends it
      // Taken anew: another process may have claimed a batch and died before acknowledging it.
      this.noClaimedBatch = false;
      if (!this.loaded) await this.loadState();
      while (!this.stopped) {
        const wait = this.retryAt - o.now();
        if (wait > 0) {
          await this.sleep(Math.min(wait, 60_000));
          continue;
        }
        if (this.drained && !this.woken) {
          // Sent everything and nothing came since: linger a while, lock and state kept, so the
          // next message goes at once without taking the lock and reading the state again.
          await this.sleep(IDLE_LINGER_MS);
          if (!this.woken) break;
        }
        this.woken = false;
        const batch = await this.claimBatch();
        const edus = [...batch.edus];
        const ephemeral = this.sender.takeEphemeral(this.destination, o.maxEdus - edus.length);
        edus.push(...ephemeral);
        if (batch.pdus.length === 0 && edus.length === 0) {
          this.drained = true;
          continue;
        }
        const txnId = batch.txnId ?? `e${randomBytes(9).toString("base64url")}`;
        try {
          await this.sendTransaction(txnId, batch.pdus, edus);
        } catch (err) {
          this.drained = false;
          await this.recordFailure(err, log);
          continue;
        }
        if (batch.txnId) await this.acknowledge(batch.txnId);
        this.noClaimedBatch = true;
        // Whatever was committed after the claim's read woke the queue (enqueue in this process,
        // NOTIFY from another): unless it did, a batch that took every row left nothing behind.
        this.drained = !batch.more && !this.sender.hasEphemeral(this.destination);
        await this.recordSuccess();
      }
    } catch (err) {
      log.warn({ err }, "federation queue stopped on an error; the sweep will restart it");
    } finally {
      if (!this.woken || this.stopped) await this.sender.unlock(this.destination);
    }
  }

  private async loadState(): Promise<void> {
    const t = schema.federationDestinations;
    const [row] = await this.sender.options.database.db.select().from(t).where(eq(t.destination, this.destination));
    if (row) {
      this.failures = row.failures;
      this.retryAt = row.retryAtTs ?? 0;
    }
    this.loaded = true;
  }

  /**
   * The transaction to send: one claimed earlier and not acknowledged, else new rows, claimed now.
   * `more` when rows may remain after it.
   */
  private async claimBatch(): Promise<{ txnId?: string; pdus: unknown[]; edus: Edu[]; more: boolean }> {
    const { database, maxPdus, maxEdus } = this.sender.options;
    const o = schema.federationOutbox;
    const columns = { id: o.id, kind: o.kind, payload: o.payload, txnId: o.txnId };
    // While the lock is held and every batch claimed was acknowledged, none waits: no read for it.
    let rows: OutboxRow[] = this.noClaimedBatch
      ? []
      : await database.db
          .select(columns)
          .from(o)
          .where(and(eq(o.destination, this.destination), isNotNull(o.txnId)))
          .orderBy(asc(o.id))
          .limit(maxPdus + maxEdus);
    let txnId = rows[0]?.txnId ?? undefined;
    let more = true;
    if (txnId) {
      rows = rows.filter((r) => r.txnId === txnId);
    } else {
      this.noClaimedBatch = true;
      const candidates: OutboxRow[] = await database.db
        .select(columns)
        .from(o)
        .where(and(eq(o.destination, this.destination), isNull(o.txnId)))
        .orderBy(asc(o.id))
        .limit(maxPdus + maxEdus);
      rows = [];
      let pdus = 0;
      let edus = 0;
      for (const r of candidates) {
        // In order: stop at the first row that does not fit, so nothing overtakes it.
        if (r.kind === "pdu" ? pdus >= maxPdus : edus >= maxEdus) break;
        if (r.kind === "pdu") pdus++;
        else edus++;
        rows.push(r);
      }
      more = candidates.length === maxPdus + maxEdus || rows.length < candidates.length;
      if (rows.length === 0) return { pdus: [], edus: [], more: false };
      txnId = `${this.sender.options.now()}.${randomBytes(6).toString("base64url")}`;
      await database.db
        .update(o)
        .set({ txnId })
        .where(and(inArray(o.id, rows.map((r) => r.id)), isNull(o.txnId)));
    }
    // Claimed: it waits for its acknowledgement.
    this.noClaimedBatch = false;
    return {
      txnId,
      more,
      pdus: rows.filter((r) => r.kind === "pdu").map((r) => JSON.parse(r.payload) as unknown),
      edus: rows.filter((r) => r.kind === "edu").map((r) => JSON.parse(r.payload) as Edu),
    };
  }

  private async sendTransaction(txnId: string, pdus: unknown[], edus: Edu[]): Promise<void> {
    const { http, serverName, now } = this.sender.options;
    const res = await http.request(this.destination, {
      method: "PUT",
      path: `/_matrix/federation/v1/send/${encodeURIComponent(txnId)}`,
      body: { origin: serverName, origin_server_ts: now(), pdus, edus },
    });
    if (res.status !== 200) {
      const body = res.body as { errcode?: unknown; error?: unknown } | undefined;
      throw new Error(`answered ${res.status} ${String(body?.errcode ?? "")} ${String(body?.error ?? "")}`.trim());
    }
    const results = (res.body as { pdus?: Record<string, { error?: string }> } | undefined)?.pdus;
    if (results && typeof results === "object") {
      for (const [eventId, result] of Object.entries(results)) {
        if (result && typeof result === "object" && typeof result.error === "string") {
          this.sender.options.logger.info({ destination: this.destination, eventId, error: result.error }, "a PDU was refused by its destination");
        }
      }
    }
  }

  private async acknowledge(txnId: string): Promise<void> {
    const o = schema.federationOutbox;
    await this.sender.options.database.db.delete(o).where(and(eq(o.destination, this.destination), eq(o.txnId, txnId)));
  }

  private async recordSuccess(): Promise<void> {
    const { database, now } = this.sender.options;
    const hadFailures = this.failures > 0;
    this.failures = 0;
    this.retryAt = 0;
    const t = schema.federationDestinations;
    const ts = now();
    // Written on the first success and after failures; not on every transaction.
    if (hadFailures || !this.recordedOnce) {
      this.recordedOnce = true;
      await database.db
        .insert(t)
        .values({ destination: this.destination, failures: 0, retryAtTs: null, lastSuccessTs: ts, lastAttemptTs: ts })
        .onConflictDoUpdate({ target: t.destination, set: { failures: 0, retryAtTs: null, lastSuccessTs: ts, lastAttemptTs: ts } });
    }
  }

  private recordedOnce = false;

  private async recordFailure(err: unknown, log: Logger): Promise<void> {
    const { database, now, backoffInitialMs, backoffMaxMs } = this.sender.options;
    this.failures++;
    const base = Math.min(backoffInitialMs * 2 ** Math.min(this.failures - 1, 30), backoffMaxMs);
    // ±20% jitter, so destinations that failed together do not retry together.
    const delay = Math.round(base * (0.8 + Math.random() * 0.4));
    const ts = now();
    this.retryAt = ts + delay;
    const message = err instanceof FederationRequestError ? `${err.failure}: ${err.message}` : String((err as Error)?.message ?? err);
    log.info({ failures: this.failures, retryInMs: delay, error: message }, "federation transaction failed");
    const t = schema.federationDestinations;
    await database.db
      .insert(t)
      .values({ destination: this.destination, failures: this.failures, retryAtTs: this.retryAt, lastAttemptTs: ts, lastError: message.slice(0, 500) })
      .onConflictDoUpdate({
        target: t.destination,
        set: { failures: this.failures, retryAtTs: this.retryAt, lastAttemptTs: ts, lastError: message.slice(0, 500) },
      });
  }
}

/** For `parley admin federation`: every destination we have sent to or have something for. */
export async function listDestinations(database: OpenedDatabase) {
  const rows = await database.db.execute(sql`
    select coalesce(d.destination, q.destination) as destination,
           coalesce(q.queued, 0)::int as queued,
           d.failures, d.retry_at_ts, d.last_success_ts, d.last_attempt_ts, d.last_error
    from federation_destinations d
    full outer join (select destination, count(*) as queued from federation_outbox group by destination) q
      on q.destination = d.destination
    order by 1`);
  return rowsOf<{
    destination: string;
    queued: number;
    failures: number | null;
    retry_at_ts: string | number | null;
    last_success_ts: string | number | null;
    last_attempt_ts: string | number | null;
    last_error: string | null;
  }>(rows);
}
