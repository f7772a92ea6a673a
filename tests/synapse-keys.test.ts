// Server keys against the reference Synapse 1.67 on loopback: each side fetches and verifies the
// other's signing key over TLS. Skipped (with the reason printed) when Synapse is not set up here:
// see tests/synapse-harness.ts.
// https://spec.matrix.org/latest/server-server-api/#retrieving-server-keys
import { Agent, fetch } from "undici";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { decodeBase64, encodeUnpaddedBase64 } from "../federation/protocol/base64.ts";
import { verifyJsonSignature } from "../federation/protocol/signing.ts";
import { FederationHttpClient } from "../federation/transport/http-client.ts";
import { ServerKeyStore } from "../federation/transport/server-keys.ts";
import {
  type ParleyForSynapse,
  type RunningSynapse,
  type SynapseInstance,
  parleyFederationConfig,
  startParleyForSynapse,
  startSynapse,
  synapseInteropMissing,
  synapseSetup,
} from "./synapse-harness.ts";

const setup = synapseSetup();
const missing = await synapseInteropMissing(setup);
if (missing) console.warn(`synapse-keys tests skipped: ${missing}`);

interface KeyResponse {
  server_name: string;
  valid_until_ts: number;
  verify_keys: Record<string, { key: string }>;
  signatures: Record<string, Record<string, string>>;
}

describe.skipIf(missing !== undefined)("server keys with Synapse", () => {
  let synapse: RunningSynapse;
  let hs1: SynapseInstance;
  let parley: ParleyForSynapse;
  let http: FederationHttpClient;
  // Synapse's certificates are self-signed: read its own key server without checking them.
  const insecure = new Agent({ connect: { rejectUnauthorized: false } });

  const synapseKeys = async (instance: SynapseInstance) => {
    const res = await fetch(`${instance.federationUrl}/_matrix/key/v2/server`, { dispatcher: insecure });
    expect(res.status).toBe(200);
    return (await res.json()) as KeyResponse;
  };

  beforeAll(async () => {
    if (!setup.ready) return;
    synapse = await startSynapse(setup, [setup.instances[0]!.name]);
    hs1 = synapse.instances[0]!;
    parley = await startParleyForSynapse(synapse.instances);
    const { services } = parley;
    const pinned = parleyFederationConfig(synapse.instances).federation_hosts;
    http = new FederationHttpClient({
      serverName: parley.serverName,
      signingKey: services.signingKey,
      pinnedHosts: new Map(
        Object.entries(pinned).map(([name, address]) => {
          const [host, port] = address.split(":") as [string, string];
          return [name, { host, port: Number(port) }];
        }),
      ),
      insecure: new Set(synapse.instances.map((i) => i.serverName)),
      resolve: async (name) => {
        throw new Error(`${name} is not pinned: these tests reach only the local Synapse`);
      },
    });
  }, 240_000);

  afterAll(async () => {
    await http?.close();
    await parley?.destroy();
    await synapse?.release();
    await insecure.close();
  });

  it("Parley fetches Synapse's signing key and verifies it", async () => {
    const published = await synapseKeys(hs1);
    const [keyId, { key }] = Object.entries(published.verify_keys)[0]!;
    const store = new ServerKeyStore({
      db: parley.services.db,
      http,
      serverName: parley.serverName,
      signingKey: parley.services.signingKey,
      notaries: [],
      now: Date.now,
      logger: parley.services.logger,
    });
    const fetched = await store.verifyKey(hs1.serverName, keyId);
    expect(fetched && encodeUnpaddedBase64(fetched)).toBe(key);
    expect(await store.verifyKey(hs1.serverName, "ed25519:not_a_key_of_synapse")).toBeUndefined();
  });

  it("Synapse fetches Parley's signing key from Parley over TLS and serves it as a notary", async () => {
    const { signingKey } = parley.services;
    // Asking for the key by its ID: Synapse answers a query without key IDs from its cache alone,
    // and fetches from the origin on a cache miss only for named keys.
    const res = await fetch(`${hs1.federationUrl}/_matrix/key/v2/query`, {
      method: "POST",
      dispatcher: insecure,
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ server_keys: { [parley.serverName]: { [signingKey.keyId]: {} } } }),
    });
    expect(res.status).toBe(200);
    const { server_keys } = (await res.json()) as { server_keys: KeyResponse[] };
    const answer = server_keys.find((k) => k.server_name === parley.serverName);
    expect(answer, JSON.stringify(server_keys)).toBeDefined();
    expect(answer!.verify_keys[signingKey.keyId]?.key).toBe(encodeUnpaddedBase64(signingKey.publicKey));
    expect(answer!.valid_until_ts).toBeGreaterThan(Date.now());
    // Parley's own signature survived Synapse's storage untouched, and Synapse vouches for it with its own.
    expect(verifyJsonSignature(answer!, parley.serverName, signingKey.keyId, signingKey.publicKey)).toBe(true);
    const published = await synapseKeys(hs1);
    const [synapseKeyId, { key: synapseKey }] = Object.entries(published.verify_keys)[0]!;
    expect(verifyJsonSignature(answer!, hs1.serverName, synapseKeyId, decodeBase64(synapseKey))).toBe(true);
  });
});
