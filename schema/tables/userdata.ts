// The user-data component's tables: account data (global and, later, per room), filters and push
// rules. Owned by server/userdata/.
import { bigint, bigserial, index, pgTable, primaryKey, text } from "drizzle-orm/pg-core";

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
