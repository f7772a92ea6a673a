// The Client-Server endpoints only application services may call (with their `as_token`).
// https://spec.matrix.org/latest/application-service-api/#pinging-1 (appservice_ping.yaml)
// https://spec.matrix.org/latest/application-service-api/#published-room-directories (appservice_room_directory.yaml)
import { z } from "zod";
import { forbidden } from "../../http/errors.ts";
import { type Requester, route } from "../../http/route.ts";
import type { AppService } from "../../appservices/registration.ts";
import type { Services } from "../../services.ts";

/** The application service that made the request; 403 M_FORBIDDEN for anyone else. */
function requestingService(requester: Requester, services: Services, message: string): AppService {
  const service = requester.appServiceId === undefined ? undefined : services.appServices.byId(requester.appServiceId);
  if (!service) throw forbidden(message);
  return service;
}

export const pingAppService = route({
  method: "POST",
  path: "/_matrix/client/v1/appservice/:appserviceId/ping",
  auth: "user",
  body: z.looseObject({ transaction_id: z.string().optional() }),
  async handler({ requester, params, body }, services) {
    const service = requestingService(requester, services, "Provided access token is not an application service's as_token");
    if (service.id !== params.appserviceId) throw forbidden("Provided access token is not the appservice's as_token");
    const durationMs = await services.appServiceQueries.ping(service, body.transaction_id);
    return { duration_ms: durationMs };
  },
});

const visibilityBody = z.looseObject({ visibility: z.enum(["public", "private"]) });

export const setAppServiceRoomVisibility = route({
  method: "PUT",
  path: "/_matrix/client/v3/directory/list/appservice/:networkId/:roomId",
  auth: "user",
  body: visibilityBody,
  async handler({ requester, params, body }, services) {
    const service = requestingService(requester, services, "Only application services may publish rooms in their directories");
    await services.directory.setAppServiceVisibility(service.id, params.networkId!, params.roomId!, body.visibility);
    return {};
  },
});

/** Not in the spec (which unpublishes with `visibility: private`), but Synapse serves it and sytest uses it. */
export const deleteAppServiceRoomVisibility = route({
  method: "DELETE",
  path: "/_matrix/client/v3/directory/list/appservice/:networkId/:roomId",
  auth: "user",
  async handler({ requester, params }, services) {
    const service = requestingService(requester, services, "Only application services may publish rooms in their directories");
    await services.directory.setAppServiceVisibility(service.id, params.networkId!, params.roomId!, "private");
    return {};
  },
});

export const appServiceRoutes = [pingAppService, setAppServiceRoomVisibility, deleteAppServiceRoomVisibility];
