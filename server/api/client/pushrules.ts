// https://spec.matrix.org/latest/client-server-api/#push-rules-api
// The rules logic is the pure module server/pushrules/; the user's ruleset is stored by the
// user-data service (as the m.push_rules account data, so changes stream to /sync).
import { z } from "zod";
import { MatrixError } from "../../http/errors.ts";
import { route } from "../../http/route.ts";
import { deleteRule, getRule, putRule, setActions, setEnabled } from "../../pushrules/ruleset.ts";

const BASE = "/_matrix/client/v3/pushrules";

function checkScope(scope: string): void {
  if (scope !== "global") throw new MatrixError(400, "M_INVALID_PARAM", `Unknown push rule scope ${scope}`);
}

// matrix-js-sdk asks for `/pushrules/` with the trailing slash; serve the other spellings too.
const getAll = (path: string) =>
  route({
    method: "GET",
    path,
    auth: "user",
    handler: ({ requester }, services) => services.userData.getPushRules(requester.userId),
  });

const getGlobal = (path: string) =>
  route({
    method: "GET",
    path,
    auth: "user",
    async handler({ requester }, services) {
      return (await services.userData.getPushRules(requester.userId)).global;
    },
  });

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
  getAll(`${BASE}/`),
  getAll(BASE),
  getGlobal(`${BASE}/global/`),
  getGlobal(`${BASE}/global`),
  getRuleRoute,
  putRuleRoute,
  deleteRuleRoute,
  getEnabled,
  putEnabled,
  getActions,
  putActions,
];
