// The end-to-end-encryption component's tables: device keys, one-time and fallback keys,
// cross-signing keys and signatures, the device-list stream, to-device mailboxes and server-side
// key backups. Owned by server/e2ee/: no other component queries them.
// https://spec.matrix.org/latest/client-server-api/#end-to-end-encryption
//
// Key objects are stored as the canonical JSON of what the client uploaded (signatures included),
// so "is this the same key" is a string comparison.
import { bigint, boolean, index, integer, pgTable, primaryKey, text } from "drizzle-orm/pg-core";

/** A device's identity keys (`device_keys` of `/keys/upload`), as uploaded. */
export const e2eDeviceKeys = pgTable(
  "e2e_device_keys",
  {
    userId: text("user_id").notNull(),
    deviceId: text("device_id").notNull(),
    keyJson: text("key_json").notNull(),
  },
  (t) => [primaryKey({ columns: [t.userId, t.deviceId] })],
);

/** Unclaimed one-time keys. Claiming one deletes its row (`DELETE ... RETURNING`). */
export const e2eOneTimeKeys = pgTable(
  "e2e_one_time_keys",
  {
    userId: text("user_id").notNull(),
    deviceId: text("device_id").notNull(),
    /** e.g. `signed_curve25519`. */
    algorithm: text("algorithm").notNull(),
    /** The part after the colon of `signed_curve25519:AAAAHg`. */
    keyId: text("key_id").notNull(),
    keyJson: text("key_json").notNull(),
  },
  (t) => [primaryKey({ columns: [t.userId, t.deviceId, t.algorithm, t.keyId] })],
);

/** At most one fallback key per device and algorithm; `used` once it has been handed out. */
export const e2eFallbackKeys = pgTable(
  "e2e_fallback_keys",
  {
    userId: text("user_id").notNull(),
    deviceId: text("device_id").notNull(),
    algorithm: text("algorithm").notNull(),
    keyId: text("key_id").notNull(),
    keyJson: text("key_json").notNull(),
    used: boolean("used").notNull().default(false),
  },
  (t) => [primaryKey({ columns: [t.userId, t.deviceId, t.algorithm] })],
);

/** A user's current cross-signing keys: `master`, `self_signing`, `user_signing`. */
export const e2eCrossSigningKeys = pgTable(
  "e2e_cross_signing_keys",
  {
    userId: text("user_id").notNull(),
    keyType: text("key_type").notNull(),
    /** The unpadded-base64 Ed25519 public key (also the key's ID after `ed25519:`). */
    publicKey: text("public_key").notNull(),
    keyJson: text("key_json").notNull(),
  },
  (t) => [primaryKey({ columns: [t.userId, t.keyType] })],
);

/**
 * Signatures uploaded through `/keys/signatures/upload`, merged into the signed objects when keys
 * are queried. The target is a device (`target_key_id` = device ID) or a master key
 * (`target_key_id` = its public key).
 */
export const e2eCrossSigningSignatures = pgTable(
  "e2e_cross_signing_signatures",
  {
    targetUserId: text("target_user_id").notNull(),
    targetKeyId: text("target_key_id").notNull(),
    signerUserId: text("signer_user_id").notNull(),
    /** e.g. `ed25519:<self-signing public key>` or `ed25519:<device ID>`. */
    signerKeyId: text("signer_key_id").notNull(),
    signature: text("signature").notNull(),
  },
  (t) => [
    primaryKey({ name: "e2e_cross_signing_signatures_pk", columns: [t.targetUserId, t.targetKeyId, t.signerUserId, t.signerKeyId] }),
    index("e2e_cross_signing_signatures_signer_idx").on(t.signerUserId, t.signerKeyId),
  ],
);

/**
 * The device-list stream: one row each time a user's devices, device keys or cross-signing keys
 * change. `stream_id` is the position in the `device_lists` stream (taken from `stream_positions`
 * through server/sync/streams.ts) that `/sync` and `/keys/changes` read. `self_only` rows (a
 * signature of another user's key by one's user-signing key) concern only the user themself.
 */
