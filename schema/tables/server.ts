import { bigint, pgTable, text } from "drizzle-orm/pg-core";

/**
 * Facts about this homeserver that must never change once the database exists,
 * such as the server name its users and events were created under.
 */
export const serverSettings = pgTable("server_settings", {
  key: text("key").primaryKey(),
  value: text("value").notNull(),
  updatedTs: bigint("updated_ts", { mode: "number" }).notNull(),
});
