// https://spec.matrix.org/latest/client-server-api/#profiles
// Profiles of users on other servers are asked of their server (`/federation/v1/query/profile`,
// remembered briefly); its 404 is ours, and a server that cannot be reached is a 502 (as Synapse).
import { z } from "zod";
import { isValidUserId, serverNameOf } from "../../../federation/protocol/identifiers.ts";
import { notFound } from "../../http/errors.ts";
import { route } from "../../http/route.ts";
import type { Services } from "../../services.ts";
import { requireOwnUser } from "./ownership.ts";

async function profileOf(services: Services, userId: string) {
  const server = isValidUserId(userId) ? serverNameOf(userId) : undefined;
  if (server !== undefined && server !== services.config.server_name) return services.federation.queries.profile(userId);
  let profile = await services.accounts.getProfile(userId);
  // https://spec.matrix.org/latest/application-service-api/#query-user: an application service
  // may create a user of its namespace when asked about it; then it is looked up again.
  if (!profile && (await services.appServiceQueries.queryUser(userId))) profile = await services.accounts.getProfile(userId);
  if (!profile) throw notFound("No such user");
  return profile;
}

export const getProfile = route({
  method: "GET",
  path: "/_matrix/client/v3/profile/:userId",
  auth: "none",
  handler: ({ params }, services) => profileOf(services, params.userId!),
});

export const getDisplayName = route({
  method: "GET",
  path: "/_matrix/client/v3/profile/:userId/displayname",
  auth: "none",
  async handler({ params }, services) {
    const { displayname } = await profileOf(services, params.userId!);
    if (displayname === undefined) throw notFound("This user has no display name");
    return { displayname };
  },
});

export const getAvatarUrl = route({
  method: "GET",
  path: "/_matrix/client/v3/profile/:userId/avatar_url",
  auth: "none",
  async handler({ params }, services) {
    const { avatar_url } = await profileOf(services, params.userId!);
    if (avatar_url === undefined) throw notFound("This user has no avatar");
    return { avatar_url };
  },
});

export const setDisplayName = route({
  method: "PUT",
  path: "/_matrix/client/v3/profile/:userId/displayname",
  auth: "user",
  allowGuests: true,
  // An absent or null displayname clears it, as Synapse allows.
  body: z.object({ displayname: z.string().nullable().optional() }),
  async handler({ params, body, requester }, services) {
    requireOwnUser(requester, params.userId!, "set the display name");
    await services.accounts.setDisplayName(requester.userId, body.displayname ?? null);
    return {};
  },
});

export const setAvatarUrl = route({
  method: "PUT",
  path: "/_matrix/client/v3/profile/:userId/avatar_url",
  auth: "user",
  body: z.object({ avatar_url: z.string().nullable().optional() }),
  async handler({ params, body, requester }, services) {
    requireOwnUser(requester, params.userId!, "set the avatar");
    await services.accounts.setAvatarUrl(requester.userId, body.avatar_url ?? null);
    return {};
  },
});

export const profileRoutes = [getProfile, getDisplayName, getAvatarUrl, setDisplayName, setAvatarUrl];
