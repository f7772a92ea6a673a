CREATE TABLE "appservice_room_lists" (
	"appservice_id" text NOT NULL,
	"network_id" text NOT NULL,
	"room_id" text NOT NULL,
	CONSTRAINT "appservice_room_lists_appservice_id_network_id_room_id_pk" PRIMARY KEY("appservice_id","network_id","room_id")
);
--> statement-breakpoint
CREATE INDEX "appservice_room_lists_room_idx" ON "appservice_room_lists" USING btree ("room_id");