// Our SasVerification against matrix-js-sdk's Rust crypto (the verification Element runs), over a
// real Parley server: two devices of one user, the SDK's (cross-signing set up, syncing with
// startClient) and one of ours (signed device keys published, to-device messages read from /sync
// and sent with /sendToDevice). The SDK requests, we accept, the SDK starts SAS; both show the
// same emoji, both confirm, both finish. The SDK then signs our device with its self-signing key,
// and our cross-signing code trusts that signature through the master key the SAS verified. Then
// the same between two users (to-device), where each side's MAC covers its master key and each
// signs the other's master key with its user-signing key.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  CrossSigningIdentity,
  deviceTrust,
  type KeysQueryResponse,
  signaturesAfterVerification,
  uploadCrossSigningKeys,
  uploadSignatures,
  userTrust,
} from "../../client/crypto/cross-signing.ts";
import { cryptoReady, ed25519Generate, ed25519Sign, randomBytes, toBase64 } from "../../client/crypto/primitives.ts";
import { SasVerification } from "../../client/crypto/sas.ts";
import { signJson } from "../../client/crypto/signed-json.ts";
import { MatrixHttp } from "../../client/http.ts";
import { loginUser, passwordAuth, registerUser } from "../accounts-helpers.ts";
import { request, startTestServer, type TestServer } from "../harness.ts";
import { sdk } from "../matrix-sdk.ts";

const { CryptoEvent, VerificationPhase, VerifierEvent } = await import("matrix-js-sdk/lib/crypto-api/index.js");
type VerificationRequest = import("matrix-js-sdk/lib/crypto-api/index.js").VerificationRequest;
type Verifier = import("matrix-js-sdk/lib/crypto-api/index.js").Verifier;

const quiet = { trace() {}, debug() {}, info() {}, warn() {}, error() {}, getChild: () => quiet };
type Client = ReturnType<typeof sdk.createClient>;
const STEP_MS = 15_000;

let hs: TestServer;
const clients: Client[] = [];
beforeAll(async () => {
  await cryptoReady();
  hs = await startTestServer();
});
afterAll(async () => {
  for (const c of clients) c.stopClient();
  await hs?.destroy();
});

