// https://spec.matrix.org/latest/client-server-api/#login
// https://spec.matrix.org/latest/client-server-api/#refreshing-access-tokens
// https://spec.matrix.org/latest/client-server-api/#post_matrixclientv3logout
// https://spec.matrix.org/latest/client-server-api/#get_matrixclientv3accountwhoami
import { z } from "zod";
import { MatrixError } from "../../http/errors.ts";
import { type RequestInfo, route } from "../../http/route.ts";
import type { Services } from "../../services.ts";
import { passwordUser } from "../../accounts/uia.ts";
import { accessToken } from "../../http/app.ts";
import { appServiceOfToken, checkUserNamespace } from "../../appservices/auth.ts";

export const loginFlows = route({
  method: "GET",
  path: "/_matrix/client/v3/login",
  auth: "none",
  handler: () => ({ flows: [{ type: "m.login.password" }, { type: "m.login.application_service" }] }),
});

const loginBody = z.object({
  type: z.string(),
  identifier: z.record(z.string(), z.unknown()).optional(),
  /** Deprecated, but matrix-js-sdk's loginWithPassword() sends it. */
  user: z.string().optional(),
  password: z.string().optional(),
  device_id: z.string().optional(),
  initial_device_display_name: z.string().optional(),
  refresh_token: z.boolean().optional(),
});

export const login = route({
  method: "POST",
  path: "/_matrix/client/v3/login",
  auth: "none",
  rateLimit: "login",
  body: loginBody,
  async handler({ body, request, c }, services) {
    const { accounts, config } = services;
    if (body.type === "m.login.application_service") return appServiceLogin(services, body, accessToken(c), request);
    if (body.type !== "m.login.password") {
      throw new MatrixError(400, "M_UNKNOWN", `Unsupported login type ${body.type}`);
    }
    if (body.identifier !== undefined && body.identifier.type !== "m.id.user") {
      throw new MatrixError(400, "M_UNKNOWN", "Only m.id.user identifiers are supported");
    }
    const named = passwordUser(body);
    if (named === undefined) throw new MatrixError(400, "M_MISSING_PARAM", "No user given");
    if (body.password === undefined) throw new MatrixError(400, "M_MISSING_PARAM", "No password given");
    const userId = accounts.loginUserId(named);
    // Per account too: many addresses guessing one account's password are limited together.
    services.rateLimiter.take("login", userId ?? named.toLowerCase());
    const checked = await accounts.checkLogin(userId, body.password, request);
    const result = await accounts.login(
      checked,
      { deviceId: body.device_id, displayName: body.initial_device_display_name, refresh: body.refresh_token },
      request,
    );
    return {
      user_id: result.userId,
      access_token: result.accessToken,
      device_id: result.deviceId,
      home_server: config.server_name,
      well_known: { "m.homeserver": { base_url: config.public_baseurl.replace(/\/+$/, "") } },
      ...(result.refreshToken ? { refresh_token: result.refreshToken, expires_in_ms: result.expiresInMs } : {}),
    };
  },
});

/**
 * An application service logging in as a user of its namespace with its `as_token`, no password
 * (https://spec.matrix.org/latest/application-service-api/#server-admin-style-permissions): a user
 * outside it 400 M_EXCLUSIVE, a user not registered 403 M_FORBIDDEN, no or another token 401.
 */
async function appServiceLogin(services: Services, body: z.infer<typeof loginBody>, token: string | undefined, request: RequestInfo) {
  const { accounts, config } = services;
  if (token === undefined) throw new MatrixError(401, "M_MISSING_TOKEN", "Logging in with m.login.application_service needs the application service's as_token");
  const service = appServiceOfToken(token, services.appServices);
  if (!service) throw new MatrixError(401, "M_UNKNOWN_TOKEN", "Unknown application service token");
  if (body.identifier !== undefined && body.identifier.type !== "m.id.user") {
    throw new MatrixError(400, "M_UNKNOWN", "Only m.id.user identifiers are supported");
  }
  const named = passwordUser(body);
  if (named === undefined) throw new MatrixError(400, "M_MISSING_PARAM", "No user given");
  const userId = accounts.loginUserId(named);
  if (userId === undefined) throw new MatrixError(400, "M_EXCLUSIVE", "This user is not in the application service's namespace");
  checkUserNamespace(services.appServices, userId, service);
  const user = await accounts.getUser(userId);
  if (!user) throw new MatrixError(403, "M_FORBIDDEN", "No such user");
  if (user.deactivatedTs !== null) throw new MatrixError(403, "M_USER_DEACTIVATED", "This account has been deactivated");
  const result = await accounts.login(
    userId,
    { deviceId: body.device_id, displayName: body.initial_device_display_name, refresh: body.refresh_token },
    request,
  );
  return {
    user_id: result.userId,
    access_token: result.accessToken,
    device_id: result.deviceId,
    home_server: config.server_name,
    well_known: { "m.homeserver": { base_url: config.public_baseurl.replace(/\/+$/, "") } },
    ...(result.refreshToken ? { refresh_token: result.refreshToken, expires_in_ms: result.expiresInMs } : {}),
  };
}

export const refresh = route({
  method: "POST",
  path: "/_matrix/client/v3/refresh",
  auth: "none",
  rateLimit: "login",
  body: z.object({ refresh_token: z.string() }),
  async handler({ body }, services) {
    const issued = await services.sessions.refresh(body.refresh_token);
    return { access_token: issued.accessToken, refresh_token: issued.refreshToken, expires_in_ms: issued.expiresInMs };
  },
});

/** Logging out deletes the device (and so its tokens, keys and to-device messages), as the spec says. */
export const logout = route({
  method: "POST",
  path: "/_matrix/client/v3/logout",
  auth: "user",
  allowGuests: true,
  async handler({ requester, request }, services) {
    await services.accounts.deleteDevices(requester.userId, [requester.deviceId], request, "logout");
    return {};
  },
});

export const logoutAll = route({
  method: "POST",
  path: "/_matrix/client/v3/logout/all",
  auth: "user",
  allowGuests: true,
  async handler({ requester, request }, services) {
    const devices = await services.accounts.listDevices(requester.userId);
    await services.accounts.deleteDevices(
      requester.userId,
      devices.map((d) => d.device_id),
      request,
      "logout",
    );
    return {};
  },
});

export const whoami = route({
  method: "GET",
  path: "/_matrix/client/v3/account/whoami",
  auth: "user",
  allowGuests: true,
  handler: ({ requester }) => ({
    user_id: requester.userId,
    // An application service acting without `device_id` has none.
    ...(requester.deviceId === "" ? {} : { device_id: requester.deviceId }),
    is_guest: requester.isGuest,
  }),
});

export const loginRoutes = [loginFlows, login, refresh, logout, logoutAll, whoami];
