// The user directory's tables (`POST /user_directory/search`): who can be found and under which
// words, the public rooms and their members. Owned by server/userdirectory/. Who shares a room with
// the searcher is read from the rooms component's current state at search time.
import { boolean, index, pgTable, primaryKey, text } from "drizzle-orm/pg-core";

/**
 * One row per user the directory knows: local users (profile from their account; deactivated users
 * have no row) and users of other servers joined to a room we know (profile from their latest
 * membership event). `name_key`/`id_key` are the display name and user ID normalised for matching
 * (NFKC, lower case): what the ranking compares whole or by prefix.
 */
export const userDirectory = pgTable("user_directory", {
  userId: text("user_id").primaryKey(),
  isLocal: boolean("is_local").notNull(),
  /** Found by everyone when `user_directory_search_all_users` is on: local accounts that are not guests. */
  listed: boolean("listed").notNull(),
  displayName: text("display_name"),
  avatarUrl: text("avatar_url"),
  nameKey: text("name_key"),
  idKey: text("id_key").notNull(),
});

/**
 * The words a user is found under (of the display name and the user ID, normalised): a search
 * term matches a user when it is a prefix of one of them. `text_pattern_ops` makes `LIKE 'ali%'`
 * an index range scan whatever the database's collation.
 */
export const userDirectorySearch = pgTable(
  "user_directory_search",
  {
    userId: text("user_id").notNull(),
    token: text("token").notNull(),
  },
  (t) => [
    primaryKey({ columns: [t.userId, t.token] }),
    index("user_directory_search_token_idx").using("btree", t.token.op("text_pattern_ops"), t.userId),
  ],
);

/**
 * Rooms whose members everyone can find: join rule `public` or history visibility
 * `world_readable` (the spec's list), kept as their current state changes.
 */
export const userDirectoryPublicRooms = pgTable("user_directory_public_rooms", {
  roomId: text("room_id").primaryKey(),
});

/**
 * The joined members of the public rooms above: who everyone can find, one indexed probe per
 * candidate at search time. Kept with the rooms' memberships; a room leaves this table (and the
 * one above) when no user of this server is joined to it any more (its state is then frozen).
 */
export const userDirectoryPublicMembers = pgTable(
  "user_directory_public_members",
  {
    userId: text("user_id").notNull(),
    roomId: text("room_id").notNull(),
  },
  (t) => [primaryKey({ columns: [t.userId, t.roomId] }), index("user_directory_public_members_room_idx").on(t.roomId)],
);
