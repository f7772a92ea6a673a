// End-to-end encryption between two Parley servers: key queries and claims for remote users,
// to-device messages across servers (through restarts), and device-list updates both ways.
// https://spec.matrix.org/latest/server-server-api/#end-to-end-encryption
// https://spec.matrix.org/latest/server-server-api/#device-management
// https://spec.matrix.org/latest/server-server-api/#send-to-device-messaging
//
// Rooms across servers come with issue 12: where a shared room is needed, the remote user's join is
// written into the room's current state (what a federated join will leave there).
import { eq } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { verifyJsonSignature } from "../federation/protocol/signing.ts";
import { schema } from "../schema/db.ts";
import { passwordAuth, registerUser, type TestUser } from "./accounts-helpers.ts";
import { crossSigningIdentity, deviceIdentity, oneTimeKeys, post, sign } from "./e2ee-helpers.ts";
import { type Network, startNetwork } from "./federation-harness.ts";
import { request, type TestServer } from "./harness.ts";
import { createRoom, sync } from "./sync-helpers.ts";

let net: Network;
const hs1 = () => net.servers[0]!;
const hs2 = () => net.servers[1]!;
let alice: TestUser; // @alice:hs1.test
let bob: TestUser; // @bob:hs2.test
let bobDevice: ReturnType<typeof deviceIdentity>;
let bobCrossSigning: ReturnType<typeof crossSigningIdentity>;
let txn = 0;
/** bob's room on hs2 that alice is written into (her device list is tracked by hs2 while it is shared). */
let bobsRoom: string;

async function injectJoin(server: TestServer, roomId: string, userId: string) {
  await server.services.db
    .insert(schema.currentState)
    .values({ roomId, type: "m.room.member", stateKey: userId, eventId: `$injected-${userId}`, membership: "join" });
}

function sendToDevice(from: TestUser, type: string, messages: unknown) {
  return request(hs1().url, "PUT", `/_matrix/client/v3/sendToDevice/${type}/t${++txn}`, { token: from.accessToken, body: { messages } });
}

/** Syncs `user` on `server` until `count` to-device events of `type` arrived (or the deadline); answers them and the next token. */
async function toDeviceUntil(server: () => TestServer, user: TestUser, type: string, count: number, since?: string) {
  const got: any[] = [];
  let token = since;
  const deadline = Date.now() + 6_000;
  while (got.length < count && Date.now() < deadline) {
    const res = await sync(server().url, user, { ...(token ? { since: token } : {}), timeout: 500 });
    got.push(...(res.to_device?.events ?? []).filter((e: any) => e.type === type));
    token = res.next_batch;
  }
  return { events: got, token: token! };
}

beforeAll(async () => {
  // hs2 is restarted, so it keeps its data on disk.
  net = await startNetwork(2, { persistent: [1] });
  alice = await registerUser(hs1().url, "alice");
  bob = await registerUser(hs2().url, "bob");
  bobDevice = deviceIdentity(bob);
  bobCrossSigning = crossSigningIdentity(bob.userId);
  expect((await post(hs2().url, bob, "/keys/upload", { device_keys: bobDevice.deviceKeys, one_time_keys: oneTimeKeys(bob, bobDevice, 1) })).status).toBe(200);
  expect((await post(hs2().url, bob, "/keys/device_signing/upload", bobCrossSigning.body)).status).toBe(200);
}, 120_000);
afterAll(() => net?.destroy());

