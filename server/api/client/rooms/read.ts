// https://spec.matrix.org/latest/client-server-api/#getting-events-for-a-room
// message_pagination.yaml, event_context.yaml, rooms.yaml (event, state, members, joined_members)
import { z } from "zod";
import { route } from "../../../http/route.ts";
import { parseRoomEventFilter } from "../../../rooms/event-filter.ts";

const intParam = z.string().regex(/^-?\d{1,9}$/, "must be an integer").transform(Number);

export const messages = route({
  method: "GET",
  path: "/_matrix/client/v3/rooms/:roomId/messages",
  auth: "user",
  allowGuests: true,
  query: z.looseObject({
    dir: z.enum(["b", "f"]),
    from: z.string().optional(),
    to: z.string().optional(),
    limit: intParam.optional(),
    filter: z.string().optional(),
  }),
  handler({ requester, params, query }, services) {
    return services.timeline.messages(requester, params.roomId!, {
      dir: query.dir,
      from: query.from,
      to: query.to,
      limit: query.limit,
      filter: parseRoomEventFilter(query.filter),
    });
  },
});

export const context = route({
  method: "GET",
  path: "/_matrix/client/v3/rooms/:roomId/context/:eventId",
  auth: "user",
  allowGuests: true,
  query: z.looseObject({ limit: intParam.optional(), filter: z.string().optional() }),
  handler({ requester, params, query }, services) {
    return services.timeline.context(requester, params.roomId!, params.eventId!, query.limit, parseRoomEventFilter(query.filter));
  },
});

export const roomEvent = route({
  method: "GET",
  path: "/_matrix/client/v3/rooms/:roomId/event/:eventId",
  auth: "user",
  allowGuests: true,
  handler({ requester, params }, services) {
    return services.timeline.event(requester, params.roomId!, params.eventId!);
  },
});

export const roomState = route({
  method: "GET",
  path: "/_matrix/client/v3/rooms/:roomId/state",
  auth: "user",
  allowGuests: true,
  handler({ requester, params }, services) {
    return services.timeline.state(requester, params.roomId!);
  },
});

function stateEventRoute(path: string, stateKeyOf: (params: Record<string, string>) => string) {
  return route({
    method: "GET",
    path,
    auth: "user",
    allowGuests: true,
    query: z.looseObject({ format: z.enum(["content", "event"]).optional() }),
    handler({ requester, params, query }, services) {
      return services.timeline.stateEvent(requester, params.roomId!, params.eventType!, stateKeyOf(params), query.format ?? "content");
    },
  });
}

export const stateEvent = stateEventRoute("/_matrix/client/v3/rooms/:roomId/state/:eventType/:stateKey", (p) => p.stateKey!);
// The empty state key, with and without the trailing slash (matrix-js-sdk uses `/state/{type}/`).
export const stateEventEmptyKeySlash = stateEventRoute("/_matrix/client/v3/rooms/:roomId/state/:eventType/", () => "");
export const stateEventEmptyKey = stateEventRoute("/_matrix/client/v3/rooms/:roomId/state/:eventType", () => "");

export const members = route({
  method: "GET",
  path: "/_matrix/client/v3/rooms/:roomId/members",
  auth: "user",
  allowGuests: true,
  query: z.looseObject({
    at: z.string().optional(),
    membership: z.enum(["join", "invite", "knock", "leave", "ban"]).optional(),
    not_membership: z.enum(["join", "invite", "knock", "leave", "ban"]).optional(),
  }),
  async handler({ requester, params, query }, services) {
    const chunk = await services.timeline.members(requester, params.roomId!, {
      at: query.at,
      membership: query.membership,
      notMembership: query.not_membership,
    });
    return { chunk };
  },
});

export const joinedMembers = route({
  method: "GET",
  path: "/_matrix/client/v3/rooms/:roomId/joined_members",
  auth: "user",
  allowGuests: true,
  async handler({ requester, params }, services) {
    return { joined: await services.timeline.joinedMembers(requester, params.roomId!) };
  },
});

export const readRoutes = [
  messages,
  context,
  roomEvent,
  roomState,
  stateEvent,
  stateEventEmptyKeySlash,
  stateEventEmptyKey,
  members,
  joinedMembers,
];
