// The federation transport's tables: other servers' signing keys, our own retired keys, the
// durable outbound queue per destination, inbound transaction IDs, and what we know of remote
// users' devices. Owned by federation/transport/: no service queries them.
// https://spec.matrix.org/latest/server-server-api/
import { bigint, bigserial, boolean, index, integer, pgTable, primaryKey, text } from "drizzle-orm/pg-core";

/**
 * Verify keys of other servers, one row per (server, key ID), with the signed key response they
 * came in (what a notary query is answered with). `valid_until_ts` is already capped at 7 days
 * after fetching; `expired_ts` is set for keys the server lists as old.
 */
export const remoteServerKeys = pgTable(
  "remote_server_keys",
  {
    serverName: text("server_name").notNull(),
    keyId: text("key_id").notNull(),
    /** Unpadded base64 of the 32-byte Ed25519 public key. */
    verifyKey: text("verify_key").notNull(),
    validUntilTs: bigint("valid_until_ts", { mode: "number" }).notNull(),
    expiredTs: bigint("expired_ts", { mode: "number" }),
    fetchedTs: bigint("fetched_ts", { mode: "number" }).notNull(),
    /** The whole `/_matrix/key/v2/server` response, as received (canonical JSON). */
    responseJson: text("response_json").notNull(),
  },
  (t) => [primaryKey({ columns: [t.serverName, t.keyId] })],
);

/** Our own retired signing keys, still published under `old_verify_keys`. */
export const ownOldVerifyKeys = pgTable("own_old_verify_keys", {
  keyId: text("key_id").primaryKey(),
  verifyKey: text("verify_key").notNull(),
  expiredTs: bigint("expired_ts", { mode: "number" }).notNull(),
});

/**
 * The outbound queue: PDUs and persistent EDUs waiting for one destination, in `id` order. A
 * transaction claims the oldest unclaimed rows by writing its ID into them before it is sent, so a
 * retry (after a failure, a crash or a handover to another process) sends exactly the same rows
 * under the same transaction ID, and the receiver's idempotency makes delivery exactly-once. Rows
 * are deleted once the destination acknowledged them.
 */
export const federationOutbox = pgTable(
  "federation_outbox",
  {
    id: bigserial("id", { mode: "number" }).primaryKey(),
    destination: text("destination").notNull(),
    /** `pdu` or `edu`. */
    kind: text("kind").notNull(),
    /** The PDU or EDU as JSON. */
    payload: text("payload").notNull(),
    createdTs: bigint("created_ts", { mode: "number" }).notNull(),
    /** The transaction that carries this row, once one has claimed it. */
    txnId: text("txn_id"),
  },
  (t) => [index("federation_outbox_destination_idx").on(t.destination, t.id)],
);

/** Per destination: how sending has gone (backoff, last success, last error). */
export const federationDestinations = pgTable("federation_destinations", {
  destination: text("destination").primaryKey(),
  /** Consecutive failures; 0 when the last attempt succeeded. */
  failures: integer("failures").notNull().default(0),
  /** No attempt before this time (backoff); null when the destination may be tried now. */
  retryAtTs: bigint("retry_at_ts", { mode: "number" }),
  lastSuccessTs: bigint("last_success_ts", { mode: "number" }),
  lastAttemptTs: bigint("last_attempt_ts", { mode: "number" }),
  lastError: text("last_error"),
});

/** Transactions received, so a repeated `PUT /send/{txnId}` is answered again without effect. */
export const federationInboundTxns = pgTable(
  "federation_inbound_txns",
  {
    origin: text("origin").notNull(),
    txnId: text("txn_id").notNull(),
    /** The response we gave (per-PDU results). */
    responseJson: text("response_json").notNull(),
    receivedTs: bigint("received_ts", { mode: "number" }).notNull(),
  },
  (t) => [primaryKey({ columns: [t.origin, t.txnId] }), index("federation_inbound_txns_ts_idx").on(t.receivedTs)],
);

/**
 * What we know of a remote user's device list: the last `stream_id` of theirs we applied
 * (`m.device_list_update` ordering), and whether our copy is stale (a gap was seen, resync due).
 */
export const remoteDeviceListHeads = pgTable("remote_device_list_heads", {
  userId: text("user_id").primaryKey(),
  streamId: bigint("stream_id", { mode: "number" }).notNull(),
  stale: boolean("stale").notNull().default(false),
  updatedTs: bigint("updated_ts", { mode: "number" }).notNull(),
});

/** A remote user's devices as their server told us (`keys` as the canonical JSON received). */
export const remoteDevices = pgTable(
  "remote_devices",
  {
    userId: text("user_id").notNull(),
    deviceId: text("device_id").notNull(),
    displayName: text("display_name"),
    keysJson: text("keys_json"),
  },
  (t) => [primaryKey({ columns: [t.userId, t.deviceId] })],
);

/** A remote user's cross-signing keys (`master`, `self_signing`), as received. */
export const remoteCrossSigningKeys = pgTable(
  "remote_cross_signing_keys",
  {
    userId: text("user_id").notNull(),
    usage: text("usage").notNull(),
    keyJson: text("key_json").notNull(),
  },
  (t) => [primaryKey({ columns: [t.userId, t.usage] })],
);
