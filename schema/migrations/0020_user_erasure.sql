ALTER TABLE "users" ADD COLUMN "erased_ts" bigint;--> statement-breakpoint
CREATE INDEX "users_erased_idx" ON "users" USING btree ("user_id") WHERE erased_ts is not null;