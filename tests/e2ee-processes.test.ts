// Two Parley processes on one PostgreSQL database: a to-device message or a device-list change
// written through one wakes the /sync of the users who should see it, waiting on the other (through
// LISTEN/NOTIFY). PGlite is single-process, so this runs on PostgreSQL only.
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { registerUser, type TestUser } from "./accounts-helpers.ts";
import { deviceIdentity, post } from "./e2ee-helpers.ts";
import { createTestDatabase, request, startTestServer, type TestDatabase, type TestServer } from "./harness.ts";
import { createRoom, joinRoom, sync } from "./sync-helpers.ts";

describe.skipIf(!process.env.DATABASE_URL)("E2EE across two processes on one PostgreSQL", () => {
  let database: TestDatabase;
  let dataDir: string;
  let one: TestServer;
  let two: TestServer;
  let alice: TestUser;
  let bob: TestUser;

  beforeAll(async () => {
    database = await createTestDatabase();
    dataDir = await mkdtemp(path.join(tmpdir(), "parley-e2ee-two-"));
    one = await startTestServer({ database, dataDir });
    two = await startTestServer({ database, dataDir });
    alice = await registerUser(one.url, "alice");
    bob = await registerUser(two.url, "bob");
    const roomId = await createRoom(one.url, alice, { preset: "private_chat", invite: [bob.userId] });
    await joinRoom(two.url, bob, roomId);
  });
  afterAll(async () => {
    await one?.stop();
    await two?.stop();
    await database?.drop();
    await rm(dataDir, { recursive: true, force: true });
  });

  /** Bob long-polls on process two while `action` runs against process one; it must come back early. */
  async function woken(action: () => Promise<void>): Promise<any> {
    const { next_batch } = await sync(two.url, bob);
    const started = Date.now();
    const waiting = sync(two.url, bob, { since: next_batch, timeout: 20_000 });
    await new Promise((r) => setTimeout(r, 300));
    await action();
    const res = await waiting;
    expect(Date.now() - started, "the long-poll was not woken").toBeLessThan(5_000);
    return res;
  }

  it("wakes the recipient's /sync with a to-device message sent through the other process", async () => {
    const res = await woken(async () => {
      const put = await request(one.url, "PUT", "/_matrix/client/v3/sendToDevice/org.example.ping/across", {
        token: alice.accessToken,
        body: { messages: { [bob.userId]: { [bob.deviceId]: { across: true } } } },
      });
      expect(put.status).toBe(200);
    });
    expect(res.to_device.events).toEqual([{ sender: alice.userId, type: "org.example.ping", content: { across: true } }]);
  });

  it("wakes a room-mate's /sync with a key upload through the other process", async () => {
    const res = await woken(async () => {
      const upload = await post(one.url, alice, "/keys/upload", { device_keys: deviceIdentity(alice).deviceKeys });
      expect(upload.status).toBe(200);
    });
    expect(res.device_lists.changed).toEqual([alice.userId]);
  });
});