describe("keys of users on another server", () => {
  it("a user queries a remote user's device keys, with their signatures, and cross-signing keys", async () => {
    const res = await post(hs1().url, alice, "/keys/query", { device_keys: { [bob.userId]: [] } });
    expect(res.status).toBe(200);
    expect(res.json.failures).toEqual({});
    const device = res.json.device_keys[bob.userId][bob.deviceId];
    expect(device.keys).toEqual(bobDevice.deviceKeys.keys);
    const ed25519 = bobDevice.key.publicKey;
    expect(verifyJsonSignature(device, bob.userId, `ed25519:${bob.deviceId}`, ed25519)).toBe(true);
    expect(res.json.master_keys[bob.userId]).toMatchObject({ usage: ["master"], keys: bobCrossSigning.body.master_key.keys });
    const ssk = res.json.self_signing_keys[bob.userId];
    expect(ssk.keys).toEqual(bobCrossSigning.body.self_signing_key.keys);
    expect(verifyJsonSignature(ssk, bob.userId, `ed25519:${bobCrossSigning.master.publicKeyBase64}`, bobCrossSigning.master.publicKey)).toBe(true);
    // The user-signing key is its owner's alone.
    expect(res.json.user_signing_keys[bob.userId]).toBeUndefined();
  });

  it("claims a remote one-time key once, and never hands it out twice", async () => {
    const first = await post(hs1().url, alice, "/keys/claim", { one_time_keys: { [bob.userId]: { [bob.deviceId]: "signed_curve25519" } } });
    expect(first.status).toBe(200);
    expect(first.json.failures).toEqual({});
    const keys = first.json.one_time_keys[bob.userId][bob.deviceId];
    expect(Object.keys(keys)).toEqual(["signed_curve25519:AAAA0"]);
    const second = await post(hs1().url, alice, "/keys/claim", { one_time_keys: { [bob.userId]: { [bob.deviceId]: "signed_curve25519" } } });
    expect(second.json.one_time_keys[bob.userId]?.[bob.deviceId] ?? {}).toEqual({});
  });

  it("a user signs a remote user's master key with their user-signing key, and alone sees the signature", async () => {
    const carol = await registerUser(hs1().url, "carol");
    const carolCrossSigning = crossSigningIdentity(carol.userId);
    expect((await post(hs1().url, carol, "/keys/device_signing/upload", carolCrossSigning.body)).status).toBe(200);
    const usk = carolCrossSigning.userSigning;
    const signed = sign(bobCrossSigning.body.master_key, carol.userId, usk);
    const res = await post(hs1().url, carol, "/keys/signatures/upload", { [bob.userId]: { [bobCrossSigning.master.publicKeyBase64]: signed } });
    expect(res.json.failures).toEqual({});
    const seen = (await post(hs1().url, carol, "/keys/query", { device_keys: { [bob.userId]: [] } })).json.master_keys[bob.userId];
    expect(verifyJsonSignature(seen, carol.userId, `ed25519:${usk.publicKeyBase64}`, usk.publicKey)).toBe(true);
    const byAlice = (await post(hs1().url, alice, "/keys/query", { device_keys: { [bob.userId]: [] } })).json.master_keys[bob.userId];
    expect(byAlice.signatures?.[carol.userId]).toBeUndefined();
    const bySelf = (await post(hs2().url, bob, "/keys/query", { device_keys: { [bob.userId]: [] } })).json.master_keys[bob.userId];
    expect(bySelf.signatures?.[carol.userId]).toBeUndefined();
    // Only the key bob's server holds as his master key can be signed.
    const other = sign(crossSigningIdentity(bob.userId).body.master_key, carol.userId, usk);
    const refused = await post(hs1().url, carol, "/keys/signatures/upload", { [bob.userId]: { [Object.keys(other.keys)[0]!.slice(8)]: other } });
    expect(Object.keys(refused.json.failures[bob.userId])).toHaveLength(1);
  });

  it("lists a server that cannot be reached in failures, and answers for the others", async () => {
    const res = await post(hs1().url, alice, "/keys/query", { device_keys: { [bob.userId]: [], "@carol:unreachable.invalid": [] } });
    expect(res.status).toBe(200);
    expect(Object.keys(res.json.failures)).toEqual(["unreachable.invalid"]);
    expect(res.json.device_keys[bob.userId][bob.deviceId]).toBeDefined();
  });

  it("serves only its own users to other servers", async () => {
    const http = hs1().services.federation.http;
    const devices = await http.request("hs2.test", { method: "GET", path: `/_matrix/federation/v1/user/devices/${encodeURIComponent(bob.userId)}` });
    expect(devices.status).toBe(200);
    expect(devices.body).toMatchObject({ user_id: bob.userId, devices: [{ device_id: bob.deviceId, keys: { keys: bobDevice.deviceKeys.keys } }] });
    expect((devices.body as any).stream_id).toBeGreaterThan(0);
    expect((devices.body as any).master_key.keys).toEqual(bobCrossSigning.body.master_key.keys);
    const other = await http.request("hs2.test", { method: "GET", path: `/_matrix/federation/v1/user/devices/${encodeURIComponent(alice.userId)}` });
    expect(other.status).toBe(400);
  });
});

