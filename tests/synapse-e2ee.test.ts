// End-to-end encryption across servers against the reference Synapse 1.67 on loopback: a user on
// Parley and a user on Synapse, each with a device that uploaded device keys, signed_curve25519
// one-time keys and cross-signing keys, query and claim each other's keys and send each other
// to-device messages, both ways. Skipped (with the reason printed) when Synapse is not set up here:
// see tests/synapse-harness.ts.
// https://spec.matrix.org/latest/server-server-api/#end-to-end-encryption
// https://spec.matrix.org/latest/server-server-api/#send-to-device-messaging
// https://spec.matrix.org/latest/server-server-api/#device-management
//
// Device lists, first without a shared room: neither server caches the device list of a remote
// user it shares no room with. Synapse 1.67 asks the user's server on every query
// (handlers/e2e_keys.py: only users "tracked" through a shared room are served from its cache) and
// drops an `m.device_list_update` for a user it shares no room with ("Got device list update edu
// for …, but don't share a room"); Parley asks on every query too, and keeps remote device lists
// only from updates and `/user/devices` resyncs. So each side's `/keys/query` sees the other's new
// device at once. Then in a shared room (room version 10): Synapse fetches Parley's user's list once
// (`/user/devices`) and from then on answers key queries from its cache, which Parley's
// `m.device_list_update` EDUs keep current (its log says "requiring resync: False": our `prev_id`
// chain follows); the clients on both sides see the other user in `device_lists.changed` for a new
// device and for a deleted one.
import { readFile } from "node:fs/promises";
import { and, eq } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { verifyJsonSignature } from "../federation/protocol/signing.ts";
import { schema } from "../schema/db.ts";
import { registerUser, type TestUser } from "./accounts-helpers.ts";
import { type CrossSigningIdentity, type DeviceIdentity, type Json, crossSigningIdentity, deviceIdentity, fallbackKey, oneTimeKeys, sign } from "./e2ee-helpers.ts";
import { request } from "./harness.ts";
import {
  type ParleyForSynapse,
  type RunningSynapse,
  type SynapseInstance,
  registerSynapseUser,
  startParleyForSynapse,
  startSynapse,
  synapseInteropMissing,
  synapseSetup,
} from "./synapse-harness.ts";
import { createRoom, sync } from "./sync-helpers.ts";

const setup = synapseSetup();
const missing = await synapseInteropMissing(setup);
if (missing) console.warn(`synapse-e2ee tests skipped: ${missing}`);

/** A user with a device that uploaded its keys, and the server it lives on. */
interface KeyedUser extends TestUser {
  base: string;
  device: DeviceIdentity;
  crossSigning: CrossSigningIdentity;
  oneTimeKeyIds: string[];
  /** Where this device's last /sync ended: each sync goes on from there, so nothing seen before comes back unnoticed. */
  since?: string;
}

let txn = 0;
const call = (user: { base: string; accessToken: string }, method: string, path: string, body?: unknown) =>
  request(user.base, method, `/_matrix/client/v3${path}`, { token: user.accessToken, ...(body === undefined ? {} : { body }) });

/** A request behind user-interactive auth: asked once for a session, then again with the password. */
async function withPassword(user: TestUser & { base: string }, method: string, path: string, body: Json) {
  const first = await call(user, method, path, body);
  if (first.status !== 401) return first;
  const auth = { type: "m.login.password", identifier: { type: "m.id.user", user: user.userId }, password: user.password, session: first.json.session };
  return call(user, method, path, { ...body, auth });
}

