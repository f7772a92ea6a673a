// https://spec.matrix.org/latest/client-server-api/#adding-account-administrative-contact-information
// (administrative_contact.yaml): the account's 3pids and binding them on identity servers through
// the homeserver (server/accounts/threepid-bindings.ts). Parley verifies no email or msisdn itself,
// so no 3pid is attached to an account: `GET /account/3pid` lists none, and `/delete` removes the
// binding (the only thing there is to remove). Also served under `/r0/` and `/unstable/`, where
// older clients (and sytest) call them.
import { z } from "zod";
import { type AnyRoute, route } from "../../http/route.ts";

/** No lone surrogates: they cannot be stored (PostgreSQL refuses them) nor sent as UTF-8. */
const wellFormed = (v: string) => !/[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/.test(v);
const text = (max: number) => z.string().min(1).max(max).refine(wellFormed, "must be well-formed Unicode");
const medium = text(32);
const address = text(512);
const idServer = text(255);

function routesAt(prefix: string): AnyRoute[] {
  return [
    route({
      method: "GET",
      path: `${prefix}/account/3pid`,
      auth: "user" as const,
      handler: () => ({ threepids: [] }),
    }),
    route({
      method: "POST",
      path: `${prefix}/account/3pid/bind`,
      auth: "user" as const,
      body: z.object({
        client_secret: z.string().min(1).max(255),
        id_server: idServer,
        id_access_token: z.string().min(1).max(1024),
        sid: z.string().min(1).max(255),
      }),
      async handler({ body, requester }, services) {
        await services.threepidBindings.bind(requester.userId, body.id_server, body.id_access_token, body.sid, body.client_secret);
        return {};
      },
    }),
    route({
      method: "POST",
      path: `${prefix}/account/3pid/unbind`,
      auth: "user" as const,
      body: z.object({ medium, address, id_server: idServer.optional() }),
      async handler({ body, requester }, services) {
        return { id_server_unbind_result: await services.threepidBindings.unbind(requester.userId, body.medium, body.address, body.id_server) };
      },
    }),
    route({
      method: "POST",
      path: `${prefix}/account/3pid/delete`,
      auth: "user" as const,
      body: z.object({ medium, address, id_server: idServer.optional() }),
      async handler({ body, requester }, services) {
        return { id_server_unbind_result: await services.threepidBindings.unbind(requester.userId, body.medium, body.address, body.id_server) };
      },
    }),
  ];
}

export const threepidRoutes = [...routesAt("/_matrix/client/v3"), ...routesAt("/_matrix/client/r0"), ...routesAt("/_matrix/client/unstable")];
