// Publishing our signing keys.
// https://spec.matrix.org/latest/server-server-api/#publishing-keys
import { encodeUnpaddedBase64 } from "../protocol/base64.ts";
import { type SigningKey, signJson } from "../protocol/signing.ts";
import { route } from "../../server/http/route.ts";

/** How long peers may cache our key response; they refetch after this. */
export const KEY_VALIDITY_MS = 24 * 60 * 60 * 1000;

/** The self-signed `/_matrix/key/v2/server` response. Pure: the clock is passed in. */
export function serverKeysResponse(serverName: string, key: SigningKey, now: number) {
  return signJson(
    {
      server_name: serverName,
      valid_until_ts: now + KEY_VALIDITY_MS,
      verify_keys: { [key.keyId]: { key: encodeUnpaddedBase64(key.publicKey) } },
      old_verify_keys: {},
    },
    serverName,
    key,
  );
}

const handler = (_: unknown, services: { config: { server_name: string }; signingKey: SigningKey; now(): number }) =>
  serverKeysResponse(services.config.server_name, services.signingKey, services.now());

export const serverKeys = route({ method: "GET", path: "/_matrix/key/v2/server", auth: "none", handler });
/** The key-ID form is deprecated (the key ID is ignored) but older servers still request it. */
export const serverKeysById = route({ method: "GET", path: "/_matrix/key/v2/server/:keyId", auth: "none", handler });
