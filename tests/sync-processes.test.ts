// Two Parley processes (two servers) on one PostgreSQL database: a write through one wakes a /sync
// waiting on the other, through LISTEN/NOTIFY. PGlite is single-process, so this runs on PostgreSQL only.
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { registerUser, type TestUser } from "./accounts-helpers.ts";
import { createTestDatabase, request, startTestServer, type TestDatabase, type TestServer } from "./harness.ts";
import { bodies, createRoom, enc, joinRoom, send, sync } from "./sync-helpers.ts";

describe.skipIf(!process.env.DATABASE_URL)("two processes on one PostgreSQL", () => {
  let database: TestDatabase;
  let dataDir: string;
  let one: TestServer;
  let two: TestServer;
  let alice: TestUser;
  let bob: TestUser;
  let roomId: string;

  beforeAll(async () => {
    database = await createTestDatabase();
    // One data directory: both processes sign with the same server key, as a deployment's would.
    dataDir = await mkdtemp(path.join(tmpdir(), "parley-two-"));
    one = await startTestServer({ database, dataDir });
    two = await startTestServer({ database, dataDir });
    alice = await registerUser(one.url, "alice");
    bob = await registerUser(two.url, "bob");
    roomId = await createRoom(one.url, alice, { preset: "private_chat", invite: [bob.userId] });
    await joinRoom(two.url, bob, roomId);
  });
  afterAll(async () => {
    await one?.stop();
    await two?.stop();
    await database?.drop();
    await rm(dataDir, { recursive: true, force: true });
  });

  it("wakes a /sync waiting on one process with a message sent through the other", async () => {
    const { next_batch } = await sync(two.url, bob);
    const started = Date.now();
    const waiting = sync(two.url, bob, { since: next_batch, timeout: 20_000 });
    await new Promise((r) => setTimeout(r, 300));
    await send(one.url, alice, roomId, { msgtype: "m.text", body: "across processes" });
    const res = await waiting;
    expect(bodies(res, roomId)).toEqual(["across processes"]);
    expect(Date.now() - started).toBeLessThan(5_000);
  });

  it("carries typing, receipts and account data across processes", async () => {
    const start = await sync(two.url, bob);
    const typing = sync(two.url, bob, { since: start.next_batch, timeout: 10_000 });
    await new Promise((r) => setTimeout(r, 100));
    await request(one.url, "PUT", `/_matrix/client/v3/rooms/${enc(roomId)}/typing/${enc(alice.userId)}`, {
      token: alice.accessToken,
      body: { typing: true, timeout: 10_000 },
    });
    const typed = await typing;
    const event = typed.rooms.join[roomId].ephemeral.events.find((e: any) => e.type === "m.typing");
    expect(event.content.user_ids).toEqual([alice.userId]);

    // A token from one process is good on the other.
    const eventId = await send(two.url, bob, roomId);
    const receipt = sync(one.url, alice, { since: (await sync(one.url, alice)).next_batch, timeout: 10_000 });
    await new Promise((r) => setTimeout(r, 100));
    await request(two.url, "POST", `/_matrix/client/v3/rooms/${enc(roomId)}/receipt/m.read/${enc(eventId)}`, {
      token: bob.accessToken,
      body: {},
    });
    const seen = await receipt;
    const receipts = seen.rooms.join[roomId].ephemeral.events.find((e: any) => e.type === "m.receipt");
    expect(receipts.content[eventId]["m.read"][bob.userId]).toBeDefined();

    const data = sync(one.url, bob, { since: (await sync(one.url, bob)).next_batch, timeout: 10_000 });
    await new Promise((r) => setTimeout(r, 100));
    await request(two.url, "PUT", `/_matrix/client/v3/user/${enc(bob.userId)}/account_data/org.example.x`, {
      token: bob.accessToken,
      body: { v: 1 },
    });
    const got = await data;
    expect(got.account_data.events).toContainEqual({ type: "org.example.x", content: { v: 1 } });
  });
});
