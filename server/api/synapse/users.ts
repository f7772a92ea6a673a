// The users side of Synapse's admin API, in Synapse 1.67's shapes, so synapse-admin, synadm and
// moderation bots work unchanged:
// https://element-hq.github.io/synapse/latest/admin_api/user_admin_api.html
// Every route needs a server admin's token (403 M_FORBIDDEN otherwise) and every change is written
// to the audit log as `admin_action` under the admin (admin-auth.ts).
import { z } from "zod";
import type { User } from "../../accounts/accounts.ts";
import { isLocalUser } from "../../accounts/user-id.ts";
import { invalidParam, missingParam, notFound } from "../../http/errors.ts";
import { route } from "../../http/route.ts";
import type { Services } from "../../services.ts";
import { auditAdminAction, requireAdmin } from "./admin-auth.ts";

/** Synapse's `parse_boolean`: only "true" and "false"; anything else is a 400. */
const booleanParam = z.enum(["true", "false"]).transform((v) => v === "true");
const intParam = (min: number) => z.string().regex(/^\d{1,9}$/, "must be a non-negative integer").transform(Number).pipe(z.number().int().min(min));

const ORDER_BY = ["name", "is_guest", "admin", "user_type", "deactivated", "shadow_banned", "displayname", "avatar_url", "creation_ts", "locked"] as const;

/** A local user named in the path, which must exist (404) and be of this server (400, as Synapse). */
async function localUser(services: Services, userId: string): Promise<User> {
  if (!isLocalUser(userId, services.config.server_name)) throw invalidParam("Can only look up local users");
  const user = await services.accounts.getUser(userId);
  if (!user) throw notFound("User not found");
  return user;
}

/** A user as the list shows it. Synapse's creation_ts is in seconds; its flags are 0/1 except erased and locked. */
function userSummary(user: User) {
  return {
    name: user.userId,
    is_guest: user.isGuest ? 1 : 0,
    admin: user.isAdmin ? 1 : 0,
    user_type: null,
    deactivated: user.deactivatedTs !== null ? 1 : 0,
    erased: user.erasedTs !== null,
    shadow_banned: 0,
    displayname: user.displayName,
    avatar_url: user.avatarUrl,
    creation_ts: Math.floor(user.createdTs / 1000),
    locked: user.locked,
  };
}

/** A user as `GET /v2/users/{userId}` shows it. */
function userDetails(user: User) {
  return {
    ...userSummary(user),
    threepids: [],
    external_ids: [],
    appservice_id: null,
    consent_server_notice_sent: null,
    consent_version: null,
    consent_ts: null,
  };
}

export const listUsers = route({
  method: "GET",
  path: "/_synapse/admin/v2/users",
  auth: "user",
  query: z.object({
    from: intParam(0).optional(),
    limit: intParam(0).optional(),
    guests: booleanParam.optional(),
    deactivated: booleanParam.optional(),
    name: z.string().max(1000).optional(),
    user_id: z.string().max(1000).optional(),
    order_by: z.enum(ORDER_BY).optional(),
    dir: z.enum(["f", "b"]).optional(),
  }),
  async handler({ query, requester }, services) {
    await requireAdmin(requester, services);
    const from = query.from ?? 0;
    const limit = Math.min(query.limit ?? 100, 1000);
    const orderBy = query.order_by ?? "name";
    const { users, total } = await services.accounts.listUsersPage({
      from,
      limit,
      guests: query.guests ?? true,
      deactivated: query.deactivated ?? false,
      name: query.name,
      userId: query.user_id,
      // Parley has no user types and no shadow bans: every user sorts alike there, so by name.
      orderBy: orderBy === "user_type" || orderBy === "shadow_banned" ? "name" : orderBy,
      dir: query.dir ?? "f",
    });
    // "next_token: … If there are no more users, this field is omitted" (a string, the next `from`).
    return { users: users.map(userSummary), total, ...(from + users.length < total ? { next_token: String(from + users.length) } : {}) };
  },
});

export const getUser = route({
  method: "GET",
  path: "/_synapse/admin/v2/users/:userId",
  auth: "user",
  async handler({ params, requester }, services) {
    await requireAdmin(requester, services);
    return userDetails(await localUser(services, params.userId!));
  },
});

