-- OpenID tokens: hashed, expiring proofs of identity exchanged through /federation/v1/openid/userinfo.
CREATE TABLE "openid_tokens" (
	"token_hash" text PRIMARY KEY NOT NULL,
	"user_id" text NOT NULL,
	"expires_ts" bigint NOT NULL
);
--> statement-breakpoint
CREATE INDEX "openid_tokens_expires_idx" ON "openid_tokens" USING btree ("expires_ts");