// The one administration endpoint of the Client-Server API: who is this user, and from where.
// "This API may be restricted to only be called by the user being looked up, or by a server admin."
// https://spec.matrix.org/latest/client-server-api/#get_matrixclientv3adminwhoisuserid
import { isLocalUser } from "../../accounts/user-id.ts";
import { forbidden, invalidParam, notFound } from "../../http/errors.ts";
import { route } from "../../http/route.ts";

export const whois = route({
  method: "GET",
  path: "/_matrix/client/v3/admin/whois/:userId",
  auth: "user",
  async handler({ params, requester }, services) {
    const userId = params.userId!;
    if (userId !== requester.userId && !(await services.accounts.getUser(requester.userId))?.isAdmin) {
      throw forbidden("Only a server admin may look up another user");
    }
    if (!isLocalUser(userId, services.config.server_name)) throw invalidParam("Only users of this server can be looked up");
    if (!(await services.accounts.getUser(userId))) throw notFound("No such user");
    return services.accounts.whois(userId);
  },
});

export const adminRoutes = [whois];
