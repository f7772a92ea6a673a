// Enforcing a room's server ACL on what other servers ask or send about that room.
// https://spec.matrix.org/latest/server-server-api/#server-access-control-lists-acls
//
// Requests that name a room (make_join, send_join, invite, state, backfill, ...) call
// `assertServerAllowed` before anything else: a denied origin gets 403 M_FORBIDDEN. EDUs local to
// a room (typing, receipts) ask `isServerAllowed` and are ignored when it says no. The ACL read is
// the room's current state as this server holds it; a room we do not know has no ACL.

import { MatrixError } from "../../server/http/errors.ts";
import { serverAllowedByAcl } from "../protocol/server-acl.ts";

/** What the check needs of the rooms service: a state event's current content. */
export interface RoomStateReader {
  currentStateContent(roomId: string, type: string, stateKey?: string): Promise<Record<string, unknown> | undefined>;
}

export class ServerAcls {
  constructor(private readonly rooms: RoomStateReader) {}

  /** Whether the room's current `m.room.server_acl` lets `origin` take part (true without one). */
  async isServerAllowed(roomId: string, origin: string): Promise<boolean> {
    return serverAllowedByAcl(await this.rooms.currentStateContent(roomId, "m.room.server_acl", ""), origin);
  }

  /** Throws 403 M_FORBIDDEN when the room's server ACL denies `origin`. */
  async assertServerAllowed(roomId: string, origin: string): Promise<void> {
    if (!(await this.isServerAllowed(roomId, origin))) {
      throw new MatrixError(403, "M_FORBIDDEN", "Server is denied by the room's server ACL");
    }
  }
}