const upsertBody = z.object({
  password: z.string().nullable().optional(),
  logout_devices: z.boolean().optional(),
  displayname: z.string().nullable().optional(),
  avatar_url: z.string().nullable().optional(),
  // Parley keeps no third-party identifiers or external IDs on accounts: only "none" is accepted
  // (synapse-admin sends back the empty lists it was shown).
  threepids: z.array(z.unknown()).max(0, "This server does not store third-party identifiers on accounts").optional(),
  external_ids: z.array(z.unknown()).max(0, "This server does not store external IDs").optional(),
  admin: z.boolean().optional(),
  deactivated: z.boolean().optional(),
  locked: z.boolean().optional(),
  user_type: z.null().optional(),
});

/**
 * `PUT /v2/users/{userId}`: creates the account (201) or changes it (200), answering its details.
 * Order matters: a reactivation comes first (a deactivated account cannot take a profile), a
 * deactivation last (nothing is set on it after).
 */
export const upsertUser = route({
  method: "PUT",
  path: "/_synapse/admin/v2/users/:userId",
  auth: "user",
  body: upsertBody,
  async handler({ params, body, requester, request, c }, services) {
    await requireAdmin(requester, services);
    const { accounts, config } = services;
    const userId = params.userId!;
    if (!isLocalUser(userId, config.server_name)) throw invalidParam("This endpoint can only be used with local users");
    if (userId === requester.userId && body.admin === false) throw invalidParam("You may not demote yourself.");
    if (userId === requester.userId && (body.deactivated === true || body.locked === true)) {
      throw invalidParam("You may not deactivate or lock yourself through this endpoint");
    }
    const existing = await accounts.getUser(userId);
    const changed = Object.keys(body).filter((k) => k !== "password");
    if (body.password != null) changed.push("password");

    if (!existing) {
      const localpart = userId.slice(1, userId.indexOf(":"));
      await accounts.createUser(
        { localpart, password: body.password ?? undefined, admin: body.admin ?? false, displayName: body.displayname ?? undefined },
        request,
      );
      if (body.avatar_url) await accounts.setAvatarUrl(userId, body.avatar_url);
      if (body.locked) await accounts.setLocked(userId, true);
      if (body.deactivated) await accounts.deactivate(userId, request);
      await auditAdminAction(services, requester, request, "create_user", { user_id: userId, fields: changed });
      return c.json(userDetails((await accounts.getUser(userId))!), 201);
    }

    const wasDeactivated = existing.deactivatedTs !== null;
    if (wasDeactivated && body.deactivated === false) {
      if (body.password == null) throw missingParam("Must provide a password to re-activate an account.");
      await accounts.reactivate(userId, body.password, request);
    } else if (body.password != null) {
      if (wasDeactivated && body.deactivated !== false) throw invalidParam("A deactivated account cannot be given a password without reactivating it");
      await accounts.setPassword(userId, body.password, { logoutDevices: body.logout_devices ?? true }, request);
    }
    const active = !wasDeactivated || body.deactivated === false;
    if (body.displayname !== undefined && body.displayname !== existing.displayName) {
      if (!active) throw invalidParam("A deactivated account has no profile");
      await accounts.setDisplayName(userId, body.displayname);
    }
    if (body.avatar_url !== undefined && body.avatar_url !== existing.avatarUrl) {
      if (!active) throw invalidParam("A deactivated account has no profile");
      await accounts.setAvatarUrl(userId, body.avatar_url);
    }
    if (body.admin !== undefined && body.admin !== existing.isAdmin) await accounts.setAdmin(userId, body.admin);
    if (body.locked !== undefined && body.locked !== existing.locked) await accounts.setLocked(userId, body.locked);
    if (body.deactivated === true && !wasDeactivated) {
      await accounts.deactivate(userId, request);
      await services.threepidBindings.unbindAll(userId, undefined);
    }
    await auditAdminAction(services, requester, request, "modify_user", { user_id: userId, fields: changed });
    return userDetails((await accounts.getUser(userId))!);
  },
});

/** `POST /v1/deactivate/{userId}`: as the user's own deactivation, with `erase` for GDPR erasure. */
export const deactivateUser = route({
  method: "POST",
  path: "/_synapse/admin/v1/deactivate/:userId",
  auth: "user",
  body: z.object({ erase: z.boolean().nullable().optional() }),
  async handler({ params, body, requester, request }, services) {
    await requireAdmin(requester, services);
    const user = await localUser(services, params.userId!);
    if (user.userId === requester.userId) throw invalidParam("You may not deactivate yourself through the admin API");
    const erase = body.erase === true;
    // Deactivating twice is not an error in Synapse; the second time there is nothing left to do.
    if (user.deactivatedTs === null) await services.accounts.deactivate(user.userId, request, { erase });
    await auditAdminAction(services, requester, request, "deactivate_user", { user_id: user.userId, erase });
    return { id_server_unbind_result: await services.threepidBindings.unbindAll(user.userId, undefined) };
  },
});

