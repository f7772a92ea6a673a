// Transactions pushed to us by other servers.
// https://spec.matrix.org/latest/server-server-api/#put_matrixfederationv1sendtxnid
import { z } from "zod";
import { MatrixError } from "../../http/errors.ts";
import { route } from "../../http/route.ts";
import { MAX_EDUS_PER_TRANSACTION, MAX_PDUS_PER_TRANSACTION } from "../../../federation/transport/inbound-transactions.ts";

export const sendTransaction = route({
  method: "PUT",
  path: "/_matrix/federation/v1/send/:txnId",
  auth: "server",
  // More PDUs or EDUs than the spec allows: 400 M_BAD_JSON (Synapse answers 400 too).
  body: z.looseObject({
    origin: z.string(),
    origin_server_ts: z.number(),
    pdus: z.array(z.unknown()).max(MAX_PDUS_PER_TRANSACTION),
    edus: z.array(z.unknown()).max(MAX_EDUS_PER_TRANSACTION).optional(),
  }),
  async handler({ origin, params, body }, services) {
    // The transaction speaks for the server that signed the request, and no other.
    if (body.origin !== origin) throw new MatrixError(403, "M_FORBIDDEN", "The transaction's origin is not the server that sent it");
    return services.federation.inbound.receive(origin, params.txnId!, body);
  },
});

export const federationSendRoutes = [sendTransaction];
