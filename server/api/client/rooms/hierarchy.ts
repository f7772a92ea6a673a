// https://spec.matrix.org/latest/client-server-api/#get_matrixclientv1roomsroomidhierarchy (space_hierarchy.yaml)
// The walk, who sees which room, and the pagination tokens: server/rooms/space-hierarchy.ts.
import { z } from "zod";
import { route } from "../../../http/route.ts";

export const spaceHierarchy = route({
  method: "GET",
  path: "/_matrix/client/v1/rooms/:roomId/hierarchy",
  auth: "user",
  allowGuests: true,
  query: z.looseObject({
    suggested_only: z.enum(["true", "false"]).transform((v) => v === "true").optional(),
    // "Must be an integer greater than zero."
    limit: z.string().regex(/^0*[1-9]\d{0,8}$/, "limit must be an integer greater than zero").transform(Number).optional(),
    // "Must be a non-negative integer."
    max_depth: z.string().regex(/^\d{1,9}$/, "max_depth must be a non-negative integer").transform(Number).optional(),
    from: z.string().max(200).optional(),
  }),
  handler({ requester, params, query }, services) {
    return services.spaceHierarchy.clientHierarchy(requester, params.roomId!, {
      suggestedOnly: query.suggested_only ?? false,
      maxDepth: query.max_depth,
      limit: query.limit,
      from: query.from,
    });
  },
});

export const hierarchyRoutes = [spaceHierarchy];
