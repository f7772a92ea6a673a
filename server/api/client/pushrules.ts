// https://spec.matrix.org/latest/client-server-api/#push-rules-api
// The rules logic is the pure module server/pushrules/; the user's ruleset is stored by the
// user-data service (as the m.push_rules account data, so changes stream to /sync).
import { z } from "zod";
import { MatrixError } from "../../http/errors.ts";
import { route } from "../../http/route.ts";
import { deleteRule, getRule, getRulesOfKind, putRule, setActions, setEnabled } from "../../pushrules/ruleset.ts";

const BASE = "/_matrix/client/v3/pushrules";

function checkScope(scope: string): void {
  if (scope !== "global") throw new MatrixError(400, "M_INVALID_PARAM", `Unknown push rule scope ${scope}`);
}

// The spec's paths end in a slash (`/pushrules/`, `/pushrules/global/`, `/pushrules/global/{kind}/`);
// the same paths without it, and paths with a part missing or an unknown one, are malformed
// requests for a rule: 400, as Synapse answers them, rather than 404 for an unknown endpoint.
const getAll = route({
  method: "GET",
  path: `${BASE}/`,
  auth: "user",
  handler: ({ requester }, services) => services.userData.getPushRules(requester.userId),
});

const getScope = route({
  method: "GET",
  path: `${BASE}/:scope/`,
  auth: "user",
  async handler({ params, requester }, services) {
    checkScope(params.scope!);
    return (await services.userData.getPushRules(requester.userId)).global;
  },
});

const getKind = route({
  method: "GET",
  path: `${BASE}/:scope/:kind/`,
  auth: "user",
  async handler({ params, requester }, services) {
    checkScope(params.scope!);
    const { global } = await services.userData.getPushRules(requester.userId);
    return getRulesOfKind(global, params.kind!);
  },
});

function malformed(path: string, why: string, methods: ReadonlyArray<"GET" | "PUT" | "DELETE"> = ["GET", "PUT", "DELETE"]) {
  return methods.map((method) =>
    route({
      method,
      path,
      auth: "user",
      handler() {
        throw new MatrixError(400, "M_UNRECOGNIZED", why);
      },
    }),
  );
}

export const getRuleRoute = route({
  method: "GET",
  path: `${BASE}/:scope/:kind/:ruleId`,
  auth: "user",
  async handler({ params, requester }, services) {
    checkScope(params.scope!);
    const { global } = await services.userData.getPushRules(requester.userId);
    return getRule(global, params.kind!, params.ruleId!);
  },
});

export const putRuleRoute = route({
  method: "PUT",
  path: `${BASE}/:scope/:kind/:ruleId`,
  auth: "user",
  body: z.unknown(),
  query: z.object({ before: z.string().optional(), after: z.string().optional() }),
  async handler({ params, requester, body, query }, services) {
    checkScope(params.scope!);
    await services.userData.editPushRules(requester.userId, (ruleset) =>
      putRule(ruleset, params.kind!, params.ruleId!, body, query),
    );
    return {};
  },
});

export const deleteRuleRoute = route({
  method: "DELETE",
  path: `${BASE}/:scope/:kind/:ruleId`,
  auth: "user",
  async handler({ params, requester }, services) {
    checkScope(params.scope!);
    await services.userData.editPushRules(requester.userId, (ruleset) =>
      deleteRule(ruleset, params.kind!, params.ruleId!),
    );
    return {};
  },
});

export const getEnabled = route({
  method: "GET",
  path: `${BASE}/:scope/:kind/:ruleId/enabled`,
  auth: "user",
  async handler({ params, requester }, services) {
    checkScope(params.scope!);
    const { global } = await services.userData.getPushRules(requester.userId);
    return { enabled: getRule(global, params.kind!, params.ruleId!).enabled };
  },
});

export const putEnabled = route({
  method: "PUT",
  path: `${BASE}/:scope/:kind/:ruleId/enabled`,
  auth: "user",
  body: z.unknown(),
  async handler({ params, requester, body }, services) {
    checkScope(params.scope!);
    await services.userData.editPushRules(requester.userId, (ruleset) =>
      setEnabled(ruleset, params.kind!, params.ruleId!, body),
    );
    return {};
  },
});

export const getActions = route({
  method: "GET",
  path: `${BASE}/:scope/:kind/:ruleId/actions`,
  auth: "user",
  async handler({ params, requester }, services) {
    checkScope(params.scope!);
    const { global } = await services.userData.getPushRules(requester.userId);
    return { actions: getRule(global, params.kind!, params.ruleId!).actions };
  },
});

export const putActions = route({
  method: "PUT",
  path: `${BASE}/:scope/:kind/:ruleId/actions`,
  auth: "user",
  body: z.unknown(),
  async handler({ params, requester, body }, services) {
    checkScope(params.scope!);
    await services.userData.editPushRules(requester.userId, (ruleset) =>
      setActions(ruleset, params.kind!, params.ruleId!, body),
    );
    return {};
  },
});

export const pushRuleRoutes = [
  getAll,
  getScope,
  getKind,
  getRuleRoute,
  putRuleRoute,
  deleteRuleRoute,
  getEnabled,
  putEnabled,
  getActions,
  putActions,
  // Malformed paths, after the real ones (which win where both match).
  ...malformed(BASE, "Push rule paths end with a slash: /pushrules/"),
  ...malformed(`${BASE}/`, "A push rule path needs a scope, a kind and a rule ID", ["PUT", "DELETE"]),
  ...malformed(`${BASE}/:scope`, "A push rule path needs a kind and a rule ID (or a trailing slash)"),
  ...malformed(`${BASE}/:scope/`, "A push rule path needs a kind and a rule ID", ["PUT", "DELETE"]),
  ...malformed(`${BASE}/:scope/:kind`, "A push rule path needs a rule ID (or a trailing slash)"),
  ...malformed(`${BASE}/:scope/:kind/`, "A push rule's ID cannot be empty", ["PUT", "DELETE"]),
  ...malformed(`${BASE}/:scope/:kind/:ruleId/:attribute`, "A push rule's attributes are `enabled` and `actions`"),
];