function within<T>(promise: Promise<T>, what: string, ms = STEP_MS): Promise<T> {
  let timer: NodeJS.Timeout;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

async function eventually<T>(what: string, check: () => Promise<T | undefined>, ms = STEP_MS): Promise<T> {
  const deadline = performance.now() + ms;
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    if (performance.now() > deadline) throw new Error(`timed out after ${ms} ms: ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * One user with two devices: the SDK's (cross-signing set up, syncing with startClient) and ours
 * (signed device keys, a /sync loop feeding `onToDevice`, `send` through /sendToDevice).
 */
async function twoDevices(name: string, opts: { otherUser?: boolean } = {}) {
  const user = await registerUser(hs.url, name);
  // Our device: a second device of the SDK's user, or the device of another user.
  let ours: { userId: string; token: string; deviceId: string };
  if (opts.otherUser) {
    const other = await registerUser(hs.url, `${name}peer`);
    ours = { userId: other.userId, token: other.accessToken, deviceId: other.deviceId };
  } else {
    const login = await loginUser(hs.url, user.userId, user.password);
    ours = { userId: user.userId, token: login.json.access_token as string, deviceId: login.json.device_id as string };
  }

  // Our device: signed device keys (the Curve25519 key is never used here).
  const key = ed25519Generate();
  const ourEd25519 = toBase64(key.publicKey);
  const deviceKeys = signJson(
    {
      user_id: ours.userId,
      device_id: ours.deviceId,
      algorithms: ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
      keys: { [`curve25519:${ours.deviceId}`]: toBase64(randomBytes(32)), [`ed25519:${ours.deviceId}`]: ourEd25519 },
    },
    ours.userId,
    `ed25519:${ours.deviceId}`,
    (m) => toBase64(ed25519Sign(key.privateKey, m)),
  );
  const api = (method: string, path: string, body?: unknown) => request(hs.url, method, `/_matrix/client/v3${path}`, { token: ours.token, body });
  expect((await api("POST", "/keys/upload", { device_keys: deviceKeys })).status).toBe(200);
  let since = (await api("GET", "/sync?timeout=0")).json.next_batch as string;
  // Another user publishes cross-signing keys of ours (so our MAC covers our master key too).
  let identity: CrossSigningIdentity | undefined;
  if (opts.otherUser) {
    identity = CrossSigningIdentity.generate(ours.userId);
    const http = new MatrixHttp({ baseUrl: hs.url, accessToken: ours.token });
    await uploadCrossSigningKeys(http, identity.deviceSigningUploadBody());
    await uploadSignatures(http, identity.signOwnDevice(deviceKeys));
  }

  // The SDK's device, with cross-signing set up (so its MAC covers the master key too).
  const client = sdk.createClient({ baseUrl: hs.url, accessToken: user.accessToken, userId: user.userId, deviceId: user.deviceId, logger: quiet as never });
  clients.push(client);
  await client.initRustCrypto({ useIndexedDB: false });
  const synced = new Promise<void>((resolve) => {
    client.on(sdk.ClientEvent.Sync, (state: string) => {
      if (state === "PREPARED" || state === "SYNCING") resolve();
    });
  });
  await client.startClient({ initialSyncLimit: 1 });
  await within(synced, "SDK first sync");
  const crypto = client.getCrypto()!;
  await within(
    crypto.bootstrapCrossSigning({ authUploadDeviceSigningKeys: async (makeRequest) => void (await makeRequest(passwordAuth(user) as never)) }),
    "SDK bootstraps cross-signing",
  );
  if (opts.otherUser) {
    // Another user's devices are tracked once a room is shared; the SDK is told directly here.
    const { UserId } = await import("@matrix-org/matrix-sdk-crypto-wasm");
    const internals = crypto as unknown as { olmMachine: { updateTrackedUsers(users: unknown[]): Promise<void> } };
    await internals.olmMachine.updateTrackedUsers([new UserId(ours.userId)]);
  }
  await eventually("the SDK knows our device", async () => ((await crypto.getUserDeviceInfo([ours.userId], true)).get(ours.userId)?.has(ours.deviceId) ? true : undefined));

  const query = async (): Promise<KeysQueryResponse> =>
    (await api("POST", "/keys/query", { device_keys: { [user.userId]: [], [ours.userId]: [] } })).json;
  const q = await query();
  const sdkEd25519 = (q.device_keys![user.userId]![user.deviceId]!.keys as Record<string, string>)[`ed25519:${user.deviceId}`]!;
  const masterKey = Object.values((q.master_keys![user.userId] as { keys: Record<string, string> }).keys)[0]!;

  let txn = 0;
  const send = async (type: string, content: Record<string, unknown>) => {
    const res = await api("PUT", `/sendToDevice/${encodeURIComponent(type)}/sas${++txn}`, { messages: { [user.userId]: { [user.deviceId]: content } } });
    expect(res.status, res.text).toBe(200);
  };
  const verificationWith = (transactionId?: string) =>
    new SasVerification({
      userId: ours.userId,
      deviceId: ours.deviceId,
      ed25519: ourEd25519,
      ...(identity ? { masterKey: identity.master!.publicKey } : {}),
      other: { userId: user.userId, deviceId: user.deviceId, ed25519: sdkEd25519, masterKey },
      ...(transactionId ? { transactionId } : {}),
      send,
    });

  let stopped = false;
  const seen: string[] = [];
  let onToDevice: (type: string, content: Record<string, unknown>) => Promise<void> = async () => {};
  const syncLoop = (async () => {
    while (!stopped) {
      const res = await api("GET", `/sync?timeout=300&since=${encodeURIComponent(since)}`);
      since = res.json.next_batch;
      for (const ev of (res.json.to_device?.events ?? []) as Array<{ type: string; sender: string; content: Record<string, unknown> }>) {
        if (!ev.type.startsWith("m.key.verification.") || ev.sender !== user.userId) continue;
        seen.push(ev.type.replace("m.key.verification.", ""));
        await onToDevice(ev.type, ev.content);
      }
    }
  })();
  return {
    user,
    ours,
    identity,
    sdkEd25519,
    client,
    crypto,
    query,
    masterKey,
    seen,
    verificationWith,
    setHandler(h: typeof onToDevice) {
      onToDevice = h;
    },
    async stop() {
      stopped = true;
      await syncLoop;
    },
  };
}

/** The SDK verifier's SAS as "emoji name" strings; it confirms them at once. */
function sdkConfirms(verifier: Verifier): Promise<string[]> {
  return new Promise<string[]>((resolve) => {
    verifier.on(VerifierEvent.ShowSas, (sas) => {
      resolve(sas.sas.emoji!.map(([emoji, name]) => `${emoji} ${name}`));
      void sas.confirm();
    });
  });
}

describe("SAS with matrix-js-sdk's Rust crypto", () => {
  it("the SDK requests and starts, we accept: same emoji, done on both sides, and the SDK's cross-signature of our device is then trusted", async () => {
    const t = await twoDevices("sasalice");
    const { user, ours, crypto, masterKey } = t;
    try {
      const sdkRequest = await within(crypto.requestDeviceVerification(ours.userId, ours.deviceId), "SDK sends a request");
      let verification: SasVerification | undefined;
      t.setHandler(async (type, content) => {
        if (type === "m.key.verification.request") {
          expect(SasVerification.isAcceptableRequest(content)).toBe(true);
          verification = t.verificationWith(content.transaction_id as string);
          await verification.handle(type, content);
          await verification.ready();
        } else await verification?.handle(type, content);
      });
      await eventually("the SDK sees our ready", async () => (sdkRequest.phase === VerificationPhase.Ready ? true : undefined));
      const verifier = await sdkRequest.startVerification("m.sas.v1");
      const shown = sdkConfirms(verifier);
      const sdkDone = verifier.verify();
      const sdkEmoji = await within(shown, "the SDK shows the SAS");
      const v = verification!;
      await within(v.keysExchanged, "our keys exchanged");
      expect(v.emojis()!.map((e) => `${e.emoji} ${e.description}`)).toEqual(sdkEmoji);
      await v.confirm();
      await within(sdkDone, "the SDK finishes");
      expect((await within(v.done, "we finish")).sort()).toEqual([`ed25519:${masterKey}`, `ed25519:${user.deviceId}`].sort());
      expect(t.seen).toEqual(["request", "start", "key", "mac", "done"]);

      // The SDK now trusts our device and cross-signs it with its self-signing key; we trust that
      // signature through the master key the SAS just verified.
      expect((await crypto.getDeviceVerificationStatus(user.userId, ours.deviceId))?.isVerified()).toBe(true);
      const trust = await eventually("the SDK's signature of our device", async () => {
        const r = deviceTrust(await t.query(), user.userId, ours.deviceId, { userId: user.userId, ownMasterKey: masterKey });
        return r.trusted ? r : undefined;
      });
      expect(trust).toEqual({ trusted: true, masterKey, via: "own" });
      expect(deviceTrust(await t.query(), user.userId, user.deviceId, { userId: user.userId, ownMasterKey: masterKey }).trusted).toBe(true);
    } finally {
      await t.stop();
    }
  });

  it("we request and start, the SDK accepts: our commitment check passes on its accept, done on both sides", async () => {
    const t = await twoDevices("sasbob");
    const { user, masterKey } = t;
    try {
      const received = new Promise<VerificationRequest>((resolve) => {
        t.client.on(CryptoEvent.VerificationRequestReceived, resolve);
      });
      const v = t.verificationWith();
      t.setHandler((type, content) => v.handle(type, content));
      await v.request();
      const sdkRequest = await within(received, "the SDK receives our request");
      await sdkRequest.accept();
      await eventually("we see the SDK's ready", async () => (v.state === "ready" ? true : undefined));
      await v.start();
      const verifier = await eventually("the SDK's verifier", async () => sdkRequest.verifier);
      const shown = sdkConfirms(verifier);
      const sdkDone = verifier.verify();
      const sdkEmoji = await within(shown, "the SDK shows the SAS");
      await within(v.keysExchanged, "our keys exchanged");
      expect(v.emojis()!.map((e) => `${e.emoji} ${e.description}`)).toEqual(sdkEmoji);
      await v.confirm();
      await within(sdkDone, "the SDK finishes");
      expect((await within(v.done, "we finish")).sort()).toEqual([`ed25519:${masterKey}`, `ed25519:${user.deviceId}`].sort());
      expect(t.seen).toEqual(["ready", "accept", "key", "mac", "done"]);
    } finally {
      await t.stop();
    }
  });

  it("two users over to-device: the SDK verifies our device and master key and cross-signs us; we sign the SDK user's master key and trust its device", async () => {
    const t = await twoDevices("sascarol", { otherUser: true });
    const { user, ours, crypto, masterKey, identity } = t;
    try {
      const sdkRequest = await within(crypto.requestDeviceVerification(ours.userId, ours.deviceId), "SDK sends a request");
      let verification: SasVerification | undefined;
      t.setHandler(async (type, content) => {
        if (type === "m.key.verification.request") {
          verification = t.verificationWith(content.transaction_id as string);
          await verification.handle(type, content);
          await verification.ready();
        } else await verification?.handle(type, content);
      });
      await eventually("the SDK sees our ready", async () => (sdkRequest.phase === VerificationPhase.Ready ? true : undefined));
      const verifier = await sdkRequest.startVerification("m.sas.v1");
      const shown = sdkConfirms(verifier);
      const sdkDone = verifier.verify();
      const sdkEmoji = await within(shown, "the SDK shows the SAS");
      const v = verification!;
      await within(v.keysExchanged, "our keys exchanged");
      expect(v.emojis()!.map((e) => `${e.emoji} ${e.description}`)).toEqual(sdkEmoji);
      await v.confirm();
      await within(sdkDone, "the SDK finishes");
      const verified = await within(v.done, "we finish");
      expect(verified.sort()).toEqual([`ed25519:${masterKey}`, `ed25519:${user.deviceId}`].sort());

      // The SDK took our MAC of our master key: it signed our master key with its user-signing key,
      // which its user's /keys/query shows and our trust code accepts from its point of view.
      const sdkView = async (): Promise<KeysQueryResponse> =>
        (await request(hs.url, "POST", "/_matrix/client/v3/keys/query", { token: user.accessToken, body: { device_keys: { [ours.userId]: [], [user.userId]: [] } } })).json;
      const sdkTrust = await eventually("the SDK's user-signing signature of our master key", async () => {
        const r = userTrust(await sdkView(), ours.userId, { userId: user.userId, ownMasterKey: masterKey });
        return r.trusted ? r : undefined;
      });
      expect(sdkTrust).toEqual({ trusted: true, masterKey: identity!.master!.publicKey, via: "user_signing" });
      expect((await crypto.getDeviceVerificationStatus(ours.userId, ours.deviceId))?.isVerified()).toBe(true);

      // We sign the SDK user's master key with our user-signing key and trust its device through it.
      const q = await t.query();
      const peer = { userId: user.userId, deviceId: user.deviceId, ed25519: t.sdkEd25519, masterKey };
      await uploadSignatures(new MatrixHttp({ baseUrl: hs.url, accessToken: ours.token }), signaturesAfterVerification(identity!, peer, verified, q));
      const ctx = { userId: ours.userId, ownMasterKey: identity!.master!.publicKey };
      expect(deviceTrust(await t.query(), user.userId, user.deviceId, ctx)).toEqual({ trusted: true, masterKey, via: "user_signing" });
    } finally {
      await t.stop();
    }
  });
});