export const deviceListsStream = pgTable(
  "device_lists_stream",
  {
    streamId: bigint("stream_id", { mode: "number" }).primaryKey(),
    userId: text("user_id").notNull(),
    /**
     * The device concerned, when the change is about one device. In a `self_only` row: the other
     * user whose master key the user signed, when that is the change (server/e2ee/device-lists.ts).
     */
    deviceId: text("device_id"),
    selfOnly: boolean("self_only").notNull().default(false),
  },
  (t) => [index("device_lists_stream_user_idx").on(t.userId, t.streamId)],
);

/**
 * Undelivered to-device messages: one device's mailbox, in stream order. `stream_id` is the
 * position in the `to_device` stream (from `stream_positions`, server/sync/streams.ts).
 */
export const toDeviceMessages = pgTable(
  "to_device_messages",
  {
    streamId: bigint("stream_id", { mode: "number" }).primaryKey(),
    userId: text("user_id").notNull(),
    deviceId: text("device_id").notNull(),
    sender: text("sender").notNull(),
    senderDevice: text("sender_device").notNull(),
    type: text("type").notNull(),
    content: text("content").notNull(),
  },
  (t) => [index("to_device_messages_mailbox_idx").on(t.userId, t.deviceId, t.streamId)],
);

/**
 * How many messages wait in each device's mailbox, kept with every insert and delete so the size cap
 * is one conditional update (exact under concurrent senders) rather than a count.
 */
export const toDeviceMailboxes = pgTable(
  "to_device_mailboxes",
  {
    userId: text("user_id").notNull(),
    deviceId: text("device_id").notNull(),
    pending: integer("pending").notNull(),
  },
  (t) => [primaryKey({ columns: [t.userId, t.deviceId] })],
);

/**
 * How many of one sender's messages wait in each device's mailbox, kept like `to_device_mailboxes`
 * (with every insert and delete, in the same transactions) so the per-sender caps are one
 * conditional update. A row goes when its count reaches zero, so the table holds only the pairs
 * with mail waiting. `sender` is a user ID, local or (once federation delivers to-device messages)
 * remote.
 */
export const toDeviceMailboxSenders = pgTable(
  "to_device_mailbox_senders",
  {
    userId: text("user_id").notNull(),
    deviceId: text("device_id").notNull(),
    sender: text("sender").notNull(),
    pending: integer("pending").notNull(),
  },
  (t) => [primaryKey({ columns: [t.userId, t.deviceId, t.sender] })],
);

/** `PUT /sendToDevice/{type}/{txnId}` transactions already done, per sending device. */
export const toDeviceTxns = pgTable(
  "to_device_txns",
  {
    userId: text("user_id").notNull(),
    deviceId: text("device_id").notNull(),
    txnId: text("txn_id").notNull(),
    createdTs: bigint("created_ts", { mode: "number" }).notNull(),
  },
  (t) => [primaryKey({ columns: [t.userId, t.deviceId, t.txnId] })],
);

/**
 * Key-backup versions. Deleted versions keep their row (`deleted`) so a number is never reused and
 * deleting twice succeeds. `etag` counts the changes to the version's keys.
 */
export const e2eRoomKeysVersions = pgTable(
  "e2e_room_keys_versions",
  {
    userId: text("user_id").notNull(),
    version: integer("version").notNull(),
    algorithm: text("algorithm").notNull(),
    authData: text("auth_data").notNull(),
    etag: bigint("etag", { mode: "number" }).notNull().default(0),
    deleted: boolean("deleted").notNull().default(false),
  },
  (t) => [primaryKey({ columns: [t.userId, t.version] })],
);

/** Backed-up Megolm session keys, one per (backup version, room, session). */
export const e2eRoomKeys = pgTable(
  "e2e_room_keys",
  {
    userId: text("user_id").notNull(),
    version: integer("version").notNull(),
    roomId: text("room_id").notNull(),
    sessionId: text("session_id").notNull(),
    firstMessageIndex: bigint("first_message_index", { mode: "number" }).notNull(),
    forwardedCount: bigint("forwarded_count", { mode: "number" }).notNull(),
    isVerified: boolean("is_verified").notNull(),
    sessionData: text("session_data").notNull(),
  },
  (t) => [primaryKey({ columns: [t.userId, t.version, t.roomId, t.sessionId] })],
);
