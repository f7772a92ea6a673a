// The sync component's tables: read receipts, presence and per-user push actions (what unread
// notification counts are computed from). Owned by server/sync/ and server/ephemeral/. The stream
// positions themselves live in `stream_positions` (schema/tables/rooms.ts); every stream but
// `events` takes its positions through server/sync/streams.ts.
import { bigint, boolean, index, jsonb, pgTable, primaryKey, text } from "drizzle-orm/pg-core";

/**
 * Read receipts, the latest per (room, type, user, thread). `thread_id` is '' for an unthreaded
 * receipt, `main` or a thread root's event ID otherwise. `event_stream_ordering` is the receipted
 * event's position in the room-event stream (what unread counts compare against).
 */
export const receipts = pgTable(
  "receipts",
  {
    roomId: text("room_id").notNull(),
    receiptType: text("receipt_type").notNull(),
    userId: text("user_id").notNull(),
    threadId: text("thread_id").notNull().default(""),
    eventId: text("event_id").notNull(),
    eventStreamOrdering: bigint("event_stream_ordering", { mode: "number" }).notNull(),
    ts: bigint("ts", { mode: "number" }).notNull(),
    streamId: bigint("stream_id", { mode: "number" }).notNull(),
  },
  (t) => [
    primaryKey({ columns: [t.roomId, t.receiptType, t.userId, t.threadId] }),
    index("receipts_room_stream_idx").on(t.roomId, t.streamId),
  ],
);

/** Presence of local users. A row exists once a user has done something that sets presence. */
export const presence = pgTable(
  "presence",
  {
    userId: text("user_id").primaryKey(),
    /** `online`, `unavailable` or `offline`. */
    state: text("state").notNull(),
    statusMsg: text("status_msg"),
    lastActiveTs: bigint("last_active_ts", { mode: "number" }).notNull(),
    /** When a `/sync` of this user last ran (any process): what the offline sweep looks at. */
    lastSyncTs: bigint("last_sync_ts", { mode: "number" }).notNull(),
    currentlyActive: boolean("currently_active").notNull().default(false),
    streamId: bigint("stream_id", { mode: "number" }).notNull(),
  },
  (t) => [index("presence_stream_idx").on(t.streamId)],
);

/**
 * One row per (local user, event) that notifies the user, written when the event is persisted (the
 * push rules are evaluated then). `unread_notifications` counts the rows after the user's read
 * receipt; rows at or before it are deleted when the receipt moves.
 */
export const eventPushActions = pgTable(
  "event_push_actions",
  {
    userId: text("user_id").notNull(),
    roomId: text("room_id").notNull(),
    streamOrdering: bigint("stream_ordering", { mode: "number" }).notNull(),
    eventId: text("event_id").notNull(),
    /** `main`, or the root event ID of the thread the event is in. */
    threadId: text("thread_id").notNull().default("main"),
    highlight: boolean("highlight").notNull().default(false),
    /** The matching rule's actions, for the push gateway's tweaks and `GET /notifications` (server/push/). */
    actions: jsonb("actions"),
  },
  // By position: push (server/push/) copies each committed event's rows after commit.
  (t) => [primaryKey({ columns: [t.userId, t.roomId, t.streamOrdering] }), index("event_push_actions_stream_idx").on(t.streamOrdering)],
);