describe("to-device messages across servers", () => {
  it("arrive in the remote device's /sync exactly once", async () => {
    const res = await sendToDevice(alice, "m.test.once", { [bob.userId]: { [bob.deviceId]: { n: 1 } } });
    expect(res.status).toBe(200);
    const { events, token } = await toDeviceUntil(hs2, bob, "m.test.once", 1);
    expect(events).toEqual([{ sender: alice.userId, type: "m.test.once", content: { n: 1 } }]);
    const again = await sync(hs2().url, bob, { since: token, timeout: 300 });
    expect(again.to_device?.events ?? []).toEqual([]);
  });

  it("`*` reaches every device of the remote user", async () => {
    const second = await request(hs2().url, "POST", "/_matrix/client/v3/login", {
      body: { type: "m.login.password", identifier: { type: "m.id.user", user: "bob" }, password: bob.password },
    });
    const bob2: TestUser = { ...bob, accessToken: second.json.access_token, deviceId: second.json.device_id };
    await sendToDevice(alice, "m.test.star", { [bob.userId]: { "*": { all: true } } });
    expect((await toDeviceUntil(hs2, bob, "m.test.star", 1)).events).toHaveLength(1);
    expect((await toDeviceUntil(hs2, bob2, "m.test.star", 1)).events).toHaveLength(1);
  });

  it("from a sender of another server than the origin are refused, and a repeated message_id is delivered once", async () => {
    const handler = hs2().services.federation.edus.get("m.direct_to_device")!;
    const content = (sender: string) => ({ sender, type: "m.test.direct", message_id: "fixed-id", messages: { [bob.userId]: { [bob.deviceId]: { from: sender } } } });
    await expect(handler("hs1.test", content("@mallory:hs3.test"))).rejects.toThrow();
    await handler("hs1.test", content(alice.userId));
    await handler("hs1.test", content(alice.userId));
    const { events, token } = await toDeviceUntil(hs2, bob, "m.test.direct", 1);
    expect(events).toEqual([{ sender: alice.userId, type: "m.test.direct", content: { from: alice.userId } }]);
    const again = await sync(hs2().url, bob, { since: token, timeout: 300 });
    expect((again.to_device?.events ?? []).filter((e: any) => e.type === "m.test.direct")).toEqual([]);
  });

  it("queued while the remote server is down arrive once each, in order, after it restarts", async () => {
    // Deliver what is pending first, so the count below is exact.
    const { token } = await toDeviceUntil(hs2, bob, "none", 0);
    await net.stop(1);
    for (let n = 0; n < 5; n++) {
      expect((await sendToDevice(alice, "m.test.queued", { [bob.userId]: { [bob.deviceId]: { n } } })).status).toBe(200);
    }
    await net.start(1);
    // hs2 reaching hs1 ends hs1's backoff towards it at once.
    await hs2().services.federation.http.request("hs1.test", { method: "GET", path: `/_matrix/federation/v1/query/profile?user_id=${encodeURIComponent(alice.userId)}` });
    const { events, token: after } = await toDeviceUntil(hs2, bob, "m.test.queued", 5, token);
    expect(events.map((e) => e.content.n)).toEqual([0, 1, 2, 3, 4]);
    const again = await sync(hs2().url, bob, { since: after, timeout: 300 });
    expect((again.to_device?.events ?? []).filter((e: any) => e.type === "m.test.queued")).toEqual([]);
  }, 20_000);
});

