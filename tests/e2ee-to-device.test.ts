// To-device messaging: PUT /sendToDevice stores into per-device mailboxes, which the sync service
// functions read (fetchToDevice) and empty (ackToDevice); a full mailbox refuses clearly.
import { eq } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { schema } from "../schema/db.ts";
import { loginUser, passwordAuth, registerUser, type TestUser } from "./accounts-helpers.ts";
import { request, startTestServer, type TestServer } from "./harness.ts";

const MAILBOX_LIMIT = 5;

let hs: TestServer;
beforeAll(async () => {
  hs = await startTestServer({ config: { to_device_mailbox_limit: MAILBOX_LIMIT } });
});
afterAll(() => hs.destroy());

let n = 0;
const newUser = () => registerUser(hs.url, `todev${++n}`);
let txn = 0;
const send = (from: TestUser, messages: unknown, txnId = `t${++txn}`, type = "m.room_key_request") =>
  request(hs.url, "PUT", `/_matrix/client/v3/sendToDevice/${type}/${txnId}`, { token: from.accessToken, body: { messages } });
const fetchAll = (user: TestUser, since = 0) => hs.services.e2ee.toDevice.fetchToDevice(user.userId, user.deviceId, since, 100);

async function secondDevice(user: TestUser): Promise<TestUser> {
  const login = await loginUser(hs.url, user.userId, user.password);
  return { ...user, accessToken: login.json.access_token, deviceId: login.json.device_id };
}

