// https://spec.matrix.org/latest/server-server-api/#get_matrixfederationv1hierarchyroomid (server-server/space_hierarchy.yaml)
// A space this server is in and its children, as the requesting server may see them; the rules are
// in server/rooms/space-hierarchy.ts. The room's server ACL applies as on the other room endpoints.
import { z } from "zod";
import { route } from "../../http/route.ts";

export const federationHierarchy = route({
  method: "GET",
  path: "/_matrix/federation/v1/hierarchy/:roomId",
  auth: "server",
  query: z.looseObject({
    suggested_only: z.enum(["true", "false"]).transform((v) => v === "true").optional(),
  }),
  handler({ origin, params, query }, services) {
    const acl = services.federation.acl;
    return services.spaceHierarchy.federationHierarchy(origin, params.roomId!, query.suggested_only ?? false, {
      serverAllowed: (roomId) => acl.isServerAllowed(roomId, origin),
      assertServerAllowed: (roomId) => acl.assertServerAllowed(roomId, origin),
    });
  },
});

export const federationHierarchyRoutes = [federationHierarchy];
