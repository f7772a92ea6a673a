// End-to-end encryption over federation: what other servers ask about our users' devices and keys.
// https://spec.matrix.org/latest/server-server-api/#device-management
// https://spec.matrix.org/latest/server-server-api/#end-to-end-encryption
import { z } from "zod";
import { dictionary } from "../../../federation/protocol/dictionary.ts";
import { isLocalUser } from "../../accounts/user-id.ts";
import { emptyKeysQueryResponse } from "../../e2ee/e2ee.ts";
import { MatrixError } from "../../http/errors.ts";
import { route } from "../../http/route.ts";

const notOurs = () => new MatrixError(400, "M_INVALID_PARAM", "That user does not belong to this server");

// https://spec.matrix.org/latest/server-server-api/#get_matrixfederationv1userdevicesuserid
export const userDevices = route({
  method: "GET",
  path: "/_matrix/federation/v1/user/devices/:userId",
  auth: "server",
  async handler({ params }, services) {
    const userId = params.userId!;
    if (!isLocalUser(userId, services.config.server_name)) throw notOurs();
    return services.e2ee.userDevices(userId);
  },
});

// https://spec.matrix.org/latest/server-server-api/#post_matrixfederationv1userkeysquery
export const userKeysQuery = route({
  method: "POST",
  path: "/_matrix/federation/v1/user/keys/query",
  auth: "server",
  body: z.object({ device_keys: z.record(z.string(), z.array(z.string())) }),
  async handler({ body }, services) {
    // Users of other servers are left out (the spec: "Requested users must be local").
    const local = Object.keys(body.device_keys).filter((u) => isLocalUser(u, services.config.server_name));
    const out = emptyKeysQueryResponse();
    // No requester: only each user's signatures of their own keys are shown.
    await services.e2ee.localKeys("", local, body.device_keys, out);
    return { device_keys: out.device_keys, master_keys: out.master_keys, self_signing_keys: out.self_signing_keys };
  },
});

// https://spec.matrix.org/latest/server-server-api/#post_matrixfederationv1userkeysclaim
export const userKeysClaim = route({
  method: "POST",
  path: "/_matrix/federation/v1/user/keys/claim",
  auth: "server",
  body: z.object({ one_time_keys: z.record(z.string(), z.record(z.string(), z.string())) }),
  async handler({ body }, services) {
    const local = dictionary<Record<string, string>>();
    for (const [userId, byDevice] of Object.entries(body.one_time_keys)) {
      if (isLocalUser(userId, services.config.server_name)) local[userId] = byDevice;
    }
    const { one_time_keys } = await services.e2ee.claimKeys(local);
    return { one_time_keys };
  },
});

export const federationUserKeyRoutes = [userDevices, userKeysQuery, userKeysClaim];
