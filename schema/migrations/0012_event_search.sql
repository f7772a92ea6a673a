CREATE TABLE "event_search" (
	"event_id" text PRIMARY KEY NOT NULL,
	"room_id" text NOT NULL,
	"sender" text NOT NULL,
	"key" text NOT NULL,
	"vector" "tsvector" NOT NULL,
	"stream_ordering" bigint NOT NULL
);
--> statement-breakpoint
-- Backfill: the events stored before search existed (server/rooms/search.ts writes new ones with
-- the event). The same text as searchableText() there: m.room.message body, m.room.name name,
-- m.room.topic topic plus the text/plain m.topic body when it differs. Read as json, not jsonb:
-- jsonb refuses a \u0000 escape, which events from other servers may carry (those are skipped).
INSERT INTO "event_search" ("event_id", "room_id", "sender", "key", "vector", "stream_ordering")
WITH searchable AS MATERIALIZED (
	SELECT event_id, room_id, sender, type, stream_ordering, json FROM "events"
	WHERE type IN ('m.room.message', 'm.room.name', 'm.room.topic') AND (type = 'm.room.message' OR state_key = '')
		AND stream_ordering IS NOT NULL AND NOT outlier AND rejected_reason IS NULL AND NOT soft_failed
		AND redacted_by IS NULL AND strpos(json, '\u0000') = 0
)
SELECT v.event_id, v.room_id, v.sender, v.key, to_tsvector('english', v.value), v.stream_ordering
FROM (
	SELECT e.event_id, e.room_id, e.sender, e.stream_ordering,
		CASE e.type WHEN 'm.room.message' THEN 'content.body' WHEN 'm.room.name' THEN 'content.name' ELSE 'content.topic' END AS key,
		CASE e.type
			WHEN 'm.room.message' THEN CASE WHEN json_typeof(j.c -> 'body') = 'string' THEN j.c ->> 'body' END
			WHEN 'm.room.name' THEN CASE WHEN json_typeof(j.c -> 'name') = 'string' THEN j.c ->> 'name' END
			ELSE concat_ws(' ',
				CASE WHEN json_typeof(j.c -> 'topic') = 'string' THEN j.c ->> 'topic' END,
				CASE WHEN json_typeof(j.c -> 'm.topic') = 'object' AND json_typeof(j.c -> 'm.topic' -> 'm.text') = 'array' THEN (
					SELECT t ->> 'body' FROM json_array_elements(j.c -> 'm.topic' -> 'm.text') AS t
					WHERE json_typeof(t) = 'object' AND json_typeof(t -> 'body') = 'string'
						AND coalesce(t ->> 'mimetype', 'text/plain') = 'text/plain'
						AND t ->> 'body' IS DISTINCT FROM (CASE WHEN json_typeof(j.c -> 'topic') = 'string' THEN j.c ->> 'topic' END)
					LIMIT 1
				) END)
		END AS value
	FROM searchable e, LATERAL (SELECT e.json::json -> 'content' AS c) j
	WHERE json_typeof(j.c) = 'object'
) v
WHERE v.value IS NOT NULL AND v.value <> ''
ON CONFLICT DO NOTHING;
--> statement-breakpoint
CREATE INDEX "event_search_vector_idx" ON "event_search" USING gin ("vector");--> statement-breakpoint
CREATE INDEX "event_search_room_stream_idx" ON "event_search" USING btree ("room_id","stream_ordering");