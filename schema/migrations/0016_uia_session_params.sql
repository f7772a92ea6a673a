ALTER TABLE "uia_sessions" ADD COLUMN "params" jsonb;--> statement-breakpoint
ALTER TABLE "uia_sessions" ADD COLUMN "result" text;