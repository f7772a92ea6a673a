// https://spec.matrix.org/latest/server-server-api/#get_matrixfederationv1version
import { route } from "../../server/http/route.ts";
import { SERVER_SOFTWARE, SERVER_VERSION } from "../../server/version.ts";

export const federationVersion = route({
  method: "GET",
  path: "/_matrix/federation/v1/version",
  auth: "none",
  admission: "exempt",
  handler: () => ({ server: { name: SERVER_SOFTWARE, version: SERVER_VERSION } }),
});
