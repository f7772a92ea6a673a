-- The federation transport: remote server keys, our retired keys, the outbound queue, inbound transaction IDs, remote device lists.
CREATE TABLE "federation_destinations" (
	"destination" text PRIMARY KEY NOT NULL,
	"failures" integer DEFAULT 0 NOT NULL,
	"retry_at_ts" bigint,
	"last_success_ts" bigint,
	"last_attempt_ts" bigint,
	"last_error" text
);
--> statement-breakpoint
CREATE TABLE "federation_inbound_txns" (
	"origin" text NOT NULL,
	"txn_id" text NOT NULL,
	"response_json" text NOT NULL,
	"received_ts" bigint NOT NULL,
	CONSTRAINT "federation_inbound_txns_origin_txn_id_pk" PRIMARY KEY("origin","txn_id")
);
--> statement-breakpoint
CREATE TABLE "federation_outbox" (
	"id" bigserial PRIMARY KEY NOT NULL,
	"destination" text NOT NULL,
	"kind" text NOT NULL,
	"payload" text NOT NULL,
	"created_ts" bigint NOT NULL,
	"txn_id" text
);
--> statement-breakpoint
CREATE TABLE "own_old_verify_keys" (
	"key_id" text PRIMARY KEY NOT NULL,
	"verify_key" text NOT NULL,
	"expired_ts" bigint NOT NULL
);
--> statement-breakpoint
CREATE TABLE "remote_cross_signing_keys" (
	"user_id" text NOT NULL,
	"usage" text NOT NULL,
	"key_json" text NOT NULL,
	CONSTRAINT "remote_cross_signing_keys_user_id_usage_pk" PRIMARY KEY("user_id","usage")
);
--> statement-breakpoint
CREATE TABLE "remote_device_list_heads" (
	"user_id" text PRIMARY KEY NOT NULL,
	"stream_id" bigint NOT NULL,
	"stale" boolean DEFAULT false NOT NULL,
	"updated_ts" bigint NOT NULL
);
--> statement-breakpoint
CREATE TABLE "remote_devices" (
	"user_id" text NOT NULL,
	"device_id" text NOT NULL,
	"display_name" text,
	"keys_json" text,
	CONSTRAINT "remote_devices_user_id_device_id_pk" PRIMARY KEY("user_id","device_id")
);
--> statement-breakpoint
CREATE TABLE "remote_server_keys" (
	"server_name" text NOT NULL,
	"key_id" text NOT NULL,
	"verify_key" text NOT NULL,
	"valid_until_ts" bigint NOT NULL,
	"expired_ts" bigint,
	"fetched_ts" bigint NOT NULL,
	"response_json" text NOT NULL,
	CONSTRAINT "remote_server_keys_server_name_key_id_pk" PRIMARY KEY("server_name","key_id")
);
--> statement-breakpoint
CREATE INDEX "federation_inbound_txns_ts_idx" ON "federation_inbound_txns" USING btree ("received_ts");--> statement-breakpoint
CREATE INDEX "federation_outbox_destination_idx" ON "federation_outbox" USING btree ("destination","id");