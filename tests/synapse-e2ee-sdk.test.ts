// matrix-js-sdk with Rust crypto, one client on Parley and one on the reference Synapse 1.67 on
// loopback: each downloads the other's device and cross-signing keys through its own server (which
// asks the other), checks their signatures, and Olm-encrypted to-device messages cross both ways
// (a one-time key claimed over federation, the message as an m.direct_to_device EDU) and are
// decrypted. Skipped (with the reason printed) when Synapse is not set up here: see
// tests/synapse-harness.ts. Encrypted rooms across servers come with the rooms-across-servers issue.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { passwordAuth, registerUser, type TestUser } from "./accounts-helpers.ts";
import { sdk } from "./matrix-sdk.ts";
import {
  type ParleyForSynapse,
  type RunningSynapse,
  registerSynapseUser,
  startParleyForSynapse,
  startSynapse,
  synapseInteropMissing,
  synapseSetup,
} from "./synapse-harness.ts";

const setup = synapseSetup();
const missing = await synapseInteropMissing(setup);
if (missing) console.warn(`synapse-e2ee-sdk tests skipped: ${missing}`);

const RustSdkCryptoJs = await import("@matrix-org/matrix-sdk-crypto-wasm");

const quiet = { trace() {}, debug() {}, info() {}, warn() {}, error() {}, getChild: () => quiet };
type Client = ReturnType<typeof sdk.createClient>;
const STEP_MS = 30_000;

function within<T>(promise: Promise<T>, what: string, ms = STEP_MS): Promise<T> {
  let timer: NodeJS.Timeout;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

describe.skipIf(missing !== undefined)("matrix-js-sdk Rust crypto across Parley and Synapse", () => {
  let synapse: RunningSynapse;
  let parley: ParleyForSynapse;
  const clients: Client[] = [];

  beforeAll(async () => {
    if (!setup.ready) return;
    synapse = await startSynapse(setup, [setup.instances[0]!.name]);
    parley = await startParleyForSynapse(synapse.instances);
  }, 240_000);

  afterAll(async () => {
    for (const c of clients) c.stopClient();
    await parley?.destroy();
    await synapse?.release();
  });

  async function cryptoClient(base: string, user: TestUser): Promise<Client> {
    const client = sdk.createClient({ baseUrl: base, accessToken: user.accessToken, userId: user.userId, deviceId: user.deviceId, logger: quiet as never });
    clients.push(client);
    await client.initRustCrypto({ useIndexedDB: false });
    const ready = new Promise<void>((resolve, reject) => {
      const onSync = (state: string) => {
        if (state === "PREPARED" || state === "SYNCING") {
          client.off(sdk.ClientEvent.Sync, onSync);
          resolve();
        } else if (state === "ERROR") reject(new Error(`${user.userId}: sync failed`));
      };
      client.on(sdk.ClientEvent.Sync, onSync);
    });
    await client.startClient({ initialSyncLimit: 5 });
    await within(ready, `${user.userId}: first sync`);
    // Synapse 1.67 asks for the password even for the first upload of cross-signing keys.
    await within(
      client.getCrypto()!.bootstrapCrossSigning({ authUploadDeviceSigningKeys: async (makeRequest) => void (await makeRequest(passwordAuth(user) as never)) }),
      `${user.userId} bootstraps cross-signing`,
    );
    return client;
  }

  function toDevice(client: Client, type: string) {
    return new Promise<{ content: Record<string, unknown>; sender: string; encrypted: boolean }>((resolve) => {
      client.on(sdk.ClientEvent.ToDeviceEvent, (event) => {
        if (event.getType() === type) resolve({ content: event.getContent(), sender: event.getSender()!, encrypted: event.isEncrypted() });
      });
    });
  }

  it("each client verifies the other's device keys and cross-signing, and Olm to-device messages cross both ways", async () => {
    const hs1 = synapse.instances[0]!;
    const patUser = await registerUser(parley.url, "pat");
    const samUser = await registerSynapseUser(hs1, "sam");
    const pat = await cryptoClient(parley.url, patUser);
    const sam = await cryptoClient(hs1.clientUrl, samUser);

    for (const [client, other, who] of [
      [pat, samUser, "pat (Parley) checks sam's keys"],
      [sam, patUser, "sam (Synapse) checks pat's keys"],
    ] as const) {
      const crypto = client.getCrypto()!;
      // They share no room, so the OlmMachine is told to track the other user, as a shared room
      // would make it; it then queries their keys through its own server, which asks the other.
      const internals = crypto as unknown as {
        olmMachine: { updateTrackedUsers(users: unknown[]): Promise<void> };
        outgoingRequestsManager: { doProcessOutgoingRequests(): Promise<void> };
      };
      await internals.olmMachine.updateTrackedUsers([new RustSdkCryptoJs.UserId(other.userId)]);
      await within(internals.outgoingRequestsManager.doProcessOutgoingRequests(), who);
      const devices = await crypto.getUserDeviceInfo([other.userId]);
      expect(devices.get(other.userId)?.get(other.deviceId), who).toBeDefined();
      expect(await crypto.userHasCrossSigningKeys(other.userId), who).toBe(true);
      // Signed by its owner's self-signing key, which the master key signs: Rust crypto checked both.
      const status = await crypto.getDeviceVerificationStatus(other.userId, other.deviceId);
      expect(status?.signedByOwner, who).toBe(true);
    }

    // Parley → Synapse: pat claims one of sam's one-time keys over federation and encrypts for it.
    const atSam = toDevice(sam, "org.parley.test");
    await within(
      pat.encryptAndSendToDevice("org.parley.test", [{ userId: samUser.userId, deviceId: samUser.deviceId }], { secret: "to synapse" }),
      "pat sends an encrypted to-device message",
    );
    expect(await within(atSam, "sam decrypts pat's message")).toEqual({ content: { secret: "to synapse" }, sender: patUser.userId, encrypted: true });

    // Synapse → Parley, a new Olm session the other way.
    const atPat = toDevice(pat, "org.parley.test");
    await within(
      sam.encryptAndSendToDevice("org.parley.test", [{ userId: patUser.userId, deviceId: patUser.deviceId }], { secret: "to parley" }),
      "sam sends an encrypted to-device message",
    );
    expect(await within(atPat, "pat decrypts sam's message")).toEqual({ content: { secret: "to parley" }, sender: samUser.userId, encrypted: true });
  }, 180_000);
});
