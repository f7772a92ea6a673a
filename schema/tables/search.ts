// The rooms component's full-text search index (server/rooms/search.ts): one row per searchable
// event, written with the event (the persister's write extension) and removed when it is redacted.
import { bigint, customType, index, pgTable, text } from "drizzle-orm/pg-core";

/** PostgreSQL's text-search document type (drizzle has no built-in for it). */
const tsvector = customType<{ data: string }>({
  dataType() {
    return "tsvector";
  },
});

/**
 * The searchable text of the unencrypted events the spec's server-side search covers: `content.body`
 * of m.room.message, `content.name` of m.room.name, `content.topic` (and the text/plain `m.topic`) of
 * m.room.topic, as `to_tsvector('english', …)`. `key` is the spec's key (`content.body`, …), which
 * also names the event type. `stream_ordering` orders `recent` results and pages them. Whether the
 * event is still visible (not redacted, rejected or soft-failed) is read from `events` at query time.
 */
export const eventSearch = pgTable(
  "event_search",
  {
    eventId: text("event_id").primaryKey(),
    roomId: text("room_id").notNull(),
    sender: text("sender").notNull(),
    key: text("key").notNull(),
    vector: tsvector("vector").notNull(),
    streamOrdering: bigint("stream_ordering", { mode: "number" }).notNull(),
  },
  (t) => [
    // fastupdate off: each insert goes into the index itself, not a pending list that every query
    // then scans in full until a VACUUM (PGlite runs no autovacuum; measured 10-60 ms per query).
    index("event_search_vector_idx").using("gin", t.vector).with({ fastupdate: false }),
    // `recent` over a common term: the newest rows first, stopping after a page of matches.
    index("event_search_stream_idx").on(t.streamOrdering),
  ],
);
