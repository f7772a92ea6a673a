// Application services (server/appservices/delivery.ts): how far each registered service has been
// sent the room-event stream. Events are not copied: a service's queue is its position in the
// `events` stream (`stream_ordering`, gap-free and committed in order) plus the one transaction in
// flight, so a service that is down for a day costs one row, and catches up from it.
// https://spec.matrix.org/latest/application-service-api/#pushing-events
import { bigint, integer, pgTable, text } from "drizzle-orm/pg-core";

/**
 * One row per application service (by registration `id`), created when the service is first seen
 * with a `url` (at the stream position of that moment: a new service gets what happens from then on).
 *
 * A transaction is first recorded here (`pending_*`: its ID, the stream position it covers up to, the
 * event IDs and ephemeral data it carries), then sent; only when the service acknowledged it does
 * `delivered_position` move to `pending_up_to` and the pending columns clear. A retry (after a
 * failure, a restart, or another process taking the service over) sends exactly the recorded
 * transaction under the same ID, so the service's idempotency on the ID makes delivery exactly-once.
 */
export const appserviceDelivery = pgTable("appservice_delivery", {
  asId: text("as_id").primaryKey(),
  /** Every room event at or below this stream position was delivered (or was of no interest). */
  deliveredPosition: bigint("delivered_position", { mode: "number" }).notNull(),
  /** The last transaction ID used; IDs are numeric and increase by one per transaction. */
  lastTxnId: bigint("last_txn_id", { mode: "number" }).notNull().default(0),
  /** The transaction built and not yet acknowledged, if any. */
  pendingTxnId: bigint("pending_txn_id", { mode: "number" }),
  pendingUpTo: bigint("pending_up_to", { mode: "number" }),
  /** JSON: `{ "events": [event IDs], "ephemeral": [...], "to_device": [...] }`. */
  pendingJson: text("pending_json"),
  /** Consecutive failures; 0 after a success. */
  failures: integer("failures").notNull().default(0),
  /** No attempt before this time (backoff); null when the service may be tried now. */
  retryAtTs: bigint("retry_at_ts", { mode: "number" }),
  lastAttemptTs: bigint("last_attempt_ts", { mode: "number" }),
  lastSuccessTs: bigint("last_success_ts", { mode: "number" }),
  lastError: text("last_error"),
  lastErrorTs: bigint("last_error_ts", { mode: "number" }),
  /** Several processes on one PostgreSQL: the process sending to this service, until `lease_until_ts`. */
  leaseOwner: text("lease_owner"),
  leaseUntilTs: bigint("lease_until_ts", { mode: "number" }),
});
