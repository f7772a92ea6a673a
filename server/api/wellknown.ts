// https://spec.matrix.org/latest/client-server-api/#well-known-uris
// https://spec.matrix.org/latest/server-server-api/#getwell-knownmatrixserver
import { notFound } from "../http/errors.ts";
import { route } from "../http/route.ts";

export const wellKnownClient = route({
  method: "GET",
  path: "/.well-known/matrix/client",
  auth: "none",
  admission: "exempt",
  handler: (_, { config }) => ({ "m.homeserver": { base_url: config.public_baseurl.replace(/\/+$/, "") } }),
});

export const wellKnownServer = route({
  method: "GET",
  path: "/.well-known/matrix/server",
  auth: "none",
  admission: "exempt",
  handler: (_, { config }) => {
    // Without delegation there is nothing to publish: peers resolve the server name itself.
    if (!config.federation_server) throw notFound("No server delegation is configured");
    return { "m.server": config.federation_server };
  },
});
