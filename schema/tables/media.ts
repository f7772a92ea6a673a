// The media repository's tables: what is known of each piece of media (local uploads and the
// remote media cached for local clients) and the thumbnails made of it. The bytes live in the
// media store (server/media/store.ts), addressed by their SHA-256. Owned by server/media/.
import { bigint, boolean, index, integer, pgTable, primaryKey, text } from "drizzle-orm/pg-core";

/**
 * One row per `mxc://{server_name}/{media_id}`. A local upload has `user_id`; remote media cached
 * here has `fetched_ts` (its `server_name` is its origin). A media ID created with
 * `POST /_matrix/media/v1/create` has no `sha256` until its content is uploaded, and is refused
 * after `unused_expires_ts`. `authenticated` marks media that the deprecated unauthenticated
 * `/_matrix/media/v3/download|thumbnail` endpoints will not serve (the spec's "freeze").
 */
export const media = pgTable(
  "media",
  {
    serverName: text("server_name").notNull(),
    mediaId: text("media_id").notNull(),
    userId: text("user_id"),
    contentType: text("content_type"),
    uploadName: text("upload_name"),
    size: bigint("size", { mode: "number" }),
    sha256: text("sha256"),
    createdTs: bigint("created_ts", { mode: "number" }).notNull(),
    unusedExpiresTs: bigint("unused_expires_ts", { mode: "number" }),
    fetchedTs: bigint("fetched_ts", { mode: "number" }),
    /** When a client last downloaded it or a thumbnail of it (recorded at most every ten minutes). */
    lastAccessTs: bigint("last_access_ts", { mode: "number" }),
    authenticated: boolean("authenticated").notNull().default(false),
  },
  (t) => [
    primaryKey({ columns: [t.serverName, t.mediaId] }),
    index("media_user_idx").on(t.userId, t.createdTs),
    index("media_sha256_idx").on(t.sha256),
  ],
);

/** A thumbnail made once per (media, width, height, method) and kept; its bytes are in the store too. */
export const mediaThumbnails = pgTable(
  "media_thumbnails",
  {
    serverName: text("server_name").notNull(),
    mediaId: text("media_id").notNull(),
    width: integer("width").notNull(),
    height: integer("height").notNull(),
    method: text("method").notNull(),
    contentType: text("content_type").notNull(),
    size: bigint("size", { mode: "number" }).notNull(),
    sha256: text("sha256").notNull(),
    createdTs: bigint("created_ts", { mode: "number" }).notNull(),
  },
  (t) => [primaryKey({ columns: [t.serverName, t.mediaId, t.width, t.height, t.method] }), index("media_thumbnails_sha256_idx").on(t.sha256)],
);

/**
 * Media an admin quarantined (Synapse's media admin API): served to no one, local or remote, and
 * remote media not fetched again. A table of its own, so remote media never cached here can be
 * quarantined too (an abuse report names its URI before anyone downloads it).
 */
export const mediaQuarantine = pgTable(
  "media_quarantine",
  {
    serverName: text("server_name").notNull(),
    mediaId: text("media_id").notNull(),
    quarantinedBy: text("quarantined_by").notNull(),
    ts: bigint("ts", { mode: "number" }).notNull(),
  },
  (t) => [primaryKey({ columns: [t.serverName, t.mediaId] })],
);
