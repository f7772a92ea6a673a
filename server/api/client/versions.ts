// https://spec.matrix.org/latest/client-server-api/#get_matrixclientversions
import { route } from "../../http/route.ts";

/**
 * The spec versions we advertise. Only versions whose endpoints Parley serves are listed: clients
 * turn features on by version (matrix-js-sdk: v1.4 threads and private receipts, v1.11 authenticated
 * media, v1.15 OAuth metadata, v1.16 extended profiles), so listing one we do not serve breaks them.
 *
 * "v1.1" only, for now: matrix-js-sdk gates nothing on versions below v1.4, and its AutoDiscovery
 * (what Element's login screen uses) refuses a homeserver that lists none of v1.1–v1.13. Accounts,
 * rooms and /sync are served. v1.4 turns on threads in matrix-js-sdk, which then lists threads with
 * `GET /v1/rooms/{roomId}/threads` — not served yet (private and threaded receipts and thread
 * notification counts are). Add later versions as their endpoints land, never ahead of them.
 */
export const SUPPORTED_SPEC_VERSIONS: readonly string[] = ["v1.1"];

export const versions = route({
  method: "GET",
  path: "/_matrix/client/versions",
  auth: "none",
  admission: "exempt",
  handler: () => ({ versions: SUPPORTED_SPEC_VERSIONS, unstable_features: {} }),
});
