// Shared-secret registration, as Synapse's admin API has it, so `register_new_matrix_user` works:
// https://element-hq.github.io/synapse/latest/admin_api/register_api.html
import { z } from "zod";
import { route } from "../../http/route.ts";

export const sharedSecretNonce = route({
  method: "GET",
  path: "/_synapse/admin/v1/register",
  auth: "none",
  rateLimit: "registration",
  async handler(_, services) {
    return { nonce: await services.sharedSecret.nonce() };
  },
});

export const sharedSecretRegister = route({
  method: "POST",
  path: "/_synapse/admin/v1/register",
  auth: "none",
  rateLimit: "registration",
  body: z.object({
    nonce: z.string(),
    username: z.string().min(1).max(512),
    password: z.string(),
    admin: z.boolean().optional(),
    displayname: z.string().optional(),
    user_type: z.string().nullable().optional(),
    mac: z.string(),
  }),
  async handler({ body, request }, services) {
    await services.sharedSecret.verify(body);
    const localpart = body.username.toLowerCase();
    const userId = await services.accounts.createUser(
      { localpart, password: body.password, admin: body.admin ?? false, displayName: body.displayname },
      request,
    );
    const login = await services.accounts.login(userId, {}, request);
    return {
      user_id: userId,
      access_token: login.accessToken,
      device_id: login.deviceId,
      home_server: services.config.server_name,
    };
  },
});

export const synapseAdminRoutes = [sharedSecretNonce, sharedSecretRegister];
