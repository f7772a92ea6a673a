CREATE TABLE "push_notifications" (
	"user_id" text NOT NULL,
	"stream_ordering" bigint NOT NULL,
	"room_id" text NOT NULL,
	"event_id" text NOT NULL,
	"highlight" boolean NOT NULL,
	"actions" jsonb NOT NULL,
	"ts" bigint NOT NULL,
	CONSTRAINT "push_notifications_user_id_stream_ordering_pk" PRIMARY KEY("user_id","stream_ordering")
);
--> statement-breakpoint
CREATE TABLE "push_progress" (
	"id" integer PRIMARY KEY NOT NULL,
	"stream_ordering" bigint NOT NULL
);
--> statement-breakpoint
CREATE TABLE "push_queue" (
	"id" bigserial PRIMARY KEY NOT NULL,
	"pusher_id" bigint NOT NULL,
	"user_id" text NOT NULL,
	"room_id" text,
	"event_id" text,
	"stream_ordering" bigint,
	"actions" jsonb NOT NULL,
	"created_ts" bigint NOT NULL,
	"next_attempt_ts" bigint NOT NULL,
	"attempts" integer DEFAULT 0 NOT NULL
);
--> statement-breakpoint
CREATE TABLE "pushers" (
	"id" bigserial PRIMARY KEY NOT NULL,
	"user_id" text NOT NULL,
	"device_id" text,
	"app_id" text NOT NULL,
	"pushkey" text NOT NULL,
	"kind" text NOT NULL,
	"app_display_name" text NOT NULL,
	"device_display_name" text NOT NULL,
	"profile_tag" text,
	"lang" text NOT NULL,
	"data" jsonb NOT NULL,
	"pushkey_ts" bigint NOT NULL
);
--> statement-breakpoint
ALTER TABLE "event_push_actions" ADD COLUMN "actions" jsonb;--> statement-breakpoint
CREATE INDEX "push_queue_due_idx" ON "push_queue" USING btree ("next_attempt_ts");--> statement-breakpoint
CREATE INDEX "push_queue_pusher_idx" ON "push_queue" USING btree ("pusher_id","id");--> statement-breakpoint
CREATE UNIQUE INDEX "pushers_key_idx" ON "pushers" USING btree ("user_id","app_id","pushkey");--> statement-breakpoint
CREATE INDEX "pushers_app_pushkey_idx" ON "pushers" USING btree ("app_id","pushkey");--> statement-breakpoint
CREATE INDEX "event_push_actions_stream_idx" ON "event_push_actions" USING btree ("stream_ordering");