/** Uploads device keys, `count` one-time keys and cross-signing keys, and signs the device with the self-signing key. */
async function uploadKeys(user: TestUser, base: string, prefix: string, count = 3): Promise<KeyedUser> {
  const device = deviceIdentity(user);
  const crossSigning = crossSigningIdentity(user.userId);
  const otks = oneTimeKeys(user, device, count, prefix);
  const keyed: KeyedUser = { ...user, base, device, crossSigning, oneTimeKeyIds: Object.keys(otks) };
  const uploaded = await call(keyed, "POST", "/keys/upload", { device_keys: device.deviceKeys, one_time_keys: otks });
  expect(uploaded.status, uploaded.text).toBe(200);
  expect(uploaded.json.one_time_key_counts).toMatchObject({ signed_curve25519: count });
  const cs = await withPassword(keyed, "POST", "/keys/device_signing/upload", crossSigning.body);
  expect(cs.status, cs.text).toBe(200);
  const signedDevice = sign(device.deviceKeys, user.userId, crossSigning.selfSigning);
  const sig = await call(keyed, "POST", "/keys/signatures/upload", { [user.userId]: { [user.deviceId]: signedDevice } });
  expect(sig.status, sig.text).toBe(200);
  expect(sig.json.failures ?? {}).toEqual({});
  return keyed;
}

/** Checks a `/keys/query` answer about `user`: their device's keys and signatures, their master and self-signing keys. */
function expectKeysOf(answer: Json, user: KeyedUser) {
  expect(answer.failures ?? {}).toEqual({});
  const device = answer.device_keys?.[user.userId]?.[user.deviceId];
  expect(device, JSON.stringify(answer)).toBeDefined();
  expect(device).toMatchObject({ user_id: user.userId, device_id: user.deviceId, keys: user.device.deviceKeys.keys, algorithms: user.device.deviceKeys.algorithms });
  // Signed by the device itself, and by its user's self-signing key.
  expect(verifyJsonSignature(device, user.userId, `ed25519:${user.deviceId}`, user.device.key.publicKey)).toBe(true);
  const ssk = user.crossSigning.selfSigning;
  expect(verifyJsonSignature(device, user.userId, `ed25519:${ssk.publicKeyBase64}`, ssk.publicKey)).toBe(true);

  const master = answer.master_keys?.[user.userId];
  expect(master).toMatchObject({ user_id: user.userId, usage: ["master"], keys: user.crossSigning.body.master_key.keys });
  const selfSigning = answer.self_signing_keys?.[user.userId];
  expect(selfSigning).toMatchObject({ user_id: user.userId, usage: ["self_signing"], keys: user.crossSigning.body.self_signing_key.keys });
  const mk = user.crossSigning.master;
  expect(verifyJsonSignature(selfSigning, user.userId, `ed25519:${mk.publicKeyBase64}`, mk.publicKey)).toBe(true);
  // The user-signing key is its owner's alone.
  expect(answer.user_signing_keys?.[user.userId]).toBeUndefined();
}

/** Claims one signed_curve25519 key of `target`'s device for `from`: the key's ID and body, or undefined when none is left. */
async function claimOne(from: KeyedUser, target: KeyedUser): Promise<[string, Json] | undefined> {
  const res = await call(from, "POST", "/keys/claim", { one_time_keys: { [target.userId]: { [target.deviceId]: "signed_curve25519" } } });
  expect(res.status, res.text).toBe(200);
  expect(res.json.failures ?? {}).toEqual({});
  const keys = Object.entries(res.json.one_time_keys?.[target.userId]?.[target.deviceId] ?? {}) as Array<[string, Json]>;
  expect(keys.length).toBeLessThanOrEqual(1);
  return keys[0];
}

/** Syncs until `count` to-device events of `type` arrived (or 15 s passed); then once more, to see that nothing comes again. */
async function toDeviceOnce(user: KeyedUser, type: string, count: number) {
  const got: Json[] = [];
  const deadline = Date.now() + 15_000;
  while (got.length < count && Date.now() < deadline) {
    const res = await sync(user.base, user, { ...(user.since ? { since: user.since } : {}), timeout: 1_000 });
    got.push(...(res.to_device?.events ?? []).filter((e: Json) => e.type === type));
    user.since = res.next_batch;
  }
  // The messages seen are acknowledged by syncing past them; they must not come again.
  const again = await sync(user.base, user, { since: user.since!, timeout: 1_500 });
  const repeated = (again.to_device?.events ?? []).filter((e: Json) => e.type === type);
  user.since = again.next_batch;
  return { events: got, repeated };
}

