// https://spec.matrix.org/latest/client-server-api/#get_matrixclientversions
import { route } from "../../http/route.ts";

/**
 * The spec versions we advertise. Only versions whose endpoints Parley serves are listed: clients
 * turn features on by version (matrix-js-sdk: v1.4 threads and private receipts, v1.11 authenticated
 * media, v1.15 OAuth metadata, v1.16 extended profiles), so listing one we do not serve breaks them.
 */
export const SUPPORTED_SPEC_VERSIONS: readonly string[] = [];

export const versions = route({
  method: "GET",
  path: "/_matrix/client/versions",
  auth: "none",
  handler: () => ({ versions: SUPPORTED_SPEC_VERSIONS, unstable_features: {} }),
});
