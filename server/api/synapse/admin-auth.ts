// The guard of Synapse's admin API (/_synapse/admin/…): the requester must be a server admin, and
// every action an admin takes is written to the security audit log, so an admin's use of these
// powers (logging in as someone, deactivating, resetting a password) can always be traced.
// https://element-hq.github.io/synapse/latest/usage/administration/admin_api/index.html
// "An access token is required … the requester must be a server admin"; Synapse answers everyone
// else 403 M_FORBIDDEN "You are not a server admin".
import { forbidden } from "../../http/errors.ts";
import type { RequestInfo, Requester } from "../../http/route.ts";
import type { Services } from "../../services.ts";

/** Throws 403 M_FORBIDDEN unless the requester is a (current, not deactivated) server admin. */
export async function requireAdmin(requester: Requester, services: Services): Promise<void> {
  // An application service's token acts as its users, none of which is an admin through it.
  if (requester.appServiceId !== undefined) throw forbidden("You are not a server admin");
  // Read from the database on every request (not from the token cache): a demotion takes effect on
  // the admin's next request.
  const user = await services.accounts.getUser(requester.userId);
  if (!user?.isAdmin || user.deactivatedTs !== null) throw forbidden("You are not a server admin");
}

/**
 * Records an admin action in the audit log as `admin_action`, under the admin's user ID, with what
 * was done (`action`) and to whom or what (`target`). Never pass a password or a token in `detail`.
 */
export async function auditAdminAction(
  services: Services,
  requester: Requester,
  request: RequestInfo,
  action: string,
  detail: Record<string, unknown> = {},
): Promise<void> {
  await services.audit.record("admin_action", requester.userId, request, { action, ...detail });
}
