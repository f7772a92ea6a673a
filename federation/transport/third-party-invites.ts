// Third-party invites across servers: the outbound `PUT /exchange_third_party_invite/{roomId}`
// (our user's 3pid was bound, the room is on another server) and the plugs the service needs
// (identity servers, remote invites). The inbound routes are server/api/federation/third-party-invites.ts.
// https://spec.matrix.org/latest/server-server-api/#third-party-invites
import type { Logger } from "pino";
import { MatrixError } from "../../server/http/errors.ts";
import type { ThirdPartyInvites } from "../../server/rooms/third-party-invites.ts";
import type { FederationHttpClient } from "./http-client.ts";
import type { IdentityServerClient } from "./identity-servers.ts";
import type { RoomFederation } from "./room-federation.ts";

type JsonObject = Record<string, unknown>;

export function connectThirdPartyInvites(d: {
  thirdPartyInvites: ThirdPartyInvites;
  http: FederationHttpClient;
  rooms: RoomFederation;
  identityServers: IdentityServerClient;
  logger: Logger;
}): void {
  d.thirdPartyInvites.useIdentityServers(d.identityServers);
  d.thirdPartyInvites.federateWith({
    exchange: (servers, roomId, event) => exchange(d.http, d.logger, servers, roomId, event),
    inviteRemote: (inviter, roomId, target, extra) => d.rooms.inviteRemote(inviter, roomId, target, extra),
  });
}

/**
 * Asks the servers in turn to issue the invite; the first that answers decides (its refusal is
 * passed on: 400, 403 and 404 as they are, anything else as 502). Only servers that cannot be
 * reached make us try the next.
 */
async function exchange(http: FederationHttpClient, logger: Logger, servers: readonly string[], roomId: string, event: JsonObject): Promise<void> {
  let lastError = "no server to ask";
  for (const server of servers) {
    let res;
    try {
      res = await http.request(server, {
        method: "PUT",
        path: `/_matrix/federation/v1/exchange_third_party_invite/${encodeURIComponent(roomId)}`,
        body: event,
      });
    } catch (err) {
      lastError = `${server} could not be reached: ${err instanceof Error ? err.message.slice(0, 200) : "error"}`;
      logger.info({ server, roomId, err }, "could not reach a server to exchange a third-party invite");
      continue;
    }
    if (res.status === 200) return;
    const answer = typeof res.body === "object" && res.body !== null ? (res.body as JsonObject) : {};
    const errcode = typeof answer.errcode === "string" ? answer.errcode.slice(0, 100) : "M_UNKNOWN";
    const error = typeof answer.error === "string" ? answer.error.slice(0, 300) : `${server} answered ${res.status}`;
    if (res.status === 403) throw new MatrixError(403, errcode === "M_UNKNOWN" ? "M_FORBIDDEN" : errcode, error);
    if (res.status === 404) throw new MatrixError(404, "M_NOT_FOUND", error);
    if (res.status === 400) throw new MatrixError(400, errcode, error);
    throw new MatrixError(502, "M_UNKNOWN", `${server} answered ${res.status}: ${error}`);
  }
  throw new MatrixError(502, "M_UNKNOWN", `Could not exchange the third-party invite: ${lastError}`);
}
