-- The device-list and to-device streams take their positions from stream_positions (server/sync/streams.ts) instead of their own sequences.
ALTER TABLE "device_lists_stream" ALTER COLUMN "stream_id" DROP DEFAULT;--> statement-breakpoint
ALTER TABLE "to_device_messages" ALTER COLUMN "stream_id" DROP DEFAULT;--> statement-breakpoint
DROP SEQUENCE IF EXISTS "device_lists_stream_stream_id_seq";--> statement-breakpoint
DROP SEQUENCE IF EXISTS "to_device_messages_stream_id_seq";
