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

export const relationsRoutes = [
  relationsRoute("/_matrix/client/v1/rooms/:roomId/relations/:eventId"),
  relationsRoute("/_matrix/client/v1/rooms/:roomId/relations/:eventId/:relType"),
  relationsRoute("/_matrix/client/v1/rooms/:roomId/relations/:eventId/:relType/:eventType"),
];
