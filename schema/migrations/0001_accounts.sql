CREATE SEQUENCE "public"."account_data_stream" INCREMENT BY 1 MINVALUE 1 MAXVALUE 9223372036854775807 START WITH 1 CACHE 1;--> statement-breakpoint
CREATE TABLE "access_tokens" (
	"id" bigserial PRIMARY KEY NOT NULL,
	"token_hash" text NOT NULL,
	"refresh_token_hash" text,
	"user_id" text NOT NULL,
	"device_id" text NOT NULL,
	"created_ts" bigint NOT NULL,
	"expires_ts" bigint,
	CONSTRAINT "access_tokens_token_hash_unique" UNIQUE("token_hash"),
	CONSTRAINT "access_tokens_refresh_token_hash_unique" UNIQUE("refresh_token_hash")
);
--> statement-breakpoint
CREATE TABLE "audit_log" (
	"id" bigserial PRIMARY KEY NOT NULL,
	"ts" bigint NOT NULL,
	"event" text NOT NULL,
	"user_id" text,
	"ip" text,
	"user_agent" text,
	"detail" jsonb DEFAULT '{}'::jsonb NOT NULL
);
--> statement-breakpoint
CREATE TABLE "devices" (
	"user_id" text NOT NULL,
	"device_id" text NOT NULL,
	"display_name" text,
	"created_ts" bigint NOT NULL,
	"last_seen_ts" bigint,
	"last_seen_ip" text,
	"last_seen_user_agent" text,
	CONSTRAINT "devices_user_id_device_id_pk" PRIMARY KEY("user_id","device_id")
);
--> statement-breakpoint
CREATE TABLE "registration_nonces" (
	"nonce" text PRIMARY KEY NOT NULL,
	"created_ts" bigint NOT NULL
);
--> statement-breakpoint
CREATE TABLE "uia_sessions" (
	"session_id" text PRIMARY KEY NOT NULL,
	"operation" text NOT NULL,
	"user_id" text,
	"completed" jsonb DEFAULT '[]'::jsonb NOT NULL,
	"created_ts" bigint NOT NULL
);
--> statement-breakpoint
CREATE TABLE "users" (
	"user_id" text PRIMARY KEY NOT NULL,
	"password_hash" text,
	"is_admin" boolean DEFAULT false NOT NULL,
	"is_guest" boolean DEFAULT false NOT NULL,
	"display_name" text,
	"avatar_url" text,
	"created_ts" bigint NOT NULL,
	"deactivated_ts" bigint
);
--> statement-breakpoint
CREATE TABLE "account_data" (
	"user_id" text NOT NULL,
	"room_id" text DEFAULT '' NOT NULL,
	"type" text NOT NULL,
	"content" text NOT NULL,
	"stream_id" bigint NOT NULL,
	CONSTRAINT "account_data_user_id_room_id_type_pk" PRIMARY KEY("user_id","room_id","type")
);
--> statement-breakpoint
CREATE TABLE "filters" (
	"id" bigserial PRIMARY KEY NOT NULL,
	"user_id" text NOT NULL,
	"filter" text NOT NULL
);
--> statement-breakpoint
CREATE INDEX "access_tokens_device_idx" ON "access_tokens" USING btree ("user_id","device_id");--> statement-breakpoint
CREATE INDEX "audit_log_user_idx" ON "audit_log" USING btree ("user_id","id");--> statement-breakpoint
CREATE INDEX "account_data_stream_idx" ON "account_data" USING btree ("user_id","stream_id");--> statement-breakpoint
CREATE INDEX "filters_user_idx" ON "filters" USING btree ("user_id");