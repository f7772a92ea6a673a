// Prometheus metrics (issue 18): one registry per homeserver, so several servers in one process
// (the tests) never share or collide on prom-client's global default registry. Built only when
// `metrics_port` is set; without it nothing is counted, timed or collected.
//
// Families:
//   parley_http_requests_total{method,route,status}       requests answered, by route pattern
//   parley_http_request_duration_seconds{method,route}    their latency (long-polls included)
//   parley_events_persisted_total{origin}                 events committed by the persist path
//   parley_sync_waiters                                   /sync long-polls waiting now
//   parley_database_pool_{size,in_use,waiting}            connections, and work waiting for one
//   parley_database_query_duration_seconds{kind}          ask-to-answer time of queries, transactions
//   parley_federation_queue_depth{destination,kind}       what waits for each destination
//   nodejs_eventloop_lag_*, process_resident_memory_bytes, nodejs_heap_* ... (prom-client defaults)
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";
import type { PoolUse, QueryObserver } from "../../schema/db.ts";
import type { PersistedEvent } from "../rooms/persister.ts";

/** The route a request matched (its declared path pattern), or none. */
export const UNMATCHED_ROUTE = "unmatched";

/** Methods a route can declare; anything else a client sends is counted as "other". */
const METHODS = new Set(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"]);

/** Destinations reported at most, the deepest queues first (label cardinality stays bounded). */
const MAX_DESTINATIONS = 100;

export interface QueueDepth {
  destination: string;
  kind: string;
  count: number;
}

export class Metrics {
  readonly registry = new Registry();
  private readonly requests: Counter<"method" | "route" | "status">;
  private readonly requestSeconds: Histogram<"method" | "route">;
  private readonly persisted: Counter<"origin">;
  private readonly querySeconds: Histogram<"kind">;

  constructor(private readonly serverName: string) {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry });
    this.requests = new Counter({
      name: "parley_http_requests_total",
      help: "HTTP requests answered, by method, route pattern (unmatched: no route) and status",
      labelNames: ["method", "route", "status"],
      registers,
    });
    this.requestSeconds = new Histogram({
      name: "parley_http_request_duration_seconds",
      help: "Time from a request's arrival to its answer, by method and route pattern (a /sync long-poll's wait included)",
      labelNames: ["method", "route"],
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
      registers,
    });
    this.persisted = new Counter({
      name: "parley_events_persisted_total",
      help: "Events committed by the persist path, by origin (local: sent by our users; remote: received over federation)",
      labelNames: ["origin"],
      registers,
    });
    this.querySeconds = new Histogram({
      name: "parley_database_query_duration_seconds",
      help: "Time from asking the database pool for a query (or a whole transaction) to its answer, waiting for a connection included",
      labelNames: ["kind"],
      buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5],
      registers,
    });
    // Both series exist from the start, so a rate over them is defined before the first event.
    this.persisted.inc({ origin: "local" }, 0);
    this.persisted.inc({ origin: "remote" }, 0);
  }

  /** One answered request; `route` is the matched path pattern, never the raw URL. */
  requestAnswered(method: string, route: string, status: number, seconds: number): void {
    const m = METHODS.has(method) ? method : "other";
    this.requests.inc({ method: m, route, status: String(status) });
    this.requestSeconds.observe({ method: m, route }, seconds);
  }

  /** For EventPersister.onBatchPersisted: counts the events this batch stored. */
  readonly eventsPersisted = (events: readonly PersistedEvent[]): void => {
    let local = 0;
    let remote = 0;
    for (const e of events) {
      // An event without `stored` is a transaction ID's earlier event, answered again, not a new one.
      if (!e.stored) continue;
      if (e.sender.slice(e.sender.indexOf(":") + 1) === this.serverName) local++;
      else remote++;
    }
    if (local) this.persisted.inc({ origin: "local" }, local);
    if (remote) this.persisted.inc({ origin: "remote" }, remote);
  };

  /** For openDatabase's `onQuery`. */
  readonly queryAnswered: QueryObserver = (kind, seconds) => this.querySeconds.observe({ kind }, seconds);

  /** The sync notifier's waiting long-polls, read at each scrape. */
  collectSyncWaiters(waiting: () => number): void {
    new Gauge({
      name: "parley_sync_waiters",
      help: "/sync long-polls waiting for something to answer",
      registers: [this.registry],
      collect() {
        this.set(waiting());
      },
    });
  }

  /** The database pool's use, read at each scrape. */
  collectPoolUse(poolUse: () => PoolUse): void {
    const gauge = (name: string, help: string, read: (u: PoolUse) => number) =>
      new Gauge({
        name,
        help,
        registers: [this.registry],
        collect() {
          this.set(read(poolUse()));
        },
      });
    gauge("parley_database_pool_size", "Connections the database pool may open (1 for the embedded database)", (u) => u.size);
    gauge("parley_database_pool_in_use", "Connections of the pool running a query, a transaction or held by a reservation", (u) => u.inUse);
    gauge("parley_database_pool_waiting", "Queries and transactions waiting for a connection of the pool", (u) => u.waiting);
  }

  /**
   * The federation queues' depths, read at each scrape (the composition passes the sender's reading:
   * this module sits below federation/transport and does not import it).
   */
  collectFederationQueues(depths: (limit: number) => Promise<QueueDepth[]>): void {
    new Gauge({
      name: "parley_federation_queue_depth",
      help: `PDUs, EDUs and best-effort EDUs (kind) waiting to be sent to a destination; the ${MAX_DESTINATIONS} deepest destinations`,
      labelNames: ["destination", "kind"],
      registers: [this.registry],
      async collect() {
        // A destination whose queue emptied must disappear, not stay at its last depth.
        this.reset();
        for (const d of await depths(MAX_DESTINATIONS)) this.set({ destination: d.destination, kind: d.kind }, d.count);
      },
    });
  }

  /** The text exposition of every family. */
  async exposition(): Promise<{ body: string; contentType: string }> {
    return { body: await this.registry.metrics(), contentType: this.registry.contentType };
  }
}
