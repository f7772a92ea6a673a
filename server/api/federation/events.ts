// What other servers read of our rooms: single events, the state at an event, auth chains,
// history (backfill, missing events) and the event nearest a time. The rules of who may read what
// are in server/rooms/server-reads.ts.
// https://spec.matrix.org/latest/server-server-api/#retrieving-events
// https://spec.matrix.org/latest/server-server-api/#backfilling-and-retrieving-missing-events
import { z } from "zod";
import { invalidParam } from "../../http/errors.ts";
import { route } from "../../http/route.ts";
import type { Services } from "../../services.ts";
import type { AskingServer } from "../../rooms/server-reads.ts";

const intParam = z.string().regex(/^-?\d{1,16}$/, "must be an integer").transform(Number);
const eventIds = z.array(z.string().max(255)).max(1000);
/** More `v` events than this in one backfill request is 400 (Synapse sends a handful). */
const MAX_BACKFILL_FROM = 1000;

/** The requesting server, with the room's server ACL to pass. */
const asking = (origin: string, services: Services): AskingServer => ({
  origin,
  checkAcl: (roomId) => services.federation.acl.assertServerAllowed(roomId, origin),
});

// https://spec.matrix.org/latest/server-server-api/#get_matrixfederationv1eventeventid
export const getEvent = route({
  method: "GET",
  path: "/_matrix/federation/v1/event/:eventId",
  auth: "server",
  handler({ origin, params }, services) {
    return services.serverReads.event(asking(origin, services), params.eventId!);
  },
});

// https://spec.matrix.org/latest/server-server-api/#get_matrixfederationv1stateroomid
export const getState = route({
  method: "GET",
  path: "/_matrix/federation/v1/state/:roomId",
  auth: "server",
  query: z.looseObject({ event_id: z.string() }),
  handler({ origin, params, query }, services) {
    return services.serverReads.state(asking(origin, services), params.roomId!, query.event_id);
  },
});

// https://spec.matrix.org/latest/server-server-api/#get_matrixfederationv1state_idsroomid
export const getStateIds = route({
  method: "GET",
  path: "/_matrix/federation/v1/state_ids/:roomId",
  auth: "server",
  query: z.looseObject({ event_id: z.string() }),
  handler({ origin, params, query }, services) {
    return services.serverReads.stateIds(asking(origin, services), params.roomId!, query.event_id);
  },
});

// https://spec.matrix.org/latest/server-server-api/#get_matrixfederationv1event_authroomideventid
export const getEventAuth = route({
  method: "GET",
  path: "/_matrix/federation/v1/event_auth/:roomId/:eventId",
  auth: "server",
  handler({ origin, params }, services) {
    return services.serverReads.eventAuth(asking(origin, services), params.roomId!, params.eventId!);
  },
});

// https://spec.matrix.org/latest/server-server-api/#get_matrixfederationv1backfillroomid
export const backfill = route({
  method: "GET",
  path: "/_matrix/federation/v1/backfill/:roomId",
  auth: "server",
  query: z.looseObject({ v: z.string(), limit: intParam }),
  handler({ origin, params, query, c }, services) {
    // `v` repeats: one value per event to backfill from.
    const from = c.req.queries("v") ?? [query.v];
    if (from.length > MAX_BACKFILL_FROM) throw invalidParam(`At most ${MAX_BACKFILL_FROM} v parameters`);
    return services.serverReads.backfill(asking(origin, services), params.roomId!, from, query.limit);
  },
});

// https://spec.matrix.org/latest/server-server-api/#post_matrixfederationv1get_missing_eventsroomid
export const getMissingEvents = route({
  method: "POST",
  path: "/_matrix/federation/v1/get_missing_events/:roomId",
  auth: "server",
  body: z.looseObject({
    // Required by the spec; Synapse 1.67 reads a missing one as empty, and so do we (an ACL-banned
    // server then hears 403, not a complaint about its body).
    earliest_events: eventIds.default([]),
    latest_events: eventIds.default([]),
    limit: z.number().int().optional(),
    min_depth: z.number().int().optional(),
  }),
  handler({ origin, params, body }, services) {
    return services.serverReads.missingEvents(asking(origin, services), params.roomId!, {
      earliestEvents: body.earliest_events,
      latestEvents: body.latest_events,
      ...(body.limit === undefined ? {} : { limit: body.limit }),
      ...(body.min_depth === undefined ? {} : { minDepth: body.min_depth }),
    });
  },
});

// https://spec.matrix.org/latest/server-server-api/#get_matrixfederationv1timestamp_to_eventroomid
export const timestampToEvent = route({
  method: "GET",
  path: "/_matrix/federation/v1/timestamp_to_event/:roomId",
  auth: "server",
  query: z.looseObject({ ts: intParam, dir: z.enum(["f", "b"]) }),
  handler({ origin, params, query }, services) {
    return services.serverReads.timestampToEvent(asking(origin, services), params.roomId!, query.ts, query.dir);
  },
});

export const federationEventRoutes = [getEvent, getState, getStateIds, getEventAuth, backfill, getMissingEvents, timestampToEvent];
