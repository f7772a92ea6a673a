CREATE TABLE "current_state" (
	"room_id" text NOT NULL,
	"type" text NOT NULL,
	"state_key" text NOT NULL,
	"event_id" text NOT NULL,
	"membership" text,
	CONSTRAINT "current_state_room_id_type_state_key_pk" PRIMARY KEY("room_id","type","state_key")
);
--> statement-breakpoint
CREATE TABLE "event_auth" (
	"event_id" text NOT NULL,
	"auth_event_id" text NOT NULL,
	"room_id" text NOT NULL,
	CONSTRAINT "event_auth_event_id_auth_event_id_pk" PRIMARY KEY("event_id","auth_event_id")
);
--> statement-breakpoint
CREATE TABLE "event_edges" (
	"event_id" text NOT NULL,
	"prev_event_id" text NOT NULL,
	"room_id" text NOT NULL,
	CONSTRAINT "event_edges_event_id_prev_event_id_pk" PRIMARY KEY("event_id","prev_event_id")
);
--> statement-breakpoint
CREATE TABLE "event_relations" (
	"event_id" text NOT NULL,
	"rel_type" text NOT NULL,
	"relates_to_id" text NOT NULL,
	"room_id" text NOT NULL,
	"aggregation_key" text,
	CONSTRAINT "event_relations_event_id_rel_type_pk" PRIMARY KEY("event_id","rel_type")
);
--> statement-breakpoint
CREATE TABLE "event_transactions" (
	"user_id" text NOT NULL,
	"device_id" text NOT NULL,
	"endpoint" text NOT NULL,
	"txn_id" text NOT NULL,
	"event_id" text NOT NULL,
	"created_ts" bigint NOT NULL,
	CONSTRAINT "event_transactions_user_id_device_id_endpoint_txn_id_pk" PRIMARY KEY("user_id","device_id","endpoint","txn_id")
);
--> statement-breakpoint
CREATE TABLE "events" (
	"event_id" text PRIMARY KEY NOT NULL,
	"room_id" text NOT NULL,
	"type" text NOT NULL,
	"state_key" text,
	"sender" text NOT NULL,
	"origin_server_ts" bigint NOT NULL,
	"depth" bigint NOT NULL,
	"json" text NOT NULL,
	"stream_ordering" bigint,
	"topological_ordering" bigint NOT NULL,
	"outlier" boolean DEFAULT false NOT NULL,
	"rejected_reason" text,
	"soft_failed" boolean DEFAULT false NOT NULL,
	"redacted_by" text,
	"state_before_group" bigint,
	"state_after_group" bigint
);
--> statement-breakpoint
CREATE TABLE "room_aliases" (
	"alias" text PRIMARY KEY NOT NULL,
	"room_id" text NOT NULL,
	"creator" text NOT NULL,
	"created_ts" bigint NOT NULL
);
--> statement-breakpoint
CREATE TABLE "room_memberships" (
	"user_id" text NOT NULL,
	"room_id" text NOT NULL,
	"membership" text NOT NULL,
	"event_id" text NOT NULL,
	"stream_ordering" bigint NOT NULL,
	"forgotten" boolean DEFAULT false NOT NULL,
	CONSTRAINT "room_memberships_user_id_room_id_pk" PRIMARY KEY("user_id","room_id")
);
--> statement-breakpoint
CREATE TABLE "rooms" (
	"room_id" text PRIMARY KEY NOT NULL,
	"room_version" text NOT NULL,
	"creator" text NOT NULL,
	"is_public" boolean DEFAULT false NOT NULL,
	"created_ts" bigint NOT NULL,
	"forward_extremities" text[] DEFAULT '{}'::text[] NOT NULL,
	"max_depth" bigint DEFAULT 0 NOT NULL,
	"current_state_group" bigint
);
--> statement-breakpoint
CREATE TABLE "state_group_entries" (
	"group_id" bigint NOT NULL,
	"type" text NOT NULL,
	"state_key" text NOT NULL,
	"event_id" text,
	CONSTRAINT "state_group_entries_group_id_type_state_key_pk" PRIMARY KEY("group_id","type","state_key")
);
--> statement-breakpoint
CREATE TABLE "state_groups" (
	"id" bigserial PRIMARY KEY NOT NULL,
	"room_id" text NOT NULL,
	"prev_group" bigint,
	"chain_length" integer DEFAULT 0 NOT NULL
);
--> statement-breakpoint
CREATE TABLE "stream_positions" (
	"stream" text PRIMARY KEY NOT NULL,
	"position" bigint NOT NULL
);
--> statement-breakpoint
CREATE INDEX "event_edges_prev_idx" ON "event_edges" USING btree ("prev_event_id");--> statement-breakpoint
CREATE INDEX "event_relations_parent_idx" ON "event_relations" USING btree ("relates_to_id","rel_type");--> statement-breakpoint
CREATE INDEX "event_transactions_event_idx" ON "event_transactions" USING btree ("event_id");--> statement-breakpoint
CREATE UNIQUE INDEX "events_stream_ordering_idx" ON "events" USING btree ("stream_ordering");--> statement-breakpoint
CREATE INDEX "events_room_topological_idx" ON "events" USING btree ("room_id","topological_ordering","stream_ordering");--> statement-breakpoint
CREATE INDEX "events_room_stream_idx" ON "events" USING btree ("room_id","stream_ordering");--> statement-breakpoint
CREATE INDEX "room_aliases_room_idx" ON "room_aliases" USING btree ("room_id");--> statement-breakpoint
CREATE INDEX "room_memberships_room_idx" ON "room_memberships" USING btree ("room_id","membership");--> statement-breakpoint
CREATE INDEX "state_groups_room_idx" ON "state_groups" USING btree ("room_id");