// https://spec.matrix.org/latest/client-server-api/#post_matrixclientv3useruseridopenidrequest_token
import { z } from "zod";
import { route } from "../../http/route.ts";
import { requireOwnUser } from "./ownership.ts";

export const requestOpenIdToken = route({
  method: "POST",
  path: "/_matrix/client/v3/user/:userId/openid/request_token",
  auth: "user",
  // "An empty object. Reserved for future expansion."
  body: z.looseObject({}),
  async handler({ params, requester }, services) {
    requireOwnUser(requester, params.userId!, "request an OpenID token");
    const { accessToken, expiresInMs } = await services.openId.issue(requester.userId);
    return {
      access_token: accessToken,
      token_type: "Bearer",
      matrix_server_name: services.config.server_name,
      expires_in: Math.floor(expiresInMs / 1000),
    };
  },
});

export const openIdRoutes = [requestOpenIdToken];
