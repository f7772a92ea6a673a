// Requests made by application services: their `as_token` as the access token, acting as their
// bot or, with `?user_id=`, as a user of their namespaces ("identity assertion"), on a device of
// that user with `?device_id=` (MSC3202, spec v1.17).
// https://spec.matrix.org/latest/application-service-api/#identity-assertion
import type { Logger } from "pino";
import type { Accounts } from "../accounts/accounts.ts";
import { parseUserId } from "../accounts/user-id.ts";
import { MatrixError, forbidden } from "../http/errors.ts";
import type { Requester } from "../http/route.ts";
import { type AppService, type AppServiceRegistry, isInterestedInAlias, isInterestedInUser } from "./registration.ts";

/** The query parameters of identity assertion, as given. */
export interface AssertedIdentity {
  user_id?: string;
  device_id?: string;
  "org.matrix.msc3202.device_id"?: string;
}

/**
 * The requester an application service's request acts as. The user must be its bot or a user of
 * its user namespaces (exclusive or not) who is registered here and not deactivated (403 M_FORBIDDEN
 * otherwise, as Synapse answers for a ghost not yet registered); a device must be one of that
 * user's (400 M_UNKNOWN_DEVICE). Without a device the request has none (`deviceId` ""): endpoints
 * that need one (keys upload) act on no device of the user.
 */
export async function appServiceRequester(service: AppService, asserted: AssertedIdentity, accounts: Accounts): Promise<Requester> {
  const userId = asserted.user_id ?? service.senderUserId;
  if (userId !== service.senderUserId) {
    const local = parseUserId(userId)?.serverName === accounts.serverName;
    if (!local || !isInterestedInUser(service, userId)) throw forbidden("Application service cannot masquerade as this user");
    const user = await accounts.getUser(userId);
    if (!user || user.deactivatedTs !== null) throw forbidden("Application service cannot masquerade as this user (not registered)");
  }
  const deviceId = asserted.device_id ?? asserted["org.matrix.msc3202.device_id"];
  if (deviceId !== undefined) {
    const exists = await accounts.getDevice(userId, deviceId).then(
      () => true,
      () => false,
    );
    if (!exists) throw new MatrixError(400, "M_UNKNOWN_DEVICE", "No such device for this user");
  }
  return {
    userId,
    deviceId: deviceId ?? "",
    isGuest: false,
    sessionId: `appservice:${service.id}`,
    appServiceId: service.id,
  };
}

/**
 * Whether a requester's requests count against the per-user rate limits: an application service's
 * bot never does, the users it acts as unless its registration says `rate_limited: false`.
 */
export function isRateLimited(requester: Requester, registry: AppServiceRegistry): boolean {
  if (requester.appServiceId === undefined) return true;
  const service = registry.byId(requester.appServiceId);
  if (!service) return true;
  return service.rateLimited && requester.userId !== service.senderUserId;
}

/** The service a request's access token is the `as_token` of (Authorization header or legacy query parameter). */
export function appServiceOfToken(token: string | undefined, registry: AppServiceRegistry): AppService | undefined {
  return token === undefined ? undefined : registry.byAsToken(token);
}

/**
 * Creates each service's bot user when it does not exist yet (as Synapse does at start), so it can
 * join rooms and send as itself from the first request.
 */
export async function ensureAppServiceBots(registry: AppServiceRegistry, accounts: Accounts, logger: Logger): Promise<void> {
  for (const service of registry.services) {
    if (await accounts.getUser(service.senderUserId)) continue;
    try {
      await accounts.createUser({ localpart: service.senderLocalpart }, "cli");
      logger.info({ appservice: service.id, userId: service.senderUserId }, "created the application service's bot user");
    } catch (err) {
      // Another process sharing the database created it first.
      if (!(err instanceof MatrixError && err.errcode === "M_USER_IN_USE")) throw err;
    }
  }
}

// ---- Exclusive namespaces -----------------------------------------------------------------------------
// https://spec.matrix.org/latest/application-service-api/#server-admin-style-permissions

/**
 * Whether `requester` may register, log in as or otherwise claim the user ID: a service must stay
 * inside its own user namespaces, anyone else outside every service's exclusive ones
 * (400 M_EXCLUSIVE).
 */
export function checkUserNamespace(registry: AppServiceRegistry, userId: string, service: AppService | undefined): void {
  if (service) {
    if (!isInterestedInUser(service, userId)) throw exclusive("This user ID is not in the application service's namespace");
    const owner = registry.exclusiveOwnerOfUser(userId);
    if (owner && owner !== service) throw exclusive("This user ID is reserved by another application service");
    return;
  }
  if (registry.exclusiveOwnerOfUser(userId)) throw exclusive("This user ID is reserved by an application service");
}

/** The same for room aliases (creating and deleting them). */
export function checkAliasNamespace(registry: AppServiceRegistry, alias: string, service: AppService | undefined): void {
  if (service) {
    if (!isInterestedInAlias(service, alias)) throw exclusive("This alias is not in the application service's namespace");
    const owner = registry.exclusiveOwnerOfAlias(alias);
    if (owner && owner !== service) throw exclusive("This alias is reserved by another application service");
    return;
  }
  if (registry.exclusiveOwnerOfAlias(alias)) throw exclusive("This alias is reserved by an application service");
}

const exclusive = (message: string) => new MatrixError(400, "M_EXCLUSIVE", message);
