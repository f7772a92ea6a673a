CREATE TABLE "blocked_rooms" (
	"room_id" text PRIMARY KEY NOT NULL,
	"user_id" text NOT NULL,
	"blocked_ts" bigint NOT NULL
);
--> statement-breakpoint
CREATE TABLE "event_reports" (
	"id" bigserial PRIMARY KEY NOT NULL,
	"received_ts" bigint NOT NULL,
	"room_id" text NOT NULL,
	"event_id" text NOT NULL,
	"user_id" text NOT NULL,
	"reason" text,
	"score" integer
);
--> statement-breakpoint
CREATE INDEX "event_reports_room_idx" ON "event_reports" USING btree ("room_id");--> statement-breakpoint
CREATE INDEX "event_reports_user_idx" ON "event_reports" USING btree ("user_id");