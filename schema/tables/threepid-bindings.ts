// Third-party identifiers bound to our users on identity servers through this homeserver
// (`/account/3pid/bind`), so that deleting, unbinding or deactivating can unbind them again.
// Owned by server/accounts/threepid-bindings.ts.
// https://spec.matrix.org/latest/client-server-api/#adding-account-administrative-contact-information
import { bigint, index, pgTable, primaryKey, text } from "drizzle-orm/pg-core";

/** One row per (user, medium, address, identity server) the user bound through us. */
export const threepidBindings = pgTable(
  "threepid_bindings",
  {
    userId: text("user_id").notNull(),
    medium: text("medium").notNull(),
    address: text("address").notNull(),
    idServer: text("id_server").notNull(),
    boundTs: bigint("bound_ts", { mode: "number" }).notNull(),
  },
  (t) => [primaryKey({ columns: [t.userId, t.medium, t.address, t.idServer] }), index("threepid_bindings_address_idx").on(t.medium, t.address)],
);
