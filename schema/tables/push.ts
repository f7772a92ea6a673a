// Push notifications (server/push/): the pushers users set, the notifications they got (what
// `GET /notifications` lists), and the durable queue of pushes to their gateways.
// https://spec.matrix.org/latest/client-server-api/#push-notifications
import { bigint, bigserial, boolean, index, integer, jsonb, pgTable, primaryKey, text, uniqueIndex } from "drizzle-orm/pg-core";

/**
 * A pusher: keyed by (user, app_id, pushkey) as the spec keys it, and tied to the device whose
 * access token set it (it goes with the device).
 */
export const pushers = pgTable(
  "pushers",
  {
    id: bigserial("id", { mode: "number" }).primaryKey(),
    userId: text("user_id").notNull(),
    /** The device of the access token that set it; null for an application service's user without one. */
    deviceId: text("device_id"),
    appId: text("app_id").notNull(),
    pushkey: text("pushkey").notNull(),
    kind: text("kind").notNull(),
    appDisplayName: text("app_display_name").notNull(),
    deviceDisplayName: text("device_display_name").notNull(),
    profileTag: text("profile_tag"),
    lang: text("lang").notNull(),
    /** `data` as the client gave it (`url` included). */
    data: jsonb("data").notNull(),
    /** When the pushkey was last set (`pushkey_ts`, ms). */
    pushkeyTs: bigint("pushkey_ts", { mode: "number" }).notNull(),
  },
  (t) => [uniqueIndex("pushers_key_idx").on(t.userId, t.appId, t.pushkey), index("pushers_app_pushkey_idx").on(t.appId, t.pushkey)],
);

/**
 * Every notification a local user got (an event whose push actions include `notify`), copied from
 * `event_push_actions` after commit. `event_push_actions` keeps only the unread ones (its rows go
 * when read): a notification is read when its row there is gone.
 */
export const pushNotifications = pgTable(
  "push_notifications",
  {
    userId: text("user_id").notNull(),
    streamOrdering: bigint("stream_ordering", { mode: "number" }).notNull(),
    roomId: text("room_id").notNull(),
    eventId: text("event_id").notNull(),
    highlight: boolean("highlight").notNull(),
    /** The actions of the rule that matched. */
    actions: jsonb("actions").notNull(),
    ts: bigint("ts", { mode: "number" }).notNull(),
  },
  (t) => [primaryKey({ columns: [t.userId, t.streamOrdering] })],
);

/** How far `event_push_actions` was copied into `push_notifications` and `push_queue` (one row). */
export const pushProgress = pgTable("push_progress", {
  id: integer("id").primaryKey(),
  streamOrdering: bigint("stream_ordering", { mode: "number" }).notNull(),
});

/**
 * Pushes waiting for their gateway: one per (pusher, notification), or a count-only update
 * (`event_id` null) after a read receipt. Deleted once the gateway answered, or when too old.
 */
export const pushQueue = pgTable(
  "push_queue",
  {
    id: bigserial("id", { mode: "number" }).primaryKey(),
    pusherId: bigint("pusher_id", { mode: "number" }).notNull(),
    userId: text("user_id").notNull(),
    roomId: text("room_id"),
    eventId: text("event_id"),
    streamOrdering: bigint("stream_ordering", { mode: "number" }),
    /** The matching rule's actions (their tweaks become `devices[].tweaks`); `[]` for a count-only update. */
    actions: jsonb("actions").notNull(),
    createdTs: bigint("created_ts", { mode: "number" }).notNull(),
    nextAttemptTs: bigint("next_attempt_ts", { mode: "number" }).notNull(),
    attempts: integer("attempts").notNull().default(0),
  },
  (t) => [index("push_queue_due_idx").on(t.nextAttemptTs), index("push_queue_pusher_idx").on(t.pusherId, t.id)],
);
