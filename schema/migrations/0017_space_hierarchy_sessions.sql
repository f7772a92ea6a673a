CREATE TABLE "space_hierarchy_sessions" (
	"token" text PRIMARY KEY NOT NULL,
	"user_id" text NOT NULL,
	"room_id" text NOT NULL,
	"suggested_only" boolean NOT NULL,
	"max_depth" integer,
	"queue" jsonb NOT NULL,
	"processed" jsonb NOT NULL,
	"expires_ts" bigint NOT NULL
);
--> statement-breakpoint
CREATE INDEX "space_hierarchy_sessions_expires_idx" ON "space_hierarchy_sessions" USING btree ("expires_ts");