// https://spec.matrix.org/latest/client-server-api/#post_matrixclientv3accountpassword
// https://spec.matrix.org/latest/client-server-api/#post_matrixclientv3accountdeactivate
import { z } from "zod";
import { checkPasswordStrength } from "../../accounts/passwords.ts";
import { route } from "../../http/route.ts";

const auth = z.record(z.string(), z.unknown()).optional();

export const changePassword = route({
  method: "POST",
  path: "/_matrix/client/v3/account/password",
  auth: "user",
  rateLimit: "login",
  body: z.object({ new_password: z.string(), logout_devices: z.boolean().optional(), auth }),
  async handler({ body, requester, request }, services) {
    // Before auth: the client should not ask for the old password only to be refused the new one.
    checkPasswordStrength(body.new_password, services.config.password_min_length);
    await services.uia.require(
      { operation: "change_password", userId: requester.userId, flows: [["m.login.password"]] },
      body.auth,
      request,
    );
    await services.accounts.setPassword(
      requester.userId,
      body.new_password,
      { logoutDevices: body.logout_devices ?? true, keepDeviceId: requester.deviceId },
      request,
    );
    return {};
  },
});

export const deactivate = route({
  method: "POST",
  path: "/_matrix/client/v3/account/deactivate",
  auth: "user",
  body: z.object({ auth, erase: z.boolean().optional(), id_server: z.string().optional() }),
  async handler({ body, requester, request }, services) {
    // An application service deactivates the users it acts as without UIA (they have no password;
    // Synapse does the same).
    if (requester.appServiceId === undefined) {
      await services.uia.require(
        { operation: "deactivate", userId: requester.userId, flows: [["m.login.password"]] },
        body.auth,
        request,
      );
    }
    await services.accounts.deactivate(requester.userId, request, { erase: body.erase === true });
    // The 3pids bound through us are unbound (from `id_server` if given, else where each was bound).
    return { id_server_unbind_result: await services.threepidBindings.unbindAll(requester.userId, body.id_server) };
  },
});

export const accountRoutes = [changePassword, deactivate];
