CREATE TABLE "device_lists_stream" (
	"stream_id" bigserial PRIMARY KEY NOT NULL,
	"user_id" text NOT NULL,
	"device_id" text,
	"self_only" boolean DEFAULT false NOT NULL
);
--> statement-breakpoint
CREATE TABLE "e2e_cross_signing_keys" (
	"user_id" text NOT NULL,
	"key_type" text NOT NULL,
	"public_key" text NOT NULL,
	"key_json" text NOT NULL,
	CONSTRAINT "e2e_cross_signing_keys_user_id_key_type_pk" PRIMARY KEY("user_id","key_type")
);
--> statement-breakpoint
CREATE TABLE "e2e_cross_signing_signatures" (
	"target_user_id" text NOT NULL,
	"target_key_id" text NOT NULL,
	"signer_user_id" text NOT NULL,
	"signer_key_id" text NOT NULL,
	"signature" text NOT NULL,
	CONSTRAINT "e2e_cross_signing_signatures_pk" PRIMARY KEY("target_user_id","target_key_id","signer_user_id","signer_key_id")
);
--> statement-breakpoint
CREATE TABLE "e2e_device_keys" (
	"user_id" text NOT NULL,
	"device_id" text NOT NULL,
	"key_json" text NOT NULL,
	CONSTRAINT "e2e_device_keys_user_id_device_id_pk" PRIMARY KEY("user_id","device_id")
);
--> statement-breakpoint
CREATE TABLE "e2e_fallback_keys" (
	"user_id" text NOT NULL,
	"device_id" text NOT NULL,
	"algorithm" text NOT NULL,
	"key_id" text NOT NULL,
	"key_json" text NOT NULL,
	"used" boolean DEFAULT false NOT NULL,
	CONSTRAINT "e2e_fallback_keys_user_id_device_id_algorithm_pk" PRIMARY KEY("user_id","device_id","algorithm")
);
--> statement-breakpoint
CREATE TABLE "e2e_one_time_keys" (
	"user_id" text NOT NULL,
	"device_id" text NOT NULL,
	"algorithm" text NOT NULL,
	"key_id" text NOT NULL,
	"key_json" text NOT NULL,
	CONSTRAINT "e2e_one_time_keys_user_id_device_id_algorithm_key_id_pk" PRIMARY KEY("user_id","device_id","algorithm","key_id")
);
--> statement-breakpoint
CREATE TABLE "e2e_room_keys" (
	"user_id" text NOT NULL,
	"version" integer NOT NULL,
	"room_id" text NOT NULL,
	"session_id" text NOT NULL,
	"first_message_index" bigint NOT NULL,
	"forwarded_count" bigint NOT NULL,
	"is_verified" boolean NOT NULL,
	"session_data" text NOT NULL,
	CONSTRAINT "e2e_room_keys_user_id_version_room_id_session_id_pk" PRIMARY KEY("user_id","version","room_id","session_id")
);
--> statement-breakpoint
CREATE TABLE "e2e_room_keys_versions" (
	"user_id" text NOT NULL,
	"version" integer NOT NULL,
	"algorithm" text NOT NULL,
	"auth_data" text NOT NULL,
	"etag" bigint DEFAULT 0 NOT NULL,
	"deleted" boolean DEFAULT false NOT NULL,
	CONSTRAINT "e2e_room_keys_versions_user_id_version_pk" PRIMARY KEY("user_id","version")
);
--> statement-breakpoint
CREATE TABLE "to_device_mailboxes" (
	"user_id" text NOT NULL,
	"device_id" text NOT NULL,
	"pending" integer NOT NULL,
	CONSTRAINT "to_device_mailboxes_user_id_device_id_pk" PRIMARY KEY("user_id","device_id")
);
--> statement-breakpoint
CREATE TABLE "to_device_messages" (
	"stream_id" bigserial PRIMARY KEY NOT NULL,
	"user_id" text NOT NULL,
	"device_id" text NOT NULL,
	"sender" text NOT NULL,
	"sender_device" text NOT NULL,
	"type" text NOT NULL,
	"content" text NOT NULL
);
--> statement-breakpoint
CREATE TABLE "to_device_txns" (
	"user_id" text NOT NULL,
	"device_id" text NOT NULL,
	"txn_id" text NOT NULL,
	"created_ts" bigint NOT NULL,
	CONSTRAINT "to_device_txns_user_id_device_id_txn_id_pk" PRIMARY KEY("user_id","device_id","txn_id")
);
--> statement-breakpoint
CREATE INDEX "device_lists_stream_user_idx" ON "device_lists_stream" USING btree ("user_id","stream_id");--> statement-breakpoint
CREATE INDEX "e2e_cross_signing_signatures_signer_idx" ON "e2e_cross_signing_signatures" USING btree ("signer_user_id","signer_key_id");--> statement-breakpoint
CREATE INDEX "to_device_messages_mailbox_idx" ON "to_device_messages" USING btree ("user_id","device_id","stream_id");