describe("device lists across servers", () => {
  it("a new device of a local user reaches the servers sharing a room, and their users' /sync device_lists.changed", async () => {
    // alice's room on hs1 holds bob; bob's room on hs2 holds alice (see the file's note).
    await injectJoin(hs1(), await createRoom(hs1().url, alice), bob.userId);
    bobsRoom = await createRoom(hs2().url, bob);
    await injectJoin(hs2(), bobsRoom, alice.userId);
    const since = (await sync(hs2().url, bob)).next_batch;

    // bob long-polls: the change must wake him, not his timeout.
    const deadline = Date.now() + 4_000;
    const woken = (async () => {
      let token = since;
      while (Date.now() < deadline) {
        const res = await sync(hs2().url, bob, { since: token, timeout: Math.max(0, deadline - Date.now()) });
        if (res.device_lists?.changed?.includes(alice.userId)) return true;
        token = res.next_batch;
      }
      return false;
    })();
    const aliceDevice = deviceIdentity(alice);
    expect((await post(hs1().url, alice, "/keys/upload", { device_keys: aliceDevice.deviceKeys })).status).toBe(200);
    expect(await woken).toBe(true);
    // hs2 fetched alice's list (its first update of her has nothing before it to follow).
    const rows = await hs2().services.db.select().from(schema.remoteDevices).where(eq(schema.remoteDevices.userId, alice.userId));
    expect(rows.map((r) => r.deviceId)).toEqual([alice.deviceId]);
    expect(JSON.parse(rows[0]!.keysJson!).keys).toEqual(aliceDevice.deviceKeys.keys);
  });

  it("applies an update that follows the last one, and resyncs after a gap", async () => {
    const handler = hs2().services.federation.edus.get("m.device_list_update")!;
    const heads = schema.remoteDeviceListHeads;
    const head = async () => (await hs2().services.db.select().from(heads).where(eq(heads.userId, alice.userId)))[0]!;
    const devices = async () =>
      (await hs2().services.db.select().from(schema.remoteDevices).where(eq(schema.remoteDevices.userId, alice.userId))).map((r) => r.deviceId).sort();
    const last = (await head()).streamId;

    await handler("hs1.test", { user_id: alice.userId, device_id: "NEWONE", stream_id: last + 100, prev_id: [last], device_display_name: "phone" });
    expect(await devices()).toEqual([alice.deviceId, "NEWONE"].sort());
    expect((await head()).streamId).toBe(last + 100);

    // Refused: another server's user.
    await expect(handler("hs3.test", { user_id: alice.userId, device_id: "X", stream_id: last + 200, prev_id: [last + 100] })).rejects.toThrow();

    // A gap: prev_id we never saw. The list is fetched again from hs1, which knows no NEWONE.
    await handler("hs1.test", { user_id: alice.userId, device_id: "OTHER", stream_id: last + 300, prev_id: [last + 250] });
    const deadline = Date.now() + 5_000;
    while ((await devices()).includes("NEWONE") && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    expect(await devices()).toEqual([alice.deviceId]);
    expect((await head()).stale).toBe(false);
  });

  it("a second device and its deletion follow in sequence, and new cross-signing keys follow too", async () => {
    const rowsOf = async () =>
      (await hs2().services.db.select().from(schema.remoteDevices).where(eq(schema.remoteDevices.userId, alice.userId))).map((r) => r.deviceId).sort();
    const until = async (what: string, check: () => Promise<boolean>) => {
      const deadline = Date.now() + 5_000;
      while (!(await check())) {
        if (Date.now() > deadline) throw new Error(`timed out: ${what}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    };
    const login = await request(hs1().url, "POST", "/_matrix/client/v3/login", {
      body: { type: "m.login.password", identifier: { type: "m.id.user", user: "alice" }, password: alice.password },
    });
    const alice2: TestUser = { ...alice, accessToken: login.json.access_token, deviceId: login.json.device_id };
    await post(hs1().url, alice2, "/keys/upload", { device_keys: deviceIdentity(alice2).deviceKeys });
    await until("hs2 holds alice's second device", async () => (await rowsOf()).includes(alice2.deviceId));

    const path = `/_matrix/client/v3/devices/${alice2.deviceId}`;
    const challenge = await request(hs1().url, "DELETE", path, { token: alice.accessToken, body: {} });
    expect((await request(hs1().url, "DELETE", path, { token: alice.accessToken, body: { auth: passwordAuth(alice, challenge.json.session) } })).status).toBe(200);
    await until("hs2 forgets alice's deleted device", async () => !(await rowsOf()).includes(alice2.deviceId));
    // Each update followed the one before: the head is hs1's own position for alice, not stale.
    const [head] = await hs2().services.db.select().from(schema.remoteDeviceListHeads).where(eq(schema.remoteDeviceListHeads.userId, alice.userId));
    expect(head).toMatchObject({ stale: false, streamId: await hs1().services.e2ee.deviceLists.lastDeviceChange(alice.userId) });

    const identity = crossSigningIdentity(alice.userId);
    expect((await post(hs1().url, alice, "/keys/device_signing/upload", identity.body)).status).toBe(200);
    await until("hs2 holds alice's master key", async () => {
      const [row] = await hs2().services.db.select().from(schema.remoteCrossSigningKeys).where(eq(schema.remoteCrossSigningKeys.userId, alice.userId));
      return row !== undefined && JSON.parse(row.keyJson).keys[`ed25519:${identity.master.publicKeyBase64}`] !== undefined;
    });
  });

  it("answers key queries for a tracked user from the held list, without asking their server", async () => {
    // A device only hs2's copy has: an answer holding it cannot have come from hs1.
    const d = schema.remoteDevices;
    const held = { user_id: alice.userId, device_id: "HELDONLY", algorithms: ["m.olm.v1.curve25519-aes-sha2"], keys: {}, signatures: {} };
    await hs2().services.db.insert(d).values({ userId: alice.userId, deviceId: "HELDONLY", displayName: "held", keysJson: JSON.stringify(held) });
    const res = await post(hs2().url, bob, "/keys/query", { device_keys: { [alice.userId]: [] } });
    expect(res.status).toBe(200);
    expect(res.json.failures).toEqual({});
    expect(Object.keys(res.json.device_keys[alice.userId]).sort()).toEqual([alice.deviceId, "HELDONLY"].sort());
    expect(res.json.device_keys[alice.userId].HELDONLY).toEqual({ ...held, unsigned: { device_display_name: "held" } });
    expect(res.json.master_keys[alice.userId]).toBeDefined();
    // Asked for one device, only that one.
    const one = await post(hs2().url, bob, "/keys/query", { device_keys: { [alice.userId]: ["HELDONLY"] } });
    expect(Object.keys(one.json.device_keys[alice.userId])).toEqual(["HELDONLY"]);
    await hs2().services.db.delete(d).where(eq(d.deviceId, "HELDONLY"));
  });

  it("drops a user's list when no room is shared any more, and fetches it whole when one is again", async () => {
    const heads = schema.remoteDeviceListHeads;
    const headOf = async () => (await hs2().services.db.select().from(heads).where(eq(heads.userId, alice.userId)))[0];
    expect(await headOf()).toBeDefined();
    const left = await request(hs2().url, "POST", `/_matrix/client/v3/rooms/${encodeURIComponent(bobsRoom)}/leave`, { token: bob.accessToken, body: {} });
    expect(left.status).toBe(200);
    const deadline = Date.now() + 5_000;
    while ((await headOf()) !== undefined && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    expect(await headOf()).toBeUndefined();
    expect(await hs2().services.db.select().from(schema.remoteDevices).where(eq(schema.remoteDevices.userId, alice.userId))).toEqual([]);

    // Not shared: a query asks hs1 and keeps nothing.
    const asked = await post(hs2().url, bob, "/keys/query", { device_keys: { [alice.userId]: [] } });
    expect(Object.keys(asked.json.device_keys[alice.userId])).toEqual([alice.deviceId]);
    expect(await headOf()).toBeUndefined();

    // Shared again: the first query fetches the whole list and keeps it.
    bobsRoom = await createRoom(hs2().url, bob);
    await injectJoin(hs2(), bobsRoom, alice.userId);
    const res = await post(hs2().url, bob, "/keys/query", { device_keys: { [alice.userId]: [] } });
    expect(res.json.failures).toEqual({});
    expect(Object.keys(res.json.device_keys[alice.userId])).toEqual([alice.deviceId]);
    expect(await headOf()).toMatchObject({ stale: false, streamId: await hs1().services.e2ee.deviceLists.lastDeviceChange(alice.userId) });
  });

  it("takes a signing-key update only from the user's own server", async () => {
    const handler = hs2().services.federation.edus.get("m.signing_key_update")!;
    const identity = crossSigningIdentity(alice.userId);
    await expect(handler("hs3.test", { user_id: alice.userId, master_key: identity.body.master_key })).rejects.toThrow();
    await handler("hs1.test", { user_id: alice.userId, master_key: identity.body.master_key, self_signing_key: identity.body.self_signing_key });
    const rows = await hs2().services.db.select().from(schema.remoteCrossSigningKeys).where(eq(schema.remoteCrossSigningKeys.userId, alice.userId));
    expect(rows.map((r) => r.usage).sort()).toEqual(["master", "self_signing"]);
  });
});
