// https://spec.matrix.org/latest/client-server-api/#room-aliases (directory.yaml)
// https://spec.matrix.org/latest/client-server-api/#published-room-directory (list_public_rooms.yaml)
// `?server=` another server's name reads that server's directory over federation.
import { z } from "zod";
import { type Requester, route } from "../../../http/route.ts";
import { checkAliasNamespace } from "../../../appservices/auth.ts";
import { isInterestedInAlias } from "../../../appservices/registration.ts";
import type { Services } from "../../../services.ts";

/**
 * Exclusive alias namespaces (https://spec.matrix.org/latest/application-service-api/#server-admin-style-permissions):
 * an application service manages aliases of its namespaces (without being in the room), no one
 * else those a service claims exclusively (400 M_EXCLUSIVE). True when the requester is a service.
 */
function checkAliasOwnership(requester: Requester, alias: string, services: Services, operation: "create" | "delete"): boolean {
  const service = requester.appServiceId === undefined ? undefined : services.appServices.byId(requester.appServiceId);
  if (operation === "delete" && service && !isInterestedInAlias(service, alias)) {
    // Outside its namespaces a service deletes as any user would (its own aliases, say), but
    // never one another service claims.
    checkAliasNamespace(services.appServices, alias, undefined);
    return false;
  }
  checkAliasNamespace(services.appServices, alias, service);
  return service !== undefined;
}

export const getAlias = route({
  method: "GET",
  path: "/_matrix/client/v3/directory/room/:roomAlias",
  auth: "none",
  handler({ params }, services) {
    return services.directory.resolveAlias(params.roomAlias!);
  },
});

export const putAlias = route({
  method: "PUT",
  path: "/_matrix/client/v3/directory/room/:roomAlias",
  auth: "user",
  body: z.looseObject({ room_id: z.string() }),
  async handler({ requester, params, body }, services) {
    const byAppService = checkAliasOwnership(requester, params.roomAlias!, services, "create");
    await services.directory.createAlias(requester, params.roomAlias!, body.room_id, { byAppService });
    return {};
  },
});

export const deleteAlias = route({
  method: "DELETE",
  path: "/_matrix/client/v3/directory/room/:roomAlias",
  auth: "user",
  async handler({ requester, params }, services) {
    const byAppService = checkAliasOwnership(requester, params.roomAlias!, services, "delete");
    await services.directory.deleteAlias(requester, params.roomAlias!, { byAppService });
    return {};
  },
});

export const roomAliases = route({
  method: "GET",
  path: "/_matrix/client/v3/rooms/:roomId/aliases",
  auth: "user",
  async handler({ requester, params }, services) {
    return { aliases: await services.directory.roomAliases(requester, params.roomId!) };
  },
});

export const getPublicRooms = route({
  method: "GET",
  path: "/_matrix/client/v3/publicRooms",
  auth: "optional",
  allowGuests: true,
  query: z.looseObject({
    limit: z.string().regex(/^\d{1,9}$/, "must be a non-negative integer").transform(Number).optional(),
    since: z.string().optional(),
    server: z.string().optional(),
    include_all_networks: z.enum(["true", "false"]).optional(),
    third_party_instance_id: z.string().optional(),
  }),
  handler({ query }, services) {
    return services.directory.publicRooms({
      limit: query.limit,
      since: query.since,
      server: query.server,
      includeAllNetworks: query.include_all_networks === "true",
      thirdPartyInstanceId: query.third_party_instance_id,
    });
  },
});

export const queryPublicRooms = route({
  method: "POST",
  path: "/_matrix/client/v3/publicRooms",
  auth: "user",
  allowGuests: true,
  query: z.looseObject({ server: z.string().optional() }),
  body: z.looseObject({
    limit: z.int().min(0).optional(),
    // Clients send `"since": null` for the first page (Synapse takes it): the same as none.
    since: z.string().nullish(),
    filter: z
      .looseObject({
        generic_search_term: z.string().optional(),
        room_types: z.array(z.string().nullable()).optional(),
      })
      .optional(),
    // Synapse also takes the strings "true" and "false" here (older clients and sytest send them).
    include_all_networks: z.union([z.boolean(), z.enum(["true", "false"]).transform((v) => v === "true")]).optional(),
    third_party_instance_id: z.string().optional(),
  }),
  handler({ query, body }, services) {
    return services.directory.publicRooms({
      limit: body.limit,
      since: body.since ?? undefined,
      server: query.server,
      searchTerm: body.filter?.generic_search_term,
      roomTypes: body.filter?.room_types,
      includeAllNetworks: body.include_all_networks,
      thirdPartyInstanceId: body.third_party_instance_id,
    });
  },
});

export const getVisibility = route({
  method: "GET",
  path: "/_matrix/client/v3/directory/list/room/:roomId",
  auth: "none",
  async handler({ params }, services) {
    return { visibility: await services.directory.getVisibility(params.roomId!) };
  },
});

export const setVisibility = route({
  method: "PUT",
  path: "/_matrix/client/v3/directory/list/room/:roomId",
  auth: "user",
  body: z.looseObject({ visibility: z.enum(["public", "private"]).optional() }),
  async handler({ requester, params, body }, services) {
    await services.directory.setVisibility(requester, params.roomId!, body.visibility ?? "public");
    return {};
  },
});

export const directoryRoutes = [getAlias, putAlias, deleteAlias, roomAliases, getPublicRooms, queryPublicRooms, getVisibility, setVisibility];
