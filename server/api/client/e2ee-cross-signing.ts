// Cross-signing: uploading the keys, and signatures made with them.
// https://spec.matrix.org/latest/client-server-api/#cross-signing
// https://spec.matrix.org/latest/client-server-api/#post_matrixclientv3keysdevice_signingupload
// https://spec.matrix.org/latest/client-server-api/#post_matrixclientv3keyssignaturesupload
import { z } from "zod";
import { route } from "../../http/route.ts";
import { jsonObject } from "../../http/safe-json.ts";

// Key objects are kept whole, exactly as parsed: their every field is signed (z.record would drop a
// `__proto__` key and break the signature).
const keyObject = jsonObject;

export const uploadCrossSigningKeys = route({
  method: "POST",
  path: "/_matrix/client/v3/keys/device_signing/upload",
  auth: "user",
  body: z.object({
    master_key: keyObject.optional(),
    self_signing_key: keyObject.optional(),
    user_signing_key: keyObject.optional(),
    auth: z.record(z.string(), z.unknown()).optional(),
  }),
  async handler({ requester, body, request }, services) {
    await services.e2ee.crossSigning.uploadKeys(requester.userId, body, request);
    return {};
  },
});

export const uploadSignatures = route({
  method: "POST",
  path: "/_matrix/client/v3/keys/signatures/upload",
  auth: "user",
  body: z.record(z.string(), z.record(z.string(), keyObject)),
  async handler({ requester, body }, services) {
    return { failures: await services.e2ee.crossSigning.uploadSignatures(requester.userId, body) };
  },
});

// The same two under the unstable prefix, where clients of 2020–2021 (and sytest) upload them, as
// Synapse still serves them. Not in the spec: they answer exactly as the v3 routes.
export const uploadCrossSigningKeysUnstable = route({ ...uploadCrossSigningKeys, path: "/_matrix/client/unstable/keys/device_signing/upload" });
export const uploadSignaturesUnstable = route({ ...uploadSignatures, path: "/_matrix/client/unstable/keys/signatures/upload" });

export const crossSigningRoutes = [uploadCrossSigningKeys, uploadSignatures, uploadCrossSigningKeysUnstable, uploadSignaturesUnstable];
