// The deprecated GET /events (and its r0 path): the event stream sytest's fixtures use, on the
// tokens and long-polls of /sync.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { registerUser, type TestUser } from "./accounts-helpers.ts";
import { request, startTestServer, type TestServer } from "./harness.ts";
import { bodies, createRoom, joinRoom, send, sync } from "./sync-helpers.ts";

let hs: TestServer;
let alice: TestUser;
let bob: TestUser;
beforeAll(async () => {
  hs = await startTestServer();
  alice = await registerUser(hs.url, "alice");
  bob = await registerUser(hs.url, "bob");
});
afterAll(() => hs.destroy());

async function sharedRoom(): Promise<string> {
  const roomId = await createRoom(hs.url, alice, { preset: "private_chat", invite: [bob.userId] });
  await joinRoom(hs.url, bob, roomId);
  return roomId;
}

function eventsRaw(user: TestUser, query: Record<string, string | number> = {}, version = "v3") {
  const q = new URLSearchParams(Object.entries(query).map(([k, v]): [string, string] => [k, String(v)]));
  return request(hs.url, "GET", `/_matrix/client/${version}/events?${q}`, { token: user.accessToken });
}

async function events(user: TestUser, query: Record<string, string | number> = {}, version = "v3"): Promise<any> {
  const res = await eventsRaw(user, query, version);
  expect(res.status, JSON.stringify(res.json)).toBe(200);
  return res.json;
}

const messages = (res: any) => (res.chunk as any[]).filter((e) => e.type === "m.room.message").map((e) => e.content.body);

describe("GET /events", () => {
  it("answers at once without from: an empty chunk and the current position as end", async () => {
    await sharedRoom();
    const started = Date.now();
    const res = await events(bob, { timeout: 10_000 });
    expect(Date.now() - started).toBeLessThan(5_000);
    expect(res.chunk).toEqual([]);
    expect(typeof res.end).toBe("string");
    expect(res.start).toBe(res.end);
  });

  it("returns a message sent after end, with its room, and a later end", async () => {
    const roomId = await sharedRoom();
    const { end } = await events(bob);
    await send(hs.url, alice, roomId, { msgtype: "m.text", body: "after" });
    const res = await events(bob, { from: end });
    expect(messages(res)).toEqual(["after"]);
    expect(res.chunk[0].room_id).toBe(roomId);
    expect(res.chunk[0].sender).toBe(alice.userId);
    expect(res.start).toBe(end);
    expect(res.end).not.toBe(end);
    expect((await events(bob, { from: res.end })).chunk).toEqual([]);
  });

  it("waits up to the timeout, and wakes on a new event", async () => {
    const roomId = await sharedRoom();
    const { end } = await events(bob);
    let started = Date.now();
    const idle = await events(bob, { from: end, timeout: 300 });
    expect(Date.now() - started).toBeGreaterThanOrEqual(250);
    expect(idle.chunk).toEqual([]);
    expect(typeof idle.end).toBe("string");

    started = Date.now();
    const waiting = events(bob, { from: idle.end, timeout: 20_000 });
    await new Promise((r) => setTimeout(r, 200));
    await send(hs.url, alice, roomId, { msgtype: "m.text", body: "wake up" });
    expect(messages(await waiting)).toEqual(["wake up"]);
    expect(Date.now() - started).toBeLessThan(5_000);
  });

  it("gives only the room asked for with room_id", async () => {
    const first = await sharedRoom();
    const second = await sharedRoom();
    const { end } = await events(bob);
    await send(hs.url, alice, first, { msgtype: "m.text", body: "in first" });
    await send(hs.url, alice, second, { msgtype: "m.text", body: "in second" });
    const res = await events(bob, { from: end, room_id: second });
    expect(messages(res)).toEqual(["in second"]);
    expect(new Set(res.chunk.map((e: any) => e.room_id))).toEqual(new Set([second]));
  });

  it("leaves out rooms the user is not in", async () => {
    const roomId = await createRoom(hs.url, alice, { preset: "private_chat" });
    const { end } = await events(bob);
    await send(hs.url, alice, roomId, { msgtype: "m.text", body: "private" });
    expect((await events(bob, { from: end })).chunk).toEqual([]);
  });

  it("works on the r0 path", async () => {
    const roomId = await sharedRoom();
    const { end } = await events(bob, {}, "r0");
    await send(hs.url, alice, roomId, { msgtype: "m.text", body: "old path" });
    expect(messages(await events(bob, { from: end, timeout: 5_000 }, "r0"))).toEqual(["old path"]);
  });

  it("shares its tokens with /sync both ways", async () => {
    const roomId = await sharedRoom();
    const { next_batch } = await sync(hs.url, bob);
    await send(hs.url, alice, roomId, { msgtype: "m.text", body: "via events" });
    const res = await events(bob, { from: next_batch });
    expect(messages(res)).toEqual(["via events"]);
    await send(hs.url, alice, roomId, { msgtype: "m.text", body: "via sync" });
    expect(bodies(await sync(hs.url, bob, { since: res.end }), roomId)).toEqual(["via sync"]);
  });

  it("refuses a malformed from or timeout with 400", async () => {
    for (const from of ["garbage", "s1_x", "s-3"]) {
      const res = await eventsRaw(bob, { from });
      expect(res.status).toBe(400);
      expect(res.json.errcode).toBe("M_INVALID_PARAM");
    }
    expect((await eventsRaw(bob, { from: "s1", timeout: "soon" })).status).toBe(400);
  });

  it("requires an access token", async () => {
    const res = await request(hs.url, "GET", "/_matrix/client/v3/events");
    expect(res.status).toBe(401);
  });
});

