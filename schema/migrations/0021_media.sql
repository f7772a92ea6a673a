CREATE TABLE "media" (
	"server_name" text NOT NULL,
	"media_id" text NOT NULL,
	"user_id" text,
	"content_type" text,
	"upload_name" text,
	"size" bigint,
	"sha256" text,
	"created_ts" bigint NOT NULL,
	"unused_expires_ts" bigint,
	"fetched_ts" bigint,
	"authenticated" boolean DEFAULT false NOT NULL,
	CONSTRAINT "media_server_name_media_id_pk" PRIMARY KEY("server_name","media_id")
);
--> statement-breakpoint
CREATE TABLE "media_thumbnails" (
	"server_name" text NOT NULL,
	"media_id" text NOT NULL,
	"width" integer NOT NULL,
	"height" integer NOT NULL,
	"method" text NOT NULL,
	"content_type" text NOT NULL,
	"size" bigint NOT NULL,
	"sha256" text NOT NULL,
	"created_ts" bigint NOT NULL,
	CONSTRAINT "media_thumbnails_server_name_media_id_width_height_method_pk" PRIMARY KEY("server_name","media_id","width","height","method")
);
--> statement-breakpoint
CREATE INDEX "media_user_idx" ON "media" USING btree ("user_id","created_ts");--> statement-breakpoint
CREATE INDEX "media_sha256_idx" ON "media" USING btree ("sha256");--> statement-breakpoint
CREATE INDEX "media_thumbnails_sha256_idx" ON "media_thumbnails" USING btree ("sha256");