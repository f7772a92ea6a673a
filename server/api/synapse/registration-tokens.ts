// Registration tokens through Synapse's admin API (list, show, create, update, delete):
// https://element-hq.github.io/synapse/latest/usage/administration/admin_api/registration_tokens.html
// The tokens work with `registration: token` (server/accounts/registration-tokens.ts).
import { z } from "zod";
import { TOKEN_PATTERN } from "../../accounts/registration-tokens.ts";
import { invalidParam } from "../../http/errors.ts";
import { route } from "../../http/route.ts";
import { auditAdminAction, requireAdmin } from "./admin-auth.ts";

const usesAllowed = z.number().int().min(0).max(2 ** 31 - 1).nullable();
const expiryTime = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER).nullable();

function checkToken(token: string): string {
  if (!TOKEN_PATTERN.test(token)) throw invalidParam("token must be at most 64 characters of A-Z, a-z, 0-9, '.', '_', '~' and '-'");
  return token;
}

export const listTokens = route({
  method: "GET",
  path: "/_synapse/admin/v1/registration_tokens",
  auth: "user",
  query: z.object({ valid: z.enum(["true", "false"]).optional() }),
  async handler({ query, requester }, services) {
    await requireAdmin(requester, services);
    const valid = query.valid === undefined ? undefined : query.valid === "true";
    return { registration_tokens: await services.registrationTokens.list(valid) };
  },
});

export const createToken = route({
  method: "POST",
  path: "/_synapse/admin/v1/registration_tokens/new",
  auth: "user",
  body: z.object({
    token: z.string().optional(),
    // synadm sends `length: null` and `uses_allowed: null` when not given: null means the default.
    length: z.number().int().min(1).max(64).nullable().optional(),
    uses_allowed: usesAllowed.optional(),
    expiry_time: expiryTime.optional(),
  }),
  async handler({ body, requester, request }, services) {
    await requireAdmin(requester, services);
    const created = await services.registrationTokens.create({
      token: body.token === undefined ? undefined : checkToken(body.token),
      length: body.length ?? 16,
      usesAllowed: body.uses_allowed ?? null,
      expiryTime: body.expiry_time ?? null,
    });
    // The token itself is what it protects, so the log names it only by its first characters.
    await auditAdminAction(services, requester, request, "create_registration_token", { token_prefix: created.token.slice(0, 4) });
    return created;
  },
});

export const getToken = route({
  method: "GET",
  path: "/_synapse/admin/v1/registration_tokens/:token",
  auth: "user",
  async handler({ params, requester }, services) {
    await requireAdmin(requester, services);
    return services.registrationTokens.get(params.token!);
  },
});

export const updateToken = route({
  method: "PUT",
  path: "/_synapse/admin/v1/registration_tokens/:token",
  auth: "user",
  body: z.object({ uses_allowed: usesAllowed.optional(), expiry_time: expiryTime.optional() }),
  async handler({ params, body, requester, request }, services) {
    await requireAdmin(requester, services);
    const updated = await services.registrationTokens.update(params.token!, { usesAllowed: body.uses_allowed, expiryTime: body.expiry_time });
    await auditAdminAction(services, requester, request, "update_registration_token", {
      token_prefix: updated.token.slice(0, 4),
      ...(body.uses_allowed !== undefined ? { uses_allowed: body.uses_allowed } : {}),
      ...(body.expiry_time !== undefined ? { expiry_time: body.expiry_time } : {}),
    });
    return updated;
  },
});

export const deleteToken = route({
  method: "DELETE",
  path: "/_synapse/admin/v1/registration_tokens/:token",
  auth: "user",
  async handler({ params, requester, request }, services) {
    await requireAdmin(requester, services);
    await services.registrationTokens.delete(params.token!);
    await auditAdminAction(services, requester, request, "delete_registration_token", { token_prefix: params.token!.slice(0, 4) });
    return {};
  },
});

export const registrationTokenRoutes = [listTokens, createToken, getToken, updateToken, deleteToken];
