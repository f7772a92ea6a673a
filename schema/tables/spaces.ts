// The spaces hierarchy (server/rooms/space-hierarchy.ts): where a client's paginated walk of a space
// stands. Kept in the database, not in one process's memory, so that a `next_batch` token works on
// every Parley process sharing the database (Synapse keeps them in its `sessions` table likewise).
import { bigint, boolean, index, integer, jsonb, pgTable, text } from "drizzle-orm/pg-core";

/**
 * One `next_batch` token: the walk's parameters, which may not change while paginating, and its
 * position: the rooms still to visit (the next last) and those visited. Rows past `expires_ts` are
 * refused and deleted when the next session is saved.
 */
export const spaceHierarchySessions = pgTable(
  "space_hierarchy_sessions",
  {
    token: text("token").primaryKey(),
    userId: text("user_id").notNull(),
    roomId: text("room_id").notNull(),
    suggestedOnly: boolean("suggested_only").notNull(),
    /** As the client gave it (null: not given). */
    maxDepth: integer("max_depth"),
    queue: jsonb("queue").notNull(),
    processed: jsonb("processed").notNull(),
    expiresTs: bigint("expires_ts", { mode: "number" }).notNull(),
  },
  (t) => [index("space_hierarchy_sessions_expires_idx").on(t.expiresTs)],
);
