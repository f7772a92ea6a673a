// https://spec.matrix.org/latest/client-server-api/#get_matrixclientv1roomsroomidrelationseventid (relations.yaml)
import { z } from "zod";
import { route } from "../../../http/route.ts";

const query = z.looseObject({
  from: z.string().optional(),
  to: z.string().optional(),
  limit: z.string().regex(/^\d{1,9}$/, "must be a non-negative integer").transform(Number).optional(),
  dir: z.enum(["b", "f"]).optional(),
  recurse: z.enum(["true", "false"]).transform((v) => v === "true").optional(),
});

function relationsRoute(path: string) {
  return route({
    method: "GET",
    path,
    auth: "user",
    allowGuests: true,
    query,
    handler({ requester, params, query }, services) {
      return services.relations.relations(requester, params.roomId!, params.eventId!, {
        relType: params.relType,
        eventType: params.eventType,
        from: query.from,
        to: query.to,
        limit: query.limit,
        dir: query.dir ?? "b",
        recurse: query.recurse,
      });
    },
  });
}

// https://spec.matrix.org/latest/client-server-api/#get_matrixclientv1roomsroomidthreads (threads_list.yaml)
export const threads = route({
  method: "GET",
  path: "/_matrix/client/v1/rooms/:roomId/threads",
  auth: "user",
  allowGuests: true,
  query: z.looseObject({
    include: z.enum(["all", "participated"]).optional(),
    // "Must be an integer greater than zero."
    limit: z.string().regex(/^0*[1-9]\d{0,8}$/, "must be an integer greater than zero").transform(Number).optional(),
    from: z.string().optional(),
  }),
  handler({ requester, params, query }, services) {
    return services.relations.threads(requester, params.roomId!, { include: query.include ?? "all", limit: query.limit, from: query.from });
  },
});

export const relationsRoutes = [
  threads,
  relationsRoute("/_matrix/client/v1/rooms/:roomId/relations/:eventId"),
  relationsRoute("/_matrix/client/v1/rooms/:roomId/relations/:eventId/:relType"),
  relationsRoute("/_matrix/client/v1/rooms/:roomId/relations/:eventId/:relType/:eventType"),
];
