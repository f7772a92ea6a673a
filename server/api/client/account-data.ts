// https://spec.matrix.org/latest/client-server-api/#client-config
// Global account data. Per-room account data (`/user/{userId}/rooms/{roomId}/account_data/{type}`)
// comes with the rooms issue; the service and table already take a room ID.
import { z } from "zod";
import { MatrixError, notFound } from "../../http/errors.ts";
import { route } from "../../http/route.ts";
import { jsonObject } from "../../http/safe-json.ts";
import { PUSH_RULES_TYPE } from "../../userdata/userdata.ts";
import { requireOwnUser } from "./ownership.ts";

/** Account data the server manages itself: clients change it through its own endpoints. */
const SERVER_MANAGED_TYPES = new Set([PUSH_RULES_TYPE, "m.fully_read"]);

export const getAccountData = route({
  method: "GET",
  path: "/_matrix/client/v3/user/:userId/account_data/:type",
  auth: "user",
  async handler({ params, requester }, services) {
    requireOwnUser(requester, params.userId!, "read account data");
    const content = await services.userData.getAccountData(requester.userId, "", params.type!);
    // matrix-js-sdk reads 404 M_NOT_FOUND as "no such account data".
    if (content === undefined) throw notFound("Account data not found");
    return content;
  },
});

export const setAccountData = route({
  method: "PUT",
  path: "/_matrix/client/v3/user/:userId/account_data/:type",
  auth: "user",
  // Stored and served exactly as sent (a `__proto__` key included).
  body: jsonObject,
  async handler({ params, requester, body }, services) {
    requireOwnUser(requester, params.userId!, "add account data");
    const type = params.type!;
    if (SERVER_MANAGED_TYPES.has(type)) {
      throw new MatrixError(405, "M_BAD_JSON", `Cannot set ${type} through this API`);
    }
    await services.userData.setAccountData(requester.userId, "", type, body);
    return {};
  },
});

export const accountDataRoutes = [getAccountData, setAccountData];
