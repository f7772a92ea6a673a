// Read markers: `m.fully_read` (room account data: where the user has read up to, for the client's
// own display) alongside the `m.read` and `m.read.private` receipts.
// https://spec.matrix.org/latest/client-server-api/#fully-read-markers
import { forbidden, notFound } from "../http/errors.ts";
import type { UserData } from "../userdata/userdata.ts";
import type { MembershipView } from "./membership.ts";
import type { Receipts } from "./receipts.ts";

export const FULLY_READ_TYPE = "m.fully_read";

export interface ReadMarkers {
  fullyRead?: string;
  read?: string;
  readPrivate?: string;
}

export class ReadMarkerService {
  constructor(
    private readonly userData: UserData,
    private readonly receipts: Receipts,
    private readonly membership: MembershipView,
  ) {}

  /** `POST /rooms/{roomId}/read_markers` (and `/receipt/m.fully_read/{eventId}`). */
  async setReadMarkers(userId: string, roomId: string, markers: ReadMarkers): Promise<void> {
    if (markers.fullyRead !== undefined) {
      if ((await this.membership.membershipOf(roomId, userId)) !== "join") throw forbidden("You are not joined to this room");
      if (!(await this.membership.eventPosition(roomId, markers.fullyRead))) throw notFound("Unknown event");
      await this.userData.setAccountData(userId, roomId, FULLY_READ_TYPE, { event_id: markers.fullyRead });
    }
    if (markers.read !== undefined) await this.receipts.setReceipt(userId, roomId, "m.read", markers.read);
    if (markers.readPrivate !== undefined) await this.receipts.setReceipt(userId, roomId, "m.read.private", markers.readPrivate);
  }
}
