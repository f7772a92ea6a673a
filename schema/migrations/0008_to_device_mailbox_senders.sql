-- Per-sender counts of undelivered to-device messages, for the per-sender mailbox caps (server/e2ee/to-device.ts), counted from what already waits.
CREATE TABLE "to_device_mailbox_senders" (
	"user_id" text NOT NULL,
	"device_id" text NOT NULL,
	"sender" text NOT NULL,
	"pending" integer NOT NULL,
	CONSTRAINT "to_device_mailbox_senders_user_id_device_id_sender_pk" PRIMARY KEY("user_id","device_id","sender")
);--> statement-breakpoint
INSERT INTO "to_device_mailbox_senders" ("user_id", "device_id", "sender", "pending")
	SELECT "user_id", "device_id", "sender", count(*)::integer FROM "to_device_messages" GROUP BY "user_id", "device_id", "sender";