describe("GET /events under admission control", () => {
  let limited: TestServer;
  beforeAll(async () => {
    limited = await startTestServer({ config: { max_long_polls_per_user: 1 } });
  });
  afterAll(() => limited.destroy());

  it("counts a waiting /events as a long-poll, and one without from as a plain request", async () => {
    const carol = await registerUser(limited.url, "carol");
    const get = (query: string) => request(limited.url, "GET", `/_matrix/client/v3/events?${query}`, { token: carol.accessToken });
    const { end } = (await get("")).json;
    const controller = new AbortController();
    const held = fetch(`${limited.url}/_matrix/client/v3/events?from=${encodeURIComponent(end)}&timeout=20000`, {
      headers: { Authorization: `Bearer ${carol.accessToken}` },
      signal: controller.signal,
    }).then((res) => res.text(), () => undefined);
    try {
      const started = Date.now();
      while (limited.services.notifier.waiting < 1) {
        if (Date.now() - started > 5_000) throw new Error("the long-poll never waited");
        await new Promise((r) => setTimeout(r, 10));
      }
      const refused = await get(`from=${encodeURIComponent(end)}&timeout=20000`);
      expect(refused.status).toBe(429);
      expect(refused.json.errcode).toBe("M_LIMIT_EXCEEDED");
      expect((await get("timeout=20000")).status).toBe(200);
      expect((await get(`from=${encodeURIComponent(end)}&timeout=0`)).status).toBe(200);
    } finally {
      controller.abort();
      await held;
    }
  });
});

describe("presence of a client that streams events", () => {
  it("is online, as a syncing client is", async () => {
    const dora = await registerUser(hs.url, "dora");
    const status = async () =>
      (await request(hs.url, "GET", `/_matrix/client/v3/presence/${encodeURIComponent(dora.userId)}/status`, { token: dora.accessToken })).json.presence;
    expect(await status()).not.toBe("online");
    const res = await request(hs.url, "GET", "/_matrix/client/v3/events?timeout=0", { token: dora.accessToken });
    expect(res.status).toBe(200);
    expect(await status()).toBe("online");
  });
});
