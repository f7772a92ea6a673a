CREATE TABLE "media_quarantine" (
	"server_name" text NOT NULL,
	"media_id" text NOT NULL,
	"quarantined_by" text NOT NULL,
	"ts" bigint NOT NULL,
	CONSTRAINT "media_quarantine_server_name_media_id_pk" PRIMARY KEY("server_name","media_id")
);
