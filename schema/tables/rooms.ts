// The rooms component's tables: the event graph (events, prev and auth edges), room state as
// deduplicated snapshots with deltas (state groups), the current state and local memberships, the
// room-event stream position, transaction IDs, relations and room aliases. Owned by server/rooms/.
import { sql } from "drizzle-orm";
import { bigint, bigserial, boolean, index, integer, pgTable, primaryKey, text, uniqueIndex } from "drizzle-orm/pg-core";

/**
 * One row per room this server knows. `forward_extremities` (the events with no children yet: the
 * next local event's prev_events), `max_depth` and `current_state_group` change with every event and
 * are read and locked (`SELECT ... FOR UPDATE`) at the start of each persist transaction, which is
 * what serialises the events of one room across processes.
 */
export const rooms = pgTable("rooms", {
  roomId: text("room_id").primaryKey(),
  roomVersion: text("room_version").notNull(),
  /** The create event's sender. */
  creator: text("creator").notNull(),
  /** Published in this server's room directory (`/publicRooms`). */
  isPublic: boolean("is_public").notNull().default(false),
  createdTs: bigint("created_ts", { mode: "number" }).notNull(),
  forwardExtremities: text("forward_extremities").array().notNull().default(sql`'{}'::text[]`),
  maxDepth: bigint("max_depth", { mode: "number" }).notNull().default(0),
  /** The state group of the room's current state (the resolved state at the forward extremities). */
  currentStateGroup: bigint("current_state_group", { mode: "number" }),
});

/**
 * Every event (PDU) of every room, the PDU kept as the JSON text it was signed or received as.
 * `stream_ordering` is the room-event stream position (what sync and /messages read): unique,
 * increasing, gap-free, and assigned in commit order (see server/rooms/persist.ts); null for
 * outliers, which are not part of the timeline. `topological_ordering` is the depth, which orders
 * `/messages` in the event graph.
 */
export const events = pgTable(
  "events",
  {
    eventId: text("event_id").primaryKey(),
    roomId: text("room_id").notNull(),
    type: text("type").notNull(),
    stateKey: text("state_key"),
    sender: text("sender").notNull(),
    originServerTs: bigint("origin_server_ts", { mode: "number" }).notNull(),
    depth: bigint("depth", { mode: "number" }).notNull(),
    json: text("json").notNull(),
    streamOrdering: bigint("stream_ordering", { mode: "number" }),
    topologicalOrdering: bigint("topological_ordering", { mode: "number" }).notNull(),
    outlier: boolean("outlier").notNull().default(false),
    /** Why the event was rejected by the authorization rules; null when accepted. */
    rejectedReason: text("rejected_reason"),
    softFailed: boolean("soft_failed").notNull().default(false),
    /** The accepted redaction event that redacts this event, if any. */
    redactedBy: text("redacted_by"),
    /** The state group of the state before this event. */
    stateBeforeGroup: bigint("state_before_group", { mode: "number" }),
    /** For accepted state events, the state group after it (null: the same as before). */
    stateAfterGroup: bigint("state_after_group", { mode: "number" }),
    /**
     * For state events, the event this one replaced in the state before it (the client format's
     * `unsigned.replaces_state`, whose content and sender are `prev_content` and `prev_sender`).
     */
    replacesState: text("replaces_state"),
  },
  (t) => [
    uniqueIndex("events_stream_ordering_idx").on(t.streamOrdering),
    index("events_room_topological_idx").on(t.roomId, t.topologicalOrdering, t.streamOrdering),
    index("events_room_stream_idx").on(t.roomId, t.streamOrdering),
  ],
);

/** The prev_events of each event. */
export const eventEdges = pgTable(
  "event_edges",
  {
    eventId: text("event_id").notNull(),
    prevEventId: text("prev_event_id").notNull(),
    roomId: text("room_id").notNull(),
  },
  (t) => [primaryKey({ columns: [t.eventId, t.prevEventId] }), index("event_edges_prev_idx").on(t.prevEventId)],
);

/** The auth_events of each event. */
export const eventAuth = pgTable(
  "event_auth",
  {
    eventId: text("event_id").notNull(),
    authEventId: text("auth_event_id").notNull(),
    roomId: text("room_id").notNull(),
  },
  (t) => [primaryKey({ columns: [t.eventId, t.authEventId] })],
);

/**
 * Stream positions, one row per stream. The `events` row is incremented by the last statement of
 * each event transaction: its row lock makes those transactions commit in stream order, so every
 * position at or below the committed value is committed and visible.
 */
export const streamPositions = pgTable("stream_positions", {
  stream: text("stream").primaryKey(),
  position: bigint("position", { mode: "number" }).notNull(),
});

