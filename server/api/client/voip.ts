// https://spec.matrix.org/latest/client-server-api/#get_matrixclientv3voipturnserver
// With no TURN server configured the answer is 200 `{}`, as Synapse answers: the spec's response
// requires the four fields but defines no "not configured" answer, and clients (Element,
// matrix-js-sdk) read an empty object as "no TURN server". Guests may ask (`turn_allow_guests`,
// default true as in Synapse): they can join calls too.
import { MatrixError } from "../../http/errors.ts";
import { route } from "../../http/route.ts";
import { turnCredentials } from "../../voip/turn.ts";

export const turnServer = route({
  method: "GET",
  path: "/_matrix/client/v3/voip/turnServer",
  auth: "user",
  allowGuests: true,
  handler({ requester }, services) {
    if (requester.isGuest && !services.config.turn_allow_guests) {
      throw new MatrixError(403, "M_GUEST_ACCESS_FORBIDDEN", "Guest accounts cannot use this endpoint");
    }
    return turnCredentials(services.config, requester.userId, services.now()) ?? {};
  },
});

export const voipRoutes = [turnServer];
