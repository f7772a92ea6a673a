CREATE TABLE "user_directory" (
	"user_id" text PRIMARY KEY NOT NULL,
	"is_local" boolean NOT NULL,
	"listed" boolean NOT NULL,
	"display_name" text,
	"avatar_url" text,
	"name_key" text,
	"id_key" text NOT NULL
);
--> statement-breakpoint
CREATE TABLE "user_directory_public_rooms" (
	"room_id" text PRIMARY KEY NOT NULL
);
--> statement-breakpoint
CREATE TABLE "user_directory_search" (
	"user_id" text NOT NULL,
	"token" text NOT NULL,
	CONSTRAINT "user_directory_search_user_id_token_pk" PRIMARY KEY("user_id","token")
);
--> statement-breakpoint
CREATE INDEX "user_directory_search_token_idx" ON "user_directory_search" USING btree ("token" text_pattern_ops,"user_id");