// https://spec.matrix.org/v1.16/client-server-api/#get_matrixclientv3events (old_sync.yaml, deprecated)
// Still served, on the r0 path too, because clients and test suites (sytest's fixtures) stream with it.
// `room_id` is not in the spec but long-standing homeservers accept it (Synapse): only that room's events.
import { z } from "zod";
import { route } from "../../http/route.ts";
import type { AnyRoute } from "../../http/route.ts";

const eventStreamQuery = z.looseObject({
  from: z.string().optional(),
  room_id: z.string().optional(),
  timeout: z.string().regex(/^\d{1,10}$/, "must be a non-negative integer").transform(Number).optional(),
});

function eventStreamRoute(path: string) {
  return route({
    method: "GET",
    path,
    auth: "user",
    allowGuests: true,
    // Without `from` the answer is immediate; with it and a timeout, the request waits like a /sync.
    longPoll: (q) => q.from !== undefined && q.from !== "" && /^\d+$/.test(q.timeout ?? "") && Number(q.timeout) > 0,
    query: eventStreamQuery,
    handler({ requester, query, c }, services) {
      return services.sync.eventStream({
        requester,
        from: query.from,
        roomId: query.room_id,
        timeoutMs: query.timeout ?? 0,
        signal: c.req.raw.signal,
      });
    },
  });
}

export const eventStream = eventStreamRoute("/_matrix/client/v3/events");
export const eventStreamR0 = eventStreamRoute("/_matrix/client/r0/events");

export const eventStreamRoutes: AnyRoute[] = [eventStream, eventStreamR0];
