// https://spec.matrix.org/latest/client-server-api/#filtering
// A stored filter is returned exactly as it was given: matrix-js-sdk compares the filter it gets
// back with the one it would create, and creates a new one on every start when they differ.
import { z } from "zod";
import { badJson } from "../../http/errors.ts";
import { route } from "../../http/route.ts";
import { filterSchema } from "../../sync/filter.ts";
import { requireOwnUser } from "./ownership.ts";

export const createFilter = route({
  method: "POST",
  path: "/_matrix/client/v3/user/:userId/filter",
  auth: "user",
  body: z.record(z.string(), z.unknown()),
  async handler({ params, requester, body }, services) {
    requireOwnUser(requester, params.userId!, "create filters");
    const checked = filterSchema.safeParse(body);
    if (!checked.success) {
      const issue = checked.error.issues[0];
      throw badJson(`Invalid filter: ${issue?.path.join(".") || "body"}: ${issue?.message ?? "invalid"}`);
    }
    // The body as sent (key order and unknown fields included), not zod's rebuilt copy.
    return { filter_id: await services.userData.createFilter(requester.userId, body) };
  },
});

export const getFilter = route({
  method: "GET",
  path: "/_matrix/client/v3/user/:userId/filter/:filterId",
  auth: "user",
  async handler({ params, requester }, services) {
    requireOwnUser(requester, params.userId!, "read filters");
    return services.userData.getFilter(requester.userId, params.filterId!);
  },
});

export const filterRoutes = [createFilter, getFilter];
