CREATE TABLE "appservice_delivery" (
	"as_id" text PRIMARY KEY NOT NULL,
	"delivered_position" bigint NOT NULL,
	"last_txn_id" bigint DEFAULT 0 NOT NULL,
	"pending_txn_id" bigint,
	"pending_up_to" bigint,
	"pending_json" text,
	"failures" integer DEFAULT 0 NOT NULL,
	"retry_at_ts" bigint,
	"last_attempt_ts" bigint,
	"last_success_ts" bigint,
	"last_error" text,
	"last_error_ts" bigint,
	"lease_owner" text,
	"lease_until_ts" bigint
);
