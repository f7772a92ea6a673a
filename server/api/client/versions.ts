// https://spec.matrix.org/latest/client-server-api/#get_matrixclientversions
import { route } from "../../http/route.ts";

/**
 * The spec versions we advertise. Only versions whose endpoints Parley serves are listed: clients
 * turn features on by version (matrix-js-sdk: v1.4 threads and private receipts, v1.11 authenticated
 * media, v1.15 OAuth metadata, v1.16 extended profiles), so listing one we do not serve breaks them.
 *
 * v1.1 to v1.4: accounts, rooms and /sync (v1.1); the spaces hierarchy, knocking and restricted
 * rooms (v1.2); relations (v1.3); threads with `GET /v1/rooms/{roomId}/threads`, threaded and
 * private read receipts and thread notification counts, room version 10 (v1.4). matrix-js-sdk turns
 * threads on at v1.4. v1.5 and later wait on what they bring (v1.6 timestamp_to_event for clients,
 * v1.7 asynchronous uploads, v1.11 authenticated media): never list a version ahead of its endpoints.
 */
export const SUPPORTED_SPEC_VERSIONS: readonly string[] = ["v1.1", "v1.2", "v1.3", "v1.4"];

export const versions = route({
  method: "GET",
  path: "/_matrix/client/versions",
  auth: "none",
  admission: "exempt",
  // MSC3916's flag: authenticated media (/_matrix/client/v1/media/*) without claiming all of v1.11;
  // matrix-js-sdk uses those endpoints when it sees it.
  handler: () => ({ versions: SUPPORTED_SPEC_VERSIONS, unstable_features: { "org.matrix.msc3916.stable": true } }),
});
