// Publishing our signing keys.
// https://spec.matrix.org/latest/server-server-api/#publishing-keys
import { encodeUnpaddedBase64 } from "../protocol/base64.ts";
import { type SigningKey, signJson } from "../protocol/signing.ts";
import { z } from "zod";
import { MatrixError } from "../../server/http/errors.ts";
import { route } from "../../server/http/route.ts";
import { parseServerName } from "./discovery.ts";
import { type OwnOldKeys, oldVerifyKeysJson } from "./own-old-keys.ts";
import type { ServerKeyStore, VerifyKey } from "./server-keys.ts";

/** How long peers may cache our key response; they refetch after this. */
export const KEY_VALIDITY_MS = 24 * 60 * 60 * 1000;

/**
 * The self-signed `/_matrix/key/v2/server` response, with our retired keys under old_verify_keys.
 * Pure: the clock and the old keys are passed in.
 */
export function serverKeysResponse(serverName: string, key: SigningKey, now: number, oldKeys = new Map<string, VerifyKey>()) {
  const old = new Map(oldKeys);
  old.delete(key.keyId);
  return signJson(
    {
      server_name: serverName,
      valid_until_ts: now + KEY_VALIDITY_MS,
      verify_keys: { [key.keyId]: { key: encodeUnpaddedBase64(key.publicKey) } },
      old_verify_keys: oldVerifyKeysJson(old),
    },
    serverName,
    key,
  );
}

interface KeyServices {
  config: { server_name: string };
  signingKey: SigningKey;
  now(): number;
  federation: { ownOldKeys: OwnOldKeys };
}

const ownResponse = async (services: KeyServices) =>
  serverKeysResponse(services.config.server_name, services.signingKey, services.now(), await services.federation.ownOldKeys.list());

const handler = (_: unknown, services: KeyServices) => ownResponse(services);

export const serverKeys = route({ method: "GET", path: "/_matrix/key/v2/server", auth: "none", handler });
/** The key-ID form is deprecated (the key ID is ignored) but older servers still request it. */
export const serverKeysById = route({ method: "GET", path: "/_matrix/key/v2/server/:keyId", auth: "none", handler });

// Notary: other servers' keys, as we fetched them, with our signature added.
// https://spec.matrix.org/latest/server-server-api/#querying-keys-through-another-server

const MAX_NOTARY_SERVERS = 100;

/** What is asked of one server: a minimum validity for its keys, and particular key IDs (each with its own minimum). */
interface NotaryCriteria {
  minimumValidUntilTs: number;
  keys: Map<string, number>;
}

async function notaryAnswer(
  services: KeyServices & { federation: { keys: ServerKeyStore } },
  criteria: Map<string, NotaryCriteria>,
): Promise<{ server_keys: unknown[] }> {
  const { server_name: us } = services.config;
  const answers = await Promise.all(
    [...criteria].map(async ([server, { minimumValidUntilTs, keys }]) => {
      if (server === us) return [await ownResponse(services)];
      if (!parseServerName(server)) return [];
      try {
        return await services.federation.keys.storedResponses(server, minimumValidUntilTs, keys);
      } catch {
        return [];
      }
    }),
  );
  return {
    server_keys: answers.flat().map((json) => signJson(json as object, us, services.signingKey)),
  };
}

const minimumValidUntil = z.coerce.number().int().nonnegative().optional();

export const notaryQueryOne = route({
  method: "GET",
  path: "/_matrix/key/v2/query/:serverName",
  auth: "none",
  query: z.object({ minimum_valid_until_ts: minimumValidUntil }),
  async handler({ params, query }, services) {
    const min = query.minimum_valid_until_ts ?? services.now();
    return notaryAnswer(services, new Map([[params.serverName as string, { minimumValidUntilTs: min, keys: new Map<string, number>() }]]));
  },
});

/** With a key ID (deprecated, still requested by older servers and sytest): that key's responses. */
export const notaryQueryOneById = route({
  ...notaryQueryOne,
  path: "/_matrix/key/v2/query/:serverName/:keyId",
  async handler({ params, query }, services) {
    const min = query.minimum_valid_until_ts ?? services.now();
    const keys = new Map([[params.keyId as string, min]]);
    return notaryAnswer(services, new Map([[params.serverName as string, { minimumValidUntilTs: min, keys }]]));
  },
});

export const notaryQuery = route({
  method: "POST",
  path: "/_matrix/key/v2/query",
  auth: "none",
  body: z.object({
    server_keys: z.record(z.string(), z.record(z.string(), z.object({ minimum_valid_until_ts: minimumValidUntil }).passthrough())),
  }),
  async handler({ body }, services) {
    const servers = Object.entries(body.server_keys);
    if (servers.length > MAX_NOTARY_SERVERS) {
      throw new MatrixError(400, "M_LIMIT_EXCEEDED", `At most ${MAX_NOTARY_SERVERS} servers per query`);
    }
    const criteria = new Map<string, NotaryCriteria>();
    for (const [server, keys] of servers) {
      // Each key ID asked for with its own minimum (valid now when it names none); no key IDs:
      // every key, a current one valid now.
      const wanted = new Map(Object.entries(keys).map(([keyId, k]) => [keyId, k.minimum_valid_until_ts ?? services.now()] as const));
      criteria.set(server, { minimumValidUntilTs: services.now(), keys: wanted });
    }
    return notaryAnswer(services, criteria);
  },
});
