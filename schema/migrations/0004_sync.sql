CREATE TABLE "event_push_actions" (
	"user_id" text NOT NULL,
	"room_id" text NOT NULL,
	"stream_ordering" bigint NOT NULL,
	"event_id" text NOT NULL,
	"thread_id" text DEFAULT 'main' NOT NULL,
	"highlight" boolean DEFAULT false NOT NULL,
	CONSTRAINT "event_push_actions_user_id_room_id_stream_ordering_pk" PRIMARY KEY("user_id","room_id","stream_ordering")
);
--> statement-breakpoint
CREATE TABLE "presence" (
	"user_id" text PRIMARY KEY NOT NULL,
	"state" text NOT NULL,
	"status_msg" text,
	"last_active_ts" bigint NOT NULL,
	"last_sync_ts" bigint NOT NULL,
	"currently_active" boolean DEFAULT false NOT NULL,
	"stream_id" bigint NOT NULL
);
--> statement-breakpoint
CREATE TABLE "receipts" (
	"room_id" text NOT NULL,
	"receipt_type" text NOT NULL,
	"user_id" text NOT NULL,
	"thread_id" text DEFAULT '' NOT NULL,
	"event_id" text NOT NULL,
	"event_stream_ordering" bigint NOT NULL,
	"ts" bigint NOT NULL,
	"stream_id" bigint NOT NULL,
	CONSTRAINT "receipts_room_id_receipt_type_user_id_thread_id_pk" PRIMARY KEY("room_id","receipt_type","user_id","thread_id")
);
--> statement-breakpoint
CREATE INDEX "presence_stream_idx" ON "presence" USING btree ("stream_id");--> statement-breakpoint
CREATE INDEX "receipts_room_stream_idx" ON "receipts" USING btree ("room_id","stream_id");--> statement-breakpoint
-- Account data now takes its positions from stream_positions (server/sync/streams.ts): carry on from
-- the highest position the old sequence handed out.
INSERT INTO "stream_positions" ("stream", "position") SELECT 'account_data', coalesce(max("stream_id"), 0) FROM "account_data" ON CONFLICT ("stream") DO UPDATE SET "position" = greatest("stream_positions"."position", excluded."position");--> statement-breakpoint
DROP SEQUENCE "public"."account_data_stream";