describe("/sendToDevice", () => {
  it("delivers to a named device and, with *, to every device of the user", async () => {
    const alice = await newUser();
    const bob = await newUser();
    const bob2 = await secondDevice(bob);

    expect((await send(alice, { [bob.userId]: { [bob.deviceId]: { n: 1 } } })).status).toBe(200);
    expect((await send(alice, { [bob.userId]: { "*": { n: 2 } } }, undefined, "org.example.ping")).status).toBe(200);

    const first = await fetchAll(bob);
    expect(first.events).toEqual([
      { sender: alice.userId, type: "m.room_key_request", content: { n: 1 } },
      { sender: alice.userId, type: "org.example.ping", content: { n: 2 } },
    ]);
    const second = await fetchAll(bob2);
    expect(second.events).toEqual([{ sender: alice.userId, type: "org.example.ping", content: { n: 2 } }]);
    expect(second.position).toBeGreaterThan(0);
    expect(await hs.services.e2ee.toDevice.currentPosition()).toBeGreaterThanOrEqual(first.position);
  });

  it("is idempotent per sending device and transaction ID", async () => {
    const alice = await newUser();
    const bob = await newUser();
    const messages = { [bob.userId]: { [bob.deviceId]: { once: true } } };
    expect((await send(alice, messages, "same")).status).toBe(200);
    expect((await send(alice, messages, "same")).status).toBe(200);
    expect((await fetchAll(bob)).events).toHaveLength(1);
    // The same txnId from another device of the sender is another transaction.
    const alice2 = await secondDevice(alice);
    expect((await send(alice2, messages, "same")).status).toBe(200);
    expect((await fetchAll(bob)).events).toHaveLength(2);
  });

  it("fetches in pages after a position, and ack deletes what was delivered", async () => {
    const alice = await newUser();
    const bob = await newUser();
    for (let i = 0; i < 4; i++) await send(alice, { [bob.userId]: { [bob.deviceId]: { i } } });
    const toDevice = hs.services.e2ee.toDevice;
    const page1 = await toDevice.fetchToDevice(bob.userId, bob.deviceId, 0, 2);
    expect(page1.events.map((e) => e.content.i)).toEqual([0, 1]);
    const page2 = await toDevice.fetchToDevice(bob.userId, bob.deviceId, page1.position, 2);
    expect(page2.events.map((e) => e.content.i)).toEqual([2, 3]);

    expect(await toDevice.ackToDevice(bob.userId, bob.deviceId, page1.position)).toBe(2);
    expect((await fetchAll(bob)).events.map((e) => e.content.i)).toEqual([2, 3]);
    expect(await toDevice.ackToDevice(bob.userId, bob.deviceId, page2.position)).toBe(2);
    const empty = await toDevice.fetchToDevice(bob.userId, bob.deviceId, page2.position, 10);
    expect(empty).toEqual({ events: [], position: page2.position });
  });

  it("refuses a send that would overfill a mailbox, stores none of it, and accepts again once delivered", async () => {
    const alice = await newUser();
    const bob = await newUser();
    const carol = await newUser();
    for (let i = 0; i < MAILBOX_LIMIT; i++) {
      expect((await send(alice, { [bob.userId]: { [bob.deviceId]: { i } } })).status).toBe(200);
    }
    const refused = await send(alice, { [carol.userId]: { [carol.deviceId]: { x: 1 } }, [bob.userId]: { "*": { x: 1 } } }, "full");
    expect(refused.status).toBe(429);
    expect(refused.json.errcode).toBe("M_LIMIT_EXCEEDED");
    expect(refused.json.error).toContain("mailbox");
    expect(refused.json.error).toContain(bob.userId);
    expect(refused.json.retry_after_ms).toBeGreaterThan(0);
    // Nothing was stored, not even for the device whose mailbox had room.
    expect((await fetchAll(carol)).events).toEqual([]);
    expect((await fetchAll(bob)).events).toHaveLength(MAILBOX_LIMIT);

    const delivered = await fetchAll(bob);
    await hs.services.e2ee.toDevice.ackToDevice(bob.userId, bob.deviceId, delivered.position);
    // The refused transaction ID was not spent: retrying it now succeeds.
    const retried = await send(alice, { [carol.userId]: { [carol.deviceId]: { x: 1 } }, [bob.userId]: { "*": { x: 1 } } }, "full");
    expect(retried.status).toBe(200);
    expect((await fetchAll(carol)).events).toHaveLength(1);
    expect((await fetchAll(bob)).events).toHaveLength(1);
  });

  it("queues messages for users of other servers as one m.direct_to_device EDU per server", async () => {
    const alice = await newUser();
    const res = await send(alice, { "@bob:elsewhere.example": { "*": { x: 1 } }, "@carol:elsewhere.example": { DEV: { x: 2 } } });
    expect(res.status).toBe(200);
    const queued = await hs.services.db.select().from(schema.federationOutbox).where(eq(schema.federationOutbox.destination, "elsewhere.example"));
    expect(queued).toHaveLength(1);
    const edu = JSON.parse(queued[0]!.payload);
    expect(edu).toMatchObject({
      edu_type: "m.direct_to_device",
      content: { sender: alice.userId, messages: { "@bob:elsewhere.example": { "*": { x: 1 } }, "@carol:elsewhere.example": { DEV: { x: 2 } } } },
    });
    expect(edu.content.message_id.length).toBeLessThanOrEqual(32);
    // Nothing is queued for a name no server can have.
    const bad = await send(alice, { "@bob:not a server": { DEV: { x: 1 } } });
    expect(bad.status).toBe(400);
    expect(bad.json.errcode).toBe("M_INVALID_PARAM");
  });

  it("skips devices that do not exist and empties a deleted device's mailbox", async () => {
    const alice = await newUser();
    const bob = await newUser();
    const bob2 = await secondDevice(bob);
    expect((await send(alice, { [bob.userId]: { NOSUCHDEVICE: { x: 1 }, [bob2.deviceId]: { x: 2 } } })).status).toBe(200);
    expect((await fetchAll(bob2)).events).toHaveLength(1);

    const challenge = await request(hs.url, "DELETE", `/_matrix/client/v3/devices/${bob2.deviceId}`, {
      token: bob.accessToken,
      body: {},
    });
    await request(hs.url, "DELETE", `/_matrix/client/v3/devices/${bob2.deviceId}`, {
      token: bob.accessToken,
      body: { auth: passwordAuth(bob, challenge.json.session) },
    });
    expect((await fetchAll(bob2)).events).toEqual([]);
  });
});
