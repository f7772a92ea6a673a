// https://spec.matrix.org/latest/server-server-api/#get_matrixfederationv1openiduserinfo
// Not X-Matrix signed: the caller is any service the user gave the token to.
import { z } from "zod";
import { MatrixError } from "../../http/errors.ts";
import { route } from "../../http/route.ts";

export const openIdUserInfo = route({
  method: "GET",
  path: "/_matrix/federation/v1/openid/userinfo",
  auth: "none",
  // A missing token is an unknown one (401), as Synapse answers.
  query: z.object({ access_token: z.string().max(1000).optional() }),
  async handler({ query }, services) {
    const userId = query.access_token === undefined ? undefined : await services.openId.userOf(query.access_token);
    if (!userId) throw new MatrixError(401, "M_UNKNOWN_TOKEN", "Access token unknown or expired");
    return { sub: userId };
  },
});
