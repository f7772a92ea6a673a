CREATE TABLE "user_directory_public_members" (
	"user_id" text NOT NULL,
	"room_id" text NOT NULL,
	CONSTRAINT "user_directory_public_members_user_id_room_id_pk" PRIMARY KEY("user_id","room_id")
);
--> statement-breakpoint
CREATE INDEX "user_directory_public_members_room_idx" ON "user_directory_public_members" USING btree ("room_id");