// https://spec.matrix.org/latest/client-server-api/#capabilities-negotiation
import { roomVersionsCapability } from "../../../federation/protocol/room-versions.ts";
import { route } from "../../http/route.ts";

export const capabilities = route({
  method: "GET",
  path: "/_matrix/client/v3/capabilities",
  auth: "user",
  allowGuests: true,
  handler: (_request, services) => ({
    capabilities: {
      "m.change_password": { enabled: true },
      "m.set_displayname": { enabled: true },
      "m.set_avatar_url": { enabled: true },
      "m.3pid_changes": { enabled: false },
      "m.get_login_token": { enabled: false },
      "m.room_versions": roomVersionsCapability(services.rooms.defaultRoomVersion),
    },
  }),
});
