DROP INDEX "event_search_room_stream_idx";--> statement-breakpoint
DROP INDEX "event_search_vector_idx";--> statement-breakpoint
CREATE INDEX "event_search_stream_idx" ON "event_search" USING btree ("stream_ordering");--> statement-breakpoint
CREATE INDEX "event_search_vector_idx" ON "event_search" USING gin ("vector") WITH (fastupdate=false);