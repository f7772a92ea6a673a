// Queries other servers make of this one.
// https://spec.matrix.org/latest/server-server-api/#querying-for-information
import { z } from "zod";
import { MatrixError, notFound } from "../../http/errors.ts";
import { route } from "../../http/route.ts";

// https://spec.matrix.org/latest/server-server-api/#get_matrixfederationv1queryprofile
export const queryProfile = route({
  method: "GET",
  path: "/_matrix/federation/v1/query/profile",
  auth: "server",
  query: z.object({ user_id: z.string(), field: z.enum(["displayname", "avatar_url"]).optional() }),
  async handler({ query }, services) {
    if (!query.user_id.endsWith(`:${services.config.server_name}`)) {
      throw new MatrixError(400, "M_INVALID_PARAM", "That user does not belong to this server");
    }
    const profile = await services.accounts.getProfile(query.user_id);
    if (!profile) throw notFound("No such user");
    if (query.field === undefined) return profile;
    // An unset field is an empty answer, not a 404: 404 says the user does not exist. Synapse 1.67
    // asks for each field alone when its clients read a remote profile, and fails on a 404.
    const value = profile[query.field];
    return value === undefined ? {} : { [query.field]: value };
  },
});

// https://spec.matrix.org/latest/server-server-api/#get_matrixfederationv1querydirectory
export const queryDirectory = route({
  method: "GET",
  path: "/_matrix/federation/v1/query/directory",
  auth: "server",
  query: z.object({ room_alias: z.string() }),
  async handler({ query }, services) {
    if (!query.room_alias.endsWith(`:${services.config.server_name}`)) {
      throw new MatrixError(400, "M_INVALID_PARAM", "That room alias does not belong to this server");
    }
    return services.directory.resolveLocalAlias(query.room_alias);
  },
});

export const federationQueryRoutes = [queryProfile, queryDirectory];
