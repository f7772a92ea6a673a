// https://spec.matrix.org/latest/client-server-api/#third-party-networks (third_party_lookup.yaml):
// lookups proxied to the application services that bridge each protocol
// (server/appservices/thirdparty.ts). Also served under `/unstable/`, where Synapse serves them
// and older clients (and sytest) call them.
import { z } from "zod";
import { type AnyRoute, route } from "../../http/route.ts";

/** The lookup fields as given, repeated ones included; `access_token` is ours, not a field. */
function fieldsOf(url: string): Array<[string, string]> {
  return [...new URL(url).searchParams].filter(([k]) => k !== "access_token");
}

function routesAt(prefix: string): AnyRoute[] {
  return [
    route({
      method: "GET",
      path: `${prefix}/thirdparty/protocols`,
      auth: "user",
      handler: (_input, services) => services.thirdParty.protocols(),
    }),
    route({
      method: "GET",
      path: `${prefix}/thirdparty/protocol/:protocol`,
      auth: "user",
      handler: ({ params }, services) => services.thirdParty.protocol(params.protocol!),
    }),
    route({
      method: "GET",
      path: `${prefix}/thirdparty/location/:protocol`,
      auth: "user",
      handler: ({ params, c }, services) => services.thirdParty.lookup("location", params.protocol!, fieldsOf(c.req.url)),
    }),
    route({
      method: "GET",
      path: `${prefix}/thirdparty/user/:protocol`,
      auth: "user",
      handler: ({ params, c }, services) => services.thirdParty.lookup("user", params.protocol!, fieldsOf(c.req.url)),
    }),
    route({
      method: "GET",
      path: `${prefix}/thirdparty/location`,
      auth: "user",
      query: z.looseObject({ alias: z.string() }),
      handler: ({ query }, services) => services.thirdParty.reverseLookup("location", query.alias),
    }),
    route({
      method: "GET",
      path: `${prefix}/thirdparty/user`,
      auth: "user",
      query: z.looseObject({ userid: z.string() }),
      handler: ({ query }, services) => services.thirdParty.reverseLookup("user", query.userid),
    }),
  ];
}

export const thirdPartyRoutes = [...routesAt("/_matrix/client/v3"), ...routesAt("/_matrix/client/unstable")];
