-- Per-user usage of account data and filters, for the storage quotas (server/userdata/userdata.ts), counted from what is already stored.
CREATE TABLE "user_data_usage" (
	"user_id" text PRIMARY KEY NOT NULL,
	"bytes" bigint DEFAULT 0 NOT NULL,
	"filters" integer DEFAULT 0 NOT NULL
);--> statement-breakpoint
INSERT INTO "user_data_usage" ("user_id", "bytes", "filters")
SELECT "user_id", sum("bytes"), sum("filters") FROM (
	SELECT "user_id", octet_length("room_id") + octet_length("type") + octet_length("content") AS "bytes", 0 AS "filters" FROM "account_data"
	UNION ALL
	SELECT "user_id", octet_length("filter"), 1 FROM "filters"
) AS "usage" GROUP BY "user_id";
