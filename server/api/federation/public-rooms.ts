// This server's published room directory, as other servers read it for their clients.
// https://spec.matrix.org/latest/server-server-api/#public-room-directory (server-server/public_rooms.yaml)
//
// The same rooms, chunk shape and pagination tokens as the Client-Server `/publicRooms` (one
// directory service answers both), less the rooms that do not federate.
import { z } from "zod";
import { route } from "../../http/route.ts";

const filter = z
  .looseObject({
    generic_search_term: z.string().optional(),
    room_types: z.array(z.string().nullable()).optional(),
  })
  .nullish();

// https://spec.matrix.org/latest/server-server-api/#get_matrixfederationv1publicrooms
export const federationGetPublicRooms = route({
  method: "GET",
  path: "/_matrix/federation/v1/publicRooms",
  auth: "server",
  query: z.looseObject({
    limit: z.string().regex(/^\d{1,9}$/, "must be a non-negative integer").transform(Number).optional(),
    since: z.string().optional(),
    include_all_networks: z.enum(["true", "false"]).optional(),
    third_party_instance_id: z.string().optional(),
  }),
  handler({ query }, services) {
    return services.directory.localPublicRooms(
      {
        limit: query.limit,
        since: query.since,
        includeAllNetworks: query.include_all_networks === "true",
        thirdPartyInstanceId: query.third_party_instance_id,
      },
      { forOtherServers: true },
    );
  },
});

// https://spec.matrix.org/latest/server-server-api/#post_matrixfederationv1publicrooms
export const federationQueryPublicRooms = route({
  method: "POST",
  path: "/_matrix/federation/v1/publicRooms",
  auth: "server",
  body: z.looseObject({
    limit: z.int().min(0).optional(),
    since: z.string().optional(),
    filter,
    // Synapse 1.67 sends this one as the string "true" or "false".
    include_all_networks: z.union([z.boolean(), z.enum(["true", "false"])]).optional(),
    third_party_instance_id: z.string().optional(),
  }),
  handler({ body }, services) {
    return services.directory.localPublicRooms(
      {
        limit: body.limit,
        since: body.since,
        searchTerm: body.filter?.generic_search_term,
        roomTypes: body.filter?.room_types,
        includeAllNetworks: body.include_all_networks === true || body.include_all_networks === "true",
        thirdPartyInstanceId: body.third_party_instance_id,
      },
      { forOtherServers: true },
    );
  },
});

export const federationPublicRoomsRoutes = [federationGetPublicRooms, federationQueryPublicRooms];
