// Send-to-device messaging.
// https://spec.matrix.org/latest/client-server-api/#send-to-device-messaging
// https://spec.matrix.org/latest/client-server-api/#put_matrixclientv3sendtodeviceeventtypetxnid
import { z } from "zod";
import { route } from "../../http/route.ts";
import { jsonObject } from "../../http/safe-json.ts";

export const sendToDevice = route({
  method: "PUT",
  path: "/_matrix/client/v3/sendToDevice/:eventType/:txnId",
  auth: "user",
  allowGuests: true,
  body: z.object({
    // Message content is delivered exactly as sent (z.record would drop a `__proto__` key).
    messages: z.record(z.string(), z.record(z.string(), jsonObject)),
  }),
  async handler({ requester, params, body }, services) {
    await services.e2ee.toDevice.send(requester.userId, requester.deviceId, params.eventType!, params.txnId!, body.messages);
    return {};
  },
});

export const toDeviceRoutes = [sendToDevice];