/**
 * Room state as snapshots and deltas. A group with no `prev_group` is a full snapshot; otherwise
 * its entries are changes on top of `prev_group`. `chain_length` counts the deltas down to the
 * snapshot; it is capped, after which a new full snapshot is written.
 */
export const stateGroups = pgTable(
  "state_groups",
  {
    id: bigserial("id", { mode: "number" }).primaryKey(),
    roomId: text("room_id").notNull(),
    prevGroup: bigint("prev_group", { mode: "number" }),
    chainLength: integer("chain_length").notNull().default(0),
  },
  (t) => [index("state_groups_room_idx").on(t.roomId)],
);

/** The entries of a state group; a null event_id removes the key (in a delta). */
export const stateGroupEntries = pgTable(
  "state_group_entries",
  {
    groupId: bigint("group_id", { mode: "number" }).notNull(),
    type: text("type").notNull(),
    stateKey: text("state_key").notNull(),
    eventId: text("event_id"),
  },
  (t) => [primaryKey({ columns: [t.groupId, t.type, t.stateKey] })],
);

/** The current state of each room (the hot path), with the membership of m.room.member rows. */
export const currentState = pgTable(
  "current_state",
  {
    roomId: text("room_id").notNull(),
    type: text("type").notNull(),
    stateKey: text("state_key").notNull(),
    eventId: text("event_id").notNull(),
    membership: text("membership"),
  },
  (t) => [
    primaryKey({ columns: [t.roomId, t.type, t.stateKey] }),
    // "The rooms a user (of any server) is joined to": device lists, presence and key queries of
    // remote users, who have no room_memberships rows.
    index("current_state_members_idx").on(t.stateKey).where(sql`${t.type} = 'm.room.member'`),
  ],
);

/**
 * The current membership of local users in rooms: "rooms of user X" is one indexed query.
 * `stream_ordering` is the membership event's stream position. `forgotten` is set by /forget.
 */
export const roomMemberships = pgTable(
  "room_memberships",
  {
    userId: text("user_id").notNull(),
    roomId: text("room_id").notNull(),
    membership: text("membership").notNull(),
    eventId: text("event_id").notNull(),
    streamOrdering: bigint("stream_ordering", { mode: "number" }).notNull(),
    forgotten: boolean("forgotten").notNull().default(false),
  },
  (t) => [primaryKey({ columns: [t.userId, t.roomId] }), index("room_memberships_room_idx").on(t.roomId, t.membership)],
);

/**
 * Client transaction IDs (`PUT .../send/{type}/{txnId}`, `.../redact/{eventId}/{txnId}`): the same
 * (user, device, endpoint, txnId) returns the same event. https://spec.matrix.org/latest/client-server-api/#transaction-identifiers
 */
export const eventTransactions = pgTable(
  "event_transactions",
  {
    userId: text("user_id").notNull(),
    deviceId: text("device_id").notNull(),
    /** The request path without the transaction ID (`/rooms/{roomId}/send/{type}`, `/rooms/{roomId}/redact/{eventId}`): a transaction ID's scope. */
    endpoint: text("endpoint").notNull(),
    txnId: text("txn_id").notNull(),
    eventId: text("event_id").notNull(),
    createdTs: bigint("created_ts", { mode: "number" }).notNull(),
  },
  (t) => [
    primaryKey({ columns: [t.userId, t.deviceId, t.endpoint, t.txnId] }),
    index("event_transactions_event_idx").on(t.eventId),
  ],
);

/**
 * `m.relates_to` of each event: one row per relation (rel_type `m.annotation`, `m.replace`,
 * `m.thread`, `m.reference`, ...), plus `m.in_reply_to` for replies (not a relation type, kept for
 * reply lookups). `aggregation_key` is the key of an annotation (the reaction).
 */
export const eventRelations = pgTable(
  "event_relations",
  {
    eventId: text("event_id").notNull(),
    relType: text("rel_type").notNull(),
    relatesToId: text("relates_to_id").notNull(),
    roomId: text("room_id").notNull(),
    aggregationKey: text("aggregation_key"),
  },
  (t) => [
    primaryKey({ columns: [t.eventId, t.relType] }),
    index("event_relations_parent_idx").on(t.relatesToId, t.relType),
  ],
);

/** Local room aliases (`#alias:our.server`). */
export const roomAliases = pgTable(
  "room_aliases",
  {
    alias: text("alias").primaryKey(),
    roomId: text("room_id").notNull(),
    creator: text("creator").notNull(),
    createdTs: bigint("created_ts", { mode: "number" }).notNull(),
  },
  (t) => [index("room_aliases_room_idx").on(t.roomId)],
);
