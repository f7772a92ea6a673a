// https://spec.matrix.org/latest/client-server-api/#account-registration-and-management
// https://spec.matrix.org/latest/client-server-api/#post_matrixclientv3register
// https://spec.matrix.org/latest/client-server-api/#token-authenticated-registration
// https://spec.matrix.org/latest/client-server-api/#guest-access
import { z } from "zod";
import { forbidden, MatrixError } from "../../http/errors.ts";
import { type RequestInfo, route } from "../../http/route.ts";
import { userIdOf } from "../../accounts/user-id.ts";
import { checkPasswordStrength } from "../../accounts/passwords.ts";
import type { Services } from "../../services.ts";
import type { UiaStage } from "../../accounts/uia.ts";
import { accessToken } from "../../http/app.ts";
import { appServiceOfToken, checkUserNamespace } from "../../appservices/auth.ts";

const APPSERVICE_LOGIN_TYPE = "m.login.application_service";

const registerBody = z.object({
  /** `m.login.application_service`: an application service registering a user of its namespace. */
  type: z.string().optional(),
  auth: z.record(z.string(), z.unknown()).optional(),
  username: z.string().optional(),
  password: z.string().optional(),
  device_id: z.string().optional(),
  initial_device_display_name: z.string().optional(),
  inhibit_login: z.boolean().optional(),
  // Accepted and not honoured here: tokens from registration never expire. matrix-js-sdk's
  // register() always sends `refresh_token: true`, also for bots that never refresh; a client that
  // wants refresh tokens gets them from /login.
  refresh_token: z.boolean().optional(),
  /** A guest upgrading their account; `username` must then be the guest's localpart. */
  guest_access_token: z.string().optional(),
});

function registrationFlows(services: Services): UiaStage[][] {
  return services.config.registration === "token" ? [["m.login.registration_token"]] : [["m.login.dummy"]];
}

function refuseWhenClosed(services: Services): void {
  if (services.config.registration === "closed") throw forbidden("Registration is disabled on this server");
}

export const register = route({
  method: "POST",
  path: "/_matrix/client/v3/register",
  auth: "none",
  rateLimit: "registration",
  body: registerBody,
  query: z.object({ kind: z.enum(["user", "guest"]).optional() }),
  async handler({ body, query, request, c }, services) {
    const { accounts, config } = services;
    if (body.type === APPSERVICE_LOGIN_TYPE || body.auth?.type === APPSERVICE_LOGIN_TYPE) {
      return registerForAppService(services, body, accessToken(c), request);
    }
    if (query.kind === "guest") {
      if (!config.allow_guest_access) {
        throw new MatrixError(403, "M_GUEST_ACCESS_FORBIDDEN", "Guest access is disabled on this server");
      }
      const localpart = await accounts.generateLocalpart();
      const userId = await accounts.createUser({ localpart, guest: true }, request);
      const login = await accounts.login(userId, { displayName: body.initial_device_display_name }, request);
      return { user_id: userId, access_token: login.accessToken, device_id: login.deviceId, home_server: config.server_name };
    }

    refuseWhenClosed(services);
    // A step's parameters are kept in the UIA session, so a later step may carry only `auth`
    // ("registration remembers parameters", as Synapse and clients expect); the password is kept
    // hashed. A step that gives parameters replaces the kept ones.
    const given = await registrationParams(services, body);
    // Synapse lowercases the requested username; login compares localparts in lower case too.
    const givenLocalpart = given?.username;
    const guest = body.guest_access_token === undefined ? undefined : await guestToUpgrade(services, body.guest_access_token, givenLocalpart, request);
    // The username is checked before any auth stage, so the client hears about a taken name first
    // (a step within a session is checked once its auth is through: the session may already have
    // registered that very name, and its retry answers with it).
    const inSession = typeof body.auth?.session === "string";
    if (givenLocalpart !== undefined && !guest && !inSession) {
      await accounts.checkUsernameAvailable(givenLocalpart);
      checkUserNamespace(services.appServices, userIdOf(givenLocalpart, config.server_name), undefined);
    }
    // After the username (a taken name is the first thing to hear), before any auth stage.
    if (body.password !== undefined) checkPasswordStrength(body.password, config.password_min_length);
    const outcome = await services.uia.require(
      { operation: "register", flows: registrationFlows(services), remember: given as Record<string, unknown> | undefined, retryable: !guest },
      body.auth,
      request,
    );
    const params = outcome.params as RememberedParams;
    const device = { deviceId: params.device_id, displayName: params.initial_device_display_name };
    if (outcome.result !== undefined) {
      // A retry of a finished registration: its result again (a new login of the same account),
      // never for a request that asks for another account or gives another password.
      if (givenLocalpart !== undefined && userIdOf(givenLocalpart, config.server_name) !== outcome.result) {
        throw new MatrixError(400, "M_UNKNOWN", "This registration session has already registered another account");
      }
      if (body.password !== undefined && !(await accounts.verifyPassword(outcome.result, body.password))) {
        throw forbidden("This registration session registered its account with another password");
      }
      if (params.inhibit_login) return { user_id: outcome.result };
      const login = await accounts.login(outcome.result, device, request);
      return { user_id: outcome.result, access_token: login.accessToken, device_id: login.deviceId, home_server: config.server_name };
    }
    if (params.password_hash === undefined) throw new MatrixError(400, "M_MISSING_PARAM", "A password is required");

    let userId: string;
    if (guest) {
      await accounts.upgradeGuest(guest.userId, params.password_hash, request);
      userId = guest.userId;
      if (outcome.registrationToken !== undefined) await services.registrationTokens.complete(outcome.registrationToken);
    } else {
      if (params.username !== undefined) {
        await accounts.checkUsernameAvailable(params.username);
        checkUserNamespace(services.appServices, userIdOf(params.username, config.server_name), undefined);
      }
      userId = await accounts.createUser(
        { localpart: params.username ?? (await accounts.generateLocalpart()), passwordHash: params.password_hash },
        request,
      );
      await services.uia.finish(outcome.sessionId, userId);
      // After `finish`, so an expiring session is never counted as both used and given back.
      if (outcome.registrationToken !== undefined) await services.registrationTokens.complete(outcome.registrationToken);
    }
    if (params.inhibit_login) return { user_id: userId };
    const login = await accounts.login(userId, device, request);
    return { user_id: userId, access_token: login.accessToken, device_id: login.deviceId, home_server: config.server_name };
  },
});

