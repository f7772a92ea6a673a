// GET /_synapse/admin/v1/server_version, as Synapse answers it:
// https://element-hq.github.io/synapse/latest/admin_api/version_api.html
// Synapse asks no token here (synapse-admin shows the version on its login page, before anyone is
// logged in), and the same information is public at /_matrix/federation/v1/version anyway.
import { route } from "../../http/route.ts";
import { SERVER_SOFTWARE, SERVER_VERSION } from "../../version.ts";

export const serverVersion = route({
  method: "GET",
  path: "/_synapse/admin/v1/server_version",
  auth: "none",
  handler() {
    return { server_version: `${SERVER_SOFTWARE} ${SERVER_VERSION}` };
  },
});

export const serverVersionRoutes = [serverVersion];
