CREATE TABLE "threepid_bindings" (
	"user_id" text NOT NULL,
	"medium" text NOT NULL,
	"address" text NOT NULL,
	"id_server" text NOT NULL,
	"bound_ts" bigint NOT NULL,
	CONSTRAINT "threepid_bindings_user_id_medium_address_id_server_pk" PRIMARY KEY("user_id","medium","address","id_server")
);
--> statement-breakpoint
CREATE INDEX "threepid_bindings_address_idx" ON "threepid_bindings" USING btree ("medium","address");