/** Logs `user` in again on its server: another device, with keys uploaded. */
async function secondDevice(user: KeyedUser, name = "second"): Promise<KeyedUser> {
  const login = await request(user.base, "POST", "/_matrix/client/v3/login", {
    body: { type: "m.login.password", identifier: { type: "m.id.user", user: user.userId }, password: user.password, initial_device_display_name: name },
  });
  expect(login.status, login.text).toBe(200);
  const second: TestUser = { userId: user.userId, accessToken: login.json.access_token, deviceId: login.json.device_id, password: user.password };
  const device = deviceIdentity(second);
  const keyed: KeyedUser = { ...second, base: user.base, device, crossSigning: user.crossSigning, oneTimeKeyIds: [] };
  const res = await call(keyed, "POST", "/keys/upload", { device_keys: device.deviceKeys });
  expect(res.status, res.text).toBe(200);
  return keyed;
}

/** Syncs `user` on from where its last sync ended until `userId` is in `device_lists.changed`. */
async function untilChanged(user: KeyedUser, userId: string, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms;
  for (;;) {
    const res = await sync(user.base, user, { ...(user.since ? { since: user.since } : {}), timeout: 1_000 });
    user.since = res.next_batch;
    if (res.device_lists?.changed?.includes(userId)) return;
    if (Date.now() > deadline) throw new Error(`timed out: ${user.userId} waiting for ${userId} in device_lists.changed`);
  }
}

/**
 * As a client does: on each announcement of `userId` in `device_lists.changed`, query their
 * devices, until the answer is what `seen` waits for. Synapse may announce one change in several
 * updates (the master and self-signing keys separately, a login and then a key upload), so an
 * earlier update's announcement can come first.
 */
async function announcedUntil(asker: KeyedUser, userId: string, seen: (deviceIds: string[]) => boolean, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms;
  for (;;) {
    await untilChanged(asker, userId, Math.max(1_000, deadline - Date.now()));
    if (seen(await deviceIdsOf(asker, userId))) return;
    if (Date.now() > deadline) throw new Error(`timed out: no announcement of ${userId} after which the devices are as expected`);
  }
}

const deviceIdsOf = async (asker: KeyedUser, userId: string) => {
  const res = await call(asker, "POST", "/keys/query", { device_keys: { [userId]: [] } });
  expect(res.status, res.text).toBe(200);
  expect(res.json.failures ?? {}).toEqual({});
  return Object.keys(res.json.device_keys?.[userId] ?? {}).sort();
};

async function waitFor<T>(what: string, check: () => Promise<T | undefined | false>, ms = 15_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out: ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

describe.skipIf(missing !== undefined)("end-to-end encryption with Synapse", () => {
  let synapse: RunningSynapse;
  let hs1: SynapseInstance;
  let parley: ParleyForSynapse;
  let sam: KeyedUser; // on Synapse
  let pat: KeyedUser; // on Parley

  beforeAll(async () => {
    if (!setup.ready) return;
    synapse = await startSynapse(setup, [setup.instances[0]!.name]);
    hs1 = synapse.instances[0]!;
    parley = await startParleyForSynapse(synapse.instances);
    sam = await uploadKeys(await registerSynapseUser(hs1, "sam"), hs1.clientUrl, "SAM");
    pat = await uploadKeys(await registerUser(parley.url, "pat"), parley.url, "PAT");
  }, 240_000);

  afterAll(async () => {
    await parley?.destroy();
    await synapse?.release();
  });

  describe("/keys/query", () => {
    it("a Parley client gets a Synapse user's device keys, signatures and cross-signing keys", async () => {
      const res = await call(pat, "POST", "/keys/query", { device_keys: { [sam.userId]: [] } });
      expect(res.status, res.text).toBe(200);
      expectKeysOf(res.json, sam);
      // Asking for the device by ID gives the same.
      const one = await call(pat, "POST", "/keys/query", { device_keys: { [sam.userId]: [sam.deviceId] } });
      expect(Object.keys(one.json.device_keys[sam.userId])).toEqual([sam.deviceId]);
    });

    it("a Synapse client gets a Parley user's device keys, signatures and cross-signing keys", async () => {
      const res = await call(sam, "POST", "/keys/query", { device_keys: { [pat.userId]: [] } });
      expect(res.status, res.text).toBe(200);
      expectKeysOf(res.json, pat);
      const one = await call(sam, "POST", "/keys/query", { device_keys: { [pat.userId]: [pat.deviceId] } });
      expect(Object.keys(one.json.device_keys[pat.userId])).toEqual([pat.deviceId]);
    });
  });

  describe("/keys/claim", () => {
    it("a Parley client claims a Synapse user's one-time keys, each once", async () => {
      const first = await claimOne(pat, sam);
      const second = await claimOne(pat, sam);
      expect(first && second).toBeTruthy();
      expect(sam.oneTimeKeyIds).toContain(first![0]);
      expect(sam.oneTimeKeyIds).toContain(second![0]);
      expect(second![0]).not.toBe(first![0]);
      // The key is the one the device signed.
      expect(verifyJsonSignature(first![1], sam.userId, `ed25519:${sam.deviceId}`, sam.device.key.publicKey)).toBe(true);
      // Synapse counts what is left.
      const counts = await call(sam, "POST", "/keys/upload", {});
      expect(counts.json.one_time_key_counts).toMatchObject({ signed_curve25519: sam.oneTimeKeyIds.length - 2 });
    });

    it("a Synapse client claims a Parley user's one-time keys, each once, until none is left", async () => {
      const claimed = new Set<string>();
      for (let i = 0; i < pat.oneTimeKeyIds.length; i++) {
        const got = await claimOne(sam, pat);
        expect(got).toBeDefined();
        expect(verifyJsonSignature(got![1], pat.userId, `ed25519:${pat.deviceId}`, pat.device.key.publicKey)).toBe(true);
        claimed.add(got![0]);
      }
      expect([...claimed].sort()).toEqual([...pat.oneTimeKeyIds].sort());
      expect(await claimOne(sam, pat)).toBeUndefined();
      const counts = await call(pat, "POST", "/keys/upload", {});
      expect(counts.json.one_time_key_counts?.signed_curve25519 ?? 0).toBe(0);
    });

    it("once the one-time keys are gone, each side hands out the other's fallback key, again and again", async () => {
      // pat's one-time keys are used up (above); sam's are used up here.
      while (await claimOne(pat, sam));
      for (const [claimer, owner] of [
        [sam, pat],
        [pat, sam],
      ] as const) {
        const fallback = fallbackKey(owner, owner.device, `FB${owner === pat ? "PAT" : "SAM"}`);
        const uploaded = await call(owner, "POST", "/keys/upload", { fallback_keys: fallback });
        expect(uploaded.status, uploaded.text).toBe(200);
        const [keyId] = Object.keys(fallback);
        for (let i = 0; i < 2; i++) {
          const got = await claimOne(claimer, owner);
          expect(got?.[0], `${claimer.userId} claims ${owner.userId}'s fallback key`).toBe(keyId);
          expect(got![1]).toMatchObject({ fallback: true });
          expect(verifyJsonSignature(got![1], owner.userId, `ed25519:${owner.deviceId}`, owner.device.key.publicKey)).toBe(true);
        }
      }
    });
  });

  describe("to-device messages", () => {
    it("from Parley arrive in the Synapse device's /sync exactly once", async () => {
      const messages = { [sam.userId]: { [sam.deviceId]: { from: "pat", n: 1 } } };
      const res = await call(pat, "PUT", `/sendToDevice/m.test.from_parley/t${++txn}`, { messages });
      expect(res.status, res.text).toBe(200);
      const { events, repeated } = await toDeviceOnce(sam, "m.test.from_parley", 1);
      expect(events).toEqual([{ sender: pat.userId, type: "m.test.from_parley", content: { from: "pat", n: 1 } }]);
      expect(repeated).toEqual([]);
    });

    it("from Synapse arrive in the Parley device's /sync exactly once", async () => {
      const messages = { [pat.userId]: { [pat.deviceId]: { from: "sam", n: 2 } } };
      const res = await call(sam, "PUT", `/sendToDevice/m.test.from_synapse/t${++txn}`, { messages });
      expect(res.status, res.text).toBe(200);
      const { events, repeated } = await toDeviceOnce(pat, "m.test.from_synapse", 1);
      expect(events).toEqual([{ sender: sam.userId, type: "m.test.from_synapse", content: { from: "sam", n: 2 } }]);
      expect(repeated).toEqual([]);
    });

    it("several, and to every device (`*`), arrive once each, in order, both ways", async () => {
      for (let n = 0; n < 3; n++) {
        expect((await call(pat, "PUT", `/sendToDevice/m.test.many/p${++txn}`, { messages: { [sam.userId]: { "*": { n } } } })).status).toBe(200);
        expect((await call(sam, "PUT", `/sendToDevice/m.test.many/s${++txn}`, { messages: { [pat.userId]: { "*": { n } } } })).status).toBe(200);
      }
      const atSynapse = await toDeviceOnce(sam, "m.test.many", 3);
      expect(atSynapse.events.map((e) => [e.sender, e.content.n])).toEqual([0, 1, 2].map((n) => [pat.userId, n]));
      expect(atSynapse.repeated).toEqual([]);
      const atParley = await toDeviceOnce(pat, "m.test.many", 3);
      expect(atParley.events.map((e) => [e.sender, e.content.n])).toEqual([0, 1, 2].map((n) => [sam.userId, n]));
      expect(atParley.repeated).toEqual([]);
    });

    it("a client's retry of the same transaction is delivered once", async () => {
      const path = `/sendToDevice/m.test.retry/r${++txn}`;
      const body = { messages: { [sam.userId]: { [sam.deviceId]: { once: true } } } };
      expect((await call(pat, "PUT", path, body)).status).toBe(200);
      expect((await call(pat, "PUT", path, body)).status).toBe(200);
      const { events, repeated } = await toDeviceOnce(sam, "m.test.retry", 1);
      expect(events).toHaveLength(1);
      expect(repeated).toEqual([]);
    });
  });

  describe("new devices", () => {
    it("a new Synapse device shows in a Parley client's /keys/query", async () => {
      const before = await call(pat, "POST", "/keys/query", { device_keys: { [sam.userId]: [] } });
      expect(Object.keys(before.json.device_keys[sam.userId])).toEqual([sam.deviceId]);
      const sam2 = await secondDevice(sam);
      const after = await call(pat, "POST", "/keys/query", { device_keys: { [sam.userId]: [] } });
      expect(Object.keys(after.json.device_keys[sam.userId]).sort()).toEqual([sam.deviceId, sam2.deviceId].sort());
      expect(after.json.device_keys[sam.userId][sam2.deviceId]).toMatchObject({ keys: sam2.device.deviceKeys.keys, unsigned: { device_display_name: "second" } });
    });

    it("a new Parley device shows in a Synapse client's /keys/query", async () => {
      const before = await call(sam, "POST", "/keys/query", { device_keys: { [pat.userId]: [] } });
      expect(Object.keys(before.json.device_keys[pat.userId])).toEqual([pat.deviceId]);
      const pat2 = await secondDevice(pat);
      const after = await call(sam, "POST", "/keys/query", { device_keys: { [pat.userId]: [] } });
      expect(Object.keys(after.json.device_keys[pat.userId]).sort()).toEqual([pat.deviceId, pat2.deviceId].sort());
      expect(after.json.device_keys[pat.userId][pat2.deviceId]).toMatchObject({ keys: pat2.device.deviceKeys.keys, unsigned: { device_display_name: "second" } });
    });

    it("Parley fetches a Synapse user's whole device list (/user/devices) when an update does not follow what it holds", async () => {
      // An update Parley cannot apply alone (it never held sam's list): it resyncs from Synapse.
      const handler = parley.services.federation.edus.get("m.device_list_update")!;
      await handler(hs1.serverName, { user_id: sam.userId, device_id: "SOMEDEVICE", stream_id: 1_000_000, prev_id: [999_999] });
      const d = schema.remoteDevices;
      const rows = await waitFor("Parley holds sam's device list", async () => {
        const got = await parley.services.db.select().from(d).where(eq(d.userId, sam.userId));
        return got.length >= 2 && got;
      });
      const mine = rows.find((r) => r.deviceId === sam.deviceId)!;
      expect(JSON.parse(mine.keysJson!)).toMatchObject({ keys: sam.device.deviceKeys.keys });
      const [head] = await parley.services.db.select().from(schema.remoteDeviceListHeads).where(eq(schema.remoteDeviceListHeads.userId, sam.userId));
      expect(head).toMatchObject({ stale: false });
      const cs = await parley.services.db.select().from(schema.remoteCrossSigningKeys).where(eq(schema.remoteCrossSigningKeys.userId, sam.userId));
      expect(cs.map((r) => r.usage).sort()).toEqual(["master", "self_signing"]);
    });

    it("Synapse takes Parley's device-list update EDUs (and drops them: it shares no room with the user)", async () => {
      // Parley sends a user's updates to the servers of the users sharing a room with them: sam's
      // membership is written into a Parley room's current state (what a federated join will leave).
      const roomId = await createRoom(parley.url, pat);
      await parley.services.db
        .insert(schema.currentState)
        .values({ roomId, type: "m.room.member", stateKey: sam.userId, eventId: `$injected-${sam.userId}`, membership: "join" });
      const pat3 = await secondDevice(pat);
      await waitFor("Synapse's log shows the update", async () => {
        const log = await readFile(hs1.logPath, "utf8");
        return log.includes(`Got device list update edu for '${pat.userId}'/'${pat3.deviceId}', but don't share a room`);
      });
    });
  });

  // Once they share a room, Synapse tracks pat's device list: it answers key queries from its
  // cache, which only Parley's m.device_list_update EDUs keep current; each side's clients see the
  // other user in device_lists.changed.
  describe("in a shared room", () => {
    beforeAll(async () => {
      const created = await call(sam, "POST", "/createRoom", { preset: "public_chat", room_version: "10" });
      expect(created.status, created.text).toBe(200);
      const roomId = created.json.room_id as string;
      const joined = await call(pat, "POST", `/join/${encodeURIComponent(roomId)}?via=${encodeURIComponent(hs1.serverName)}`, {});
      expect(joined.status, joined.text).toBe(200);
      // Each sees the other join (the change that makes clients track the other's devices).
      await untilChanged(sam, pat.userId);
      await untilChanged(pat, sam.userId);
    }, 60_000);

    it("a new Parley device reaches Synapse's cache and its client's device_lists.changed; so does its deletion", async () => {
      // Synapse now tracks pat: this query fills its cache (/user/devices), the next ones read it.
      const before = await deviceIdsOf(sam, pat.userId);
      const pat4 = await secondDevice(pat, "fourth");
      await untilChanged(sam, pat.userId);
      await waitFor("Synapse's cache holds pat's new device", async () => (await deviceIdsOf(sam, pat.userId)).includes(pat4.deviceId));
      // Synapse applied the update as it came: its prev_id followed what Synapse held (no resync).
      const escaped = pat.userId.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
      expect(await readFile(hs1.logPath, "utf8")).toMatch(new RegExp(`update for ${escaped}, requiring resync: False\\. Devices: [^\\n]*${pat4.deviceId}`));
      const keys = await call(sam, "POST", "/keys/query", { device_keys: { [pat.userId]: [pat4.deviceId] } });
      expect(keys.json.device_keys[pat.userId][pat4.deviceId]).toMatchObject({ keys: pat4.device.deviceKeys.keys });
      expect(verifyJsonSignature(keys.json.device_keys[pat.userId][pat4.deviceId], pat.userId, `ed25519:${pat4.deviceId}`, pat4.device.key.publicKey)).toBe(true);

      const deleted = await withPassword(pat, "DELETE", `/devices/${encodeURIComponent(pat4.deviceId)}`, {});
      expect(deleted.status, deleted.text).toBe(200);
      await untilChanged(sam, pat.userId);
      await waitFor("Synapse's cache forgets pat's deleted device", async () => !(await deviceIdsOf(sam, pat.userId)).includes(pat4.deviceId));
      expect(await deviceIdsOf(sam, pat.userId)).toEqual(before);
    }, 60_000);

    it("Parley's new cross-signing keys and signatures reach Synapse's cache (m.signing_key_update, m.device_list_update)", async () => {
      const replacement = crossSigningIdentity(pat.userId);
      const uploaded = await withPassword(pat, "POST", "/keys/device_signing/upload", replacement.body);
      expect(uploaded.status, uploaded.text).toBe(200);
      await untilChanged(sam, pat.userId);
      const masterOf = async () => (await call(sam, "POST", "/keys/query", { device_keys: { [pat.userId]: [] } })).json;
      await waitFor("Synapse's cache holds pat's new master key", async () => {
        const answer = await masterOf();
        return JSON.stringify(answer.master_keys?.[pat.userId]?.keys) === JSON.stringify(replacement.body.master_key.keys) && answer;
      });
      const answer = await masterOf();
      expect(answer.self_signing_keys[pat.userId]).toMatchObject({ keys: replacement.body.self_signing_key.keys });

      // pat signs the device with the new self-signing key: Synapse's copy of the device gets the signature.
      const signed = sign(pat.device.deviceKeys, pat.userId, replacement.selfSigning);
      const sig = await call(pat, "POST", "/keys/signatures/upload", { [pat.userId]: { [pat.deviceId]: signed } });
      expect(sig.json.failures ?? {}).toEqual({});
      const ssk = replacement.selfSigning;
      await waitFor("Synapse's cache holds the device's new signature", async () => {
        const device = (await masterOf()).device_keys?.[pat.userId]?.[pat.deviceId];
        return device && verifyJsonSignature(device, pat.userId, `ed25519:${ssk.publicKeyBase64}`, ssk.publicKey);
      });
      pat.crossSigning = replacement;
    }, 60_000);

    it("Synapse's new cross-signing keys reach Parley's client (device_lists.changed) and key queries", async () => {
      const replacement = crossSigningIdentity(sam.userId);
      const uploaded = await withPassword(sam, "POST", "/keys/device_signing/upload", replacement.body);
      expect(uploaded.status, uploaded.text).toBe(200);
      await untilChanged(pat, sam.userId);
      const t = schema.remoteCrossSigningKeys;
      // Synapse 1.67 may send the master and the self-signing key in separate m.signing_key_update
      // EDUs (one per device-list poke), each announced to Parley's clients as it lands.
      const holds = async (usage: string, publicKeyBase64: string) => {
        const [row] = await parley.services.db.select().from(t).where(and(eq(t.userId, sam.userId), eq(t.usage, usage)));
        return row !== undefined && JSON.parse(row.keyJson).keys[`ed25519:${publicKeyBase64}`] !== undefined;
      };
      await waitFor("Parley holds sam's new master and self-signing keys (m.signing_key_update)", async () =>
        (await holds("master", replacement.master.publicKeyBase64)) && (await holds("self_signing", replacement.selfSigning.publicKeyBase64)),
      );
      // The second EDU's announcement is consumed here, so the next test's wait sees only its own.
      const drained = await sync(pat.base, pat, { since: pat.since!, timeout: 0 });
      pat.since = drained.next_batch;
      const answer = (await call(pat, "POST", "/keys/query", { device_keys: { [sam.userId]: [] } })).json;
      expect(answer.master_keys[sam.userId]).toMatchObject({ keys: replacement.body.master_key.keys });
      expect(answer.self_signing_keys[sam.userId]).toMatchObject({ keys: replacement.body.self_signing_key.keys });
      sam.crossSigning = replacement;
    }, 60_000);

    it("a new Synapse device reaches Parley's copy of the list and its client's device_lists.changed; so does its deletion", async () => {
      const sam4 = await secondDevice(sam, "fourth");
      await announcedUntil(pat, sam.userId, (ids) => ids.includes(sam4.deviceId));
      const d = schema.remoteDevices;
      const held = async () => (await parley.services.db.select().from(d).where(eq(d.userId, sam.userId))).map((r) => r.deviceId);
      // The login and the key upload are two updates, each announced as it lands: wait for the
      // device's keys, then consume what is announced so far, so the wait below sees the deletion.
      const keyed = async () => (await parley.services.db.select().from(d).where(and(eq(d.userId, sam.userId), eq(d.deviceId, sam4.deviceId))))[0]?.keysJson;
      await waitFor("Parley holds sam's new device and its keys", keyed);
      const drained = await sync(pat.base, pat, { since: pat.since!, timeout: 0 });
      pat.since = drained.next_batch;

      const deleted = await withPassword(sam, "DELETE", `/devices/${encodeURIComponent(sam4.deviceId)}`, {});
      expect(deleted.status, deleted.text).toBe(200);
      await announcedUntil(pat, sam.userId, (ids) => !ids.includes(sam4.deviceId));
      await waitFor("Parley forgets sam's deleted device", async () => !(await held()).includes(sam4.deviceId));
      const [head] = await parley.services.db.select().from(schema.remoteDeviceListHeads).where(eq(schema.remoteDeviceListHeads.userId, sam.userId));
      expect(head).toMatchObject({ stale: false });
    }, 60_000);
  });
  // Verifying a user of the other server: one's user-signing key signs their master key. The
  // signature stays on the signer's server, seen by the signer alone (the spec: user-signing
  // signatures are visible only to their maker); the server reads the target's master key from
  // the target's server to check it.
  describe("cross-signing a user of the other server", () => {
    it("a Parley user signs a Synapse user's master key: Parley checks it against Synapse's key and shows it to the signer alone", async () => {
      const target = sam.crossSigning.body.master_key;
      const signed = sign(target, pat.userId, pat.crossSigning.userSigning);
      const res = await call(pat, "POST", "/keys/signatures/upload", { [sam.userId]: { [sam.crossSigning.master.publicKeyBase64]: signed } });
      expect(res.status, res.text).toBe(200);
      expect(res.json.failures ?? {}).toEqual({});
      const usk = pat.crossSigning.userSigning;
      const seen = (await call(pat, "POST", "/keys/query", { device_keys: { [sam.userId]: [] } })).json.master_keys[sam.userId];
      expect(verifyJsonSignature(seen, pat.userId, `ed25519:${usk.publicKeyBase64}`, usk.publicKey)).toBe(true);
      const bySam = (await call(sam, "POST", "/keys/query", { device_keys: { [sam.userId]: [] } })).json.master_keys[sam.userId];
      expect(bySam.signatures?.[pat.userId]).toBeUndefined();

      // A signature of a key that is not the user's current master key is refused.
      const stale = sign(crossSigningIdentity(sam.userId).body.master_key, pat.userId, usk);
      const refused = await call(pat, "POST", "/keys/signatures/upload", { [sam.userId]: { [Object.keys(stale.keys)[0]!.slice(8)]: stale } });
      expect(Object.keys(refused.json.failures?.[sam.userId] ?? {})).toHaveLength(1);
    });

    it("a Synapse user signs a Parley user's master key: Synapse checks it against Parley's key and shows it to the signer", async () => {
      const target = pat.crossSigning.body.master_key;
      const signed = sign(target, sam.userId, sam.crossSigning.userSigning);
      const res = await call(sam, "POST", "/keys/signatures/upload", { [pat.userId]: { [pat.crossSigning.master.publicKeyBase64]: signed } });
      expect(res.status, res.text).toBe(200);
      expect(res.json.failures ?? {}).toEqual({});
      const usk = sam.crossSigning.userSigning;
      const seen = (await call(sam, "POST", "/keys/query", { device_keys: { [pat.userId]: [] } })).json.master_keys[pat.userId];
      expect(verifyJsonSignature(seen, sam.userId, `ed25519:${usk.publicKeyBase64}`, usk.publicKey)).toBe(true);
    });
  });
});
