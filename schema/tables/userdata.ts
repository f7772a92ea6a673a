// The user-data component's tables: account data (global and, later, per room), filters and push
// rules. Owned by server/userdata/.
import { bigint, bigserial, index, integer, pgTable, primaryKey, text } from "drizzle-orm/pg-core";

/**
 * Account data, one row per (user, room, type); `room_id` is '' for global account data. The content
 * is kept as the JSON text the client sent, returned as it was given. `stream_id` is the position of
 * the last write in the `account_data` stream (server/sync/streams.ts), so `/sync` asks for "what
 * changed since position N" with one range query on `account_data_stream_idx`.
 *
 * Push rules live here too, as the `m.push_rules` global account data (which clients may not PUT
 * through the account-data API): the user's effective ruleset, so a change streams to `/sync` like
 * any other account data.
 */
export const accountData = pgTable(
  "account_data",
  {
    userId: text("user_id").notNull(),
    roomId: text("room_id").notNull().default(""),
    type: text("type").notNull(),
    content: text("content").notNull(),
    streamId: bigint("stream_id", { mode: "number" }).notNull(),
  },
  (t) => [
    primaryKey({ columns: [t.userId, t.roomId, t.type] }),
    index("account_data_stream_idx").on(t.userId, t.streamId),
  ],
);

/** Stored filters (`POST /user/{userId}/filter`), kept as the exact JSON text the client sent. */
export const filters = pgTable(
  "filters",
  {
    id: bigserial("id", { mode: "number" }).primaryKey(),
    userId: text("user_id").notNull(),
    filter: text("filter").notNull(),
  },
  (t) => [index("filters_user_idx").on(t.userId)],
);

/**
 * What each user stores through the user-data APIs, kept current by every write in the same
 * transaction, so the per-user quota check reads one row instead of summing the user's data:
 * `bytes` counts the room ID, type and JSON text of each account-data row (global, per room, tags,
 * push rules) and the JSON text of each filter; `filters` counts the user's filters. The row is
 * also the per-user lock that keeps two concurrent writes from both fitting in the last free bytes.
 */
export const userDataUsage = pgTable("user_data_usage", {
  userId: text("user_id").primaryKey(),
  bytes: bigint("bytes", { mode: "number" }).notNull().default(0),
  filters: integer("filters").notNull().default(0),
});