export const resetPassword = route({
  method: "POST",
  path: "/_synapse/admin/v1/reset_password/:userId",
  auth: "user",
  body: z.object({ new_password: z.string(), logout_devices: z.boolean().optional() }),
  async handler({ params, body, requester, request }, services) {
    await requireAdmin(requester, services);
    const user = await localUser(services, params.userId!);
    const logoutDevices = body.logout_devices ?? true;
    await services.accounts.setPassword(user.userId, body.new_password, { logoutDevices }, request);
    await auditAdminAction(services, requester, request, "reset_password", { user_id: user.userId, logout_devices: logoutDevices });
    return {};
  },
});

export const whois = route({
  method: "GET",
  path: "/_synapse/admin/v1/whois/:userId",
  auth: "user",
  async handler({ params, requester }, services) {
    await requireAdmin(requester, services);
    const user = await localUser(services, params.userId!);
    return services.accounts.whois(user.userId);
  },
});

export const joinedRooms = route({
  method: "GET",
  path: "/_synapse/admin/v1/users/:userId/joined_rooms",
  auth: "user",
  async handler({ params, requester }, services) {
    await requireAdmin(requester, services);
    const user = await localUser(services, params.userId!);
    const rooms = await services.rooms.joinedRooms(user.userId);
    return { joined_rooms: rooms, total: rooms.length };
  },
});

/**
 * `POST /v1/users/{userId}/login`: an access token for the user, for an admin who must act as
 * them. Parley tokens belong to a device, so this makes a new device the user sees in their list,
 * named after the admin; it and the login are in the audit log under both users.
 */
export const loginAsUser = route({
  method: "POST",
  path: "/_synapse/admin/v1/users/:userId/login",
  auth: "user",
  body: z.object({ valid_until_ms: z.number().int().nullable().optional() }),
  async handler({ params, body, requester, request }, services) {
    await requireAdmin(requester, services);
    const user = await localUser(services, params.userId!);
    if (user.userId === requester.userId) throw invalidParam("Cannot use admin API to login as self");
    if (user.deactivatedTs !== null) throw invalidParam("The user is deactivated");
    const validUntil = body.valid_until_ms ?? undefined;
    if (validUntil !== undefined && validUntil <= services.now()) throw invalidParam("valid_until_ms is in the past");
    const login = await services.accounts.login(
      user.userId,
      { displayName: `Admin login by ${requester.userId}`, validUntilTs: validUntil, auditDetail: { by_admin: requester.userId } },
      request,
    );
    await auditAdminAction(services, requester, request, "login_as_user", {
      user_id: user.userId,
      device_id: login.deviceId,
      ...(validUntil !== undefined ? { valid_until_ms: validUntil } : {}),
    });
    return { access_token: login.accessToken };
  },
});

export const getAdmin = route({
  method: "GET",
  path: "/_synapse/admin/v1/users/:userId/admin",
  auth: "user",
  async handler({ params, requester }, services) {
    await requireAdmin(requester, services);
    const user = await localUser(services, params.userId!);
    return { admin: user.isAdmin };
  },
});

export const setAdmin = route({
  method: "PUT",
  path: "/_synapse/admin/v1/users/:userId/admin",
  auth: "user",
  body: z.object({ admin: z.boolean() }),
  async handler({ params, body, requester, request }, services) {
    await requireAdmin(requester, services);
    const user = await localUser(services, params.userId!);
    if (user.userId === requester.userId && !body.admin) throw invalidParam("You may not demote yourself.");
    await services.accounts.setAdmin(user.userId, body.admin);
    await auditAdminAction(services, requester, request, body.admin ? "grant_admin" : "revoke_admin", { user_id: user.userId });
    return {};
  },
});

export const userAdminRoutes = [
  listUsers,
  getUser,
  upsertUser,
  deactivateUser,
  resetPassword,
  whois,
  joinedRooms,
  loginAsUser,
  getAdmin,
  setAdmin,
];
