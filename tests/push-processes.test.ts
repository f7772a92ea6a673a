// Two Parley processes on one PostgreSQL database push to one gateway: each notification leaves
// once, whichever process copied it into the queue or holds the due pushes (server/push/
// push-sender.ts claims pushes under a lease). PGlite is single-process, so this runs on PostgreSQL only.
import { mkdtemp, rm } from "node:fs/promises";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase, type TestServer, startTestServer } from "./harness.ts";
import { asRoomUser, type RoomUser, registerRoomUser } from "./rooms-helpers.ts";

describe.skipIf(!process.env.DATABASE_URL)("push across two processes on one PostgreSQL", () => {
  let database: TestDatabase;
  let dataDir: string;
  let one: TestServer;
  let two: TestServer;
  let gateway: Server;
  let port = 0;
  const received: any[] = [];

  beforeAll(async () => {
    gateway = createServer(async (req, res) => {
      let text = "";
      for await (const chunk of req) text += chunk;
      received.push(JSON.parse(text).notification);
      res.writeHead(200, { "content-type": "application/json" }).end('{"rejected":[]}');
    });
    await new Promise<void>((r) => gateway.listen(0, "127.0.0.1", r));
    port = (gateway.address() as AddressInfo).port;
    database = await createTestDatabase();
    dataDir = await mkdtemp(path.join(tmpdir(), "parley-push-two-"));
    const config = { push_gateways_insecure: [`127.0.0.1:${port}`] };
    one = await startTestServer({ database, dataDir, config });
    two = await startTestServer({ database, dataDir, config });
  });
  afterAll(async () => {
    await one?.stop();
    await two?.stop();
    await database?.drop();
    await rm(dataDir, { recursive: true, force: true });
    gateway?.close();
  });

  it("pushes each message once, sent through either process", async () => {
    const alice: RoomUser = await registerRoomUser(one.url, "alice");
    const bob = await registerRoomUser(one.url, "bob");
    const bobOnTwo = asRoomUser(two.url, bob);
    const roomId = await alice.createRoom({ preset: "trusted_private_chat", invite: [bob.userId], is_direct: true });
    expect((await bobOnTwo.join(roomId)).status).toBe(200);
    const set = await alice.call("POST", "/_matrix/client/v3/pushers/set", {
      kind: "http",
      app_id: "org.example.app",
      app_display_name: "Example",
      device_display_name: "Phone",
      lang: "en",
      pushkey: "alice-phone",
      data: { url: `http://127.0.0.1:${port}/_matrix/push/v1/notify` },
    });
    expect(set.status).toBe(200);
    const sent: string[] = [];
    for (let i = 0; i < 30; i++) sent.push(await (i % 2 ? bobOnTwo : bob).send(roomId, { msgtype: "m.text", body: `m${i}` }));
    const pushedIds = () => received.filter((n) => n.event_id).map((n) => n.event_id as string);
    await expect.poll(() => new Set(pushedIds()).size, { timeout: 30_000 }).toBe(30);
    // Give a second sender a moment to send anything twice.
    await new Promise((r) => setTimeout(r, 1_500));
    expect(pushedIds().sort()).toEqual([...sent].sort());
  });
});