/**
 * An application service registering a user of its namespace: no UIA and no password, allowed
 * even when registration is closed; outside its namespace 400 M_EXCLUSIVE; without its `as_token`
 * 401 M_MISSING_TOKEN / M_UNKNOWN_TOKEN.
 * https://spec.matrix.org/latest/application-service-api/#server-admin-style-permissions
 */
async function registerForAppService(services: Services, body: z.infer<typeof registerBody>, token: string | undefined, request: RequestInfo) {
  const { accounts, config } = services;
  if (token === undefined) throw new MatrixError(401, "M_MISSING_TOKEN", "Registering with m.login.application_service needs the application service's as_token");
  const service = appServiceOfToken(token, services.appServices);
  if (!service) throw new MatrixError(401, "M_UNKNOWN_TOKEN", "Unknown application service token");
  if (body.username === undefined) throw new MatrixError(400, "M_MISSING_PARAM", "username is required");
  const localpart = body.username.toLowerCase();
  const userId = userIdOf(localpart, config.server_name);
  checkUserNamespace(services.appServices, userId, service);
  await accounts.checkUsernameAvailable(localpart);
  await accounts.createUser({ localpart }, request);
  if (body.inhibit_login) return { user_id: userId, home_server: config.server_name };
  const login = await accounts.login(userId, { deviceId: body.device_id, displayName: body.initial_device_display_name }, request);
  return { user_id: userId, access_token: login.accessToken, device_id: login.deviceId, home_server: config.server_name };
}

/** What a registration step gave, as kept in its UIA session. */
interface RememberedParams {
  username?: string;
  password_hash?: string;
  device_id?: string;
  initial_device_display_name?: string;
  inhibit_login?: boolean;
}

/** This step's registration parameters (undefined when it gave none but `auth`). */
async function registrationParams(services: Services, body: z.infer<typeof registerBody>): Promise<RememberedParams | undefined> {
  const { username, password, device_id, initial_device_display_name, inhibit_login } = body;
  if ([username, password, device_id, initial_device_display_name, inhibit_login].every((v) => v === undefined)) return undefined;
  const params: RememberedParams = {};
  if (username !== undefined) params.username = username.toLowerCase();
  if (password !== undefined) params.password_hash = await services.accounts.hashPassword(password);
  if (device_id !== undefined) params.device_id = device_id;
  if (initial_device_display_name !== undefined) params.initial_device_display_name = initial_device_display_name;
  if (inhibit_login !== undefined) params.inhibit_login = inhibit_login;
  return params;
}

/** The guest account a `guest_access_token` names, checked against the requested username. */
async function guestToUpgrade(services: Services, token: string, localpart: string | undefined, request: RequestInfo) {
  const requester = await services.sessions.authenticate(token, request);
  if (!requester.isGuest) throw forbidden("guest_access_token is not the token of a guest account");
  if (localpart === undefined || userIdOf(localpart, services.config.server_name) !== requester.userId) {
    throw new MatrixError(400, "M_INVALID_USERNAME", "username must be the guest account's localpart");
  }
  return requester;
}

export const registerAvailable = route({
  method: "GET",
  path: "/_matrix/client/v3/register/available",
  auth: "none",
  rateLimit: "registration",
  query: z.object({ username: z.string() }),
  async handler({ query }, services) {
    refuseWhenClosed(services);
    const localpart = query.username.toLowerCase();
    await services.accounts.checkUsernameAvailable(localpart);
    checkUserNamespace(services.appServices, userIdOf(localpart, services.config.server_name), undefined);
    return { available: true };
  },
});

// https://spec.matrix.org/latest/client-server-api/#get_matrixclientv1registermloginregistration_tokenvalidity
export const registrationTokenValidity = route({
  method: "GET",
  path: "/_matrix/client/v1/register/m.login.registration_token/validity",
  auth: "none",
  rateLimit: "registration",
  query: z.object({ token: z.string() }),
  async handler({ query }, services) {
    if (services.config.registration !== "token") throw forbidden("Registration tokens are not in use on this server");
    return { valid: await services.uia.isRegistrationToken(query.token) };
  },
});

export const registerRoutes = [register, registerAvailable, registrationTokenValidity];
