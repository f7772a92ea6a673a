// Push notifications over HTTP: pushers (GET /pushers, POST /pushers/set), the pushes a push
// gateway (a small HTTP server on loopback, here) receives for a DM, a mention, a room message, a
// muted room, an event_id_only pusher, a gateway that is down for a while, a rejected pushkey, a
// read receipt's zero count; GET /notifications and its paging; pushers going with their device
// and on a password change; gateways on loopback refused unless allowed.
import { createServer, type IncomingMessage, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loginUser, passwordAuth } from "./accounts-helpers.ts";
import { request, startTestServer, type TestServer } from "./harness.ts";
import { asRoomUser, type RoomUser, registerRoomUser, roomPath } from "./rooms-helpers.ts";

/** The push gateway: records each notification; can be down (503) or reject pushkeys. */
class Gateway {
  readonly received: any[] = [];
  down = false;
  readonly rejecting = new Set<string>();
  private server!: Server;
  port = 0;

  async start(): Promise<void> {
    this.server = createServer(async (req: IncomingMessage, res) => {
      let text = "";
      for await (const chunk of req) text += chunk;
      if (req.url !== "/_matrix/push/v1/notify" || req.method !== "POST") {
        res.writeHead(404).end();
        return;
      }
      if (this.down) {
        res.writeHead(503, { "content-type": "application/json" }).end("{}");
        return;
      }
      const body = JSON.parse(text);
      this.received.push(body.notification);
      const rejected = (body.notification.devices ?? []).map((d: any) => d.pushkey).filter((k: string) => this.rejecting.has(k));
      res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ rejected }));
    });
    await new Promise<void>((resolve) => this.server.listen(0, "127.0.0.1", resolve));
    this.port = (this.server.address() as AddressInfo).port;
  }

  url(host = "127.0.0.1"): string {
    return `http://${host}:${this.port}/_matrix/push/v1/notify`;
  }

  for(pushkey: string): any[] {
    return this.received.filter((n) => n.devices?.some((d: any) => d.pushkey === pushkey));
  }

  close(): Promise<void> {
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

const gateway = new Gateway();
let hs: TestServer;
beforeAll(async () => {
  await gateway.start();
  // Only this gateway's host:port may be on loopback; `localhost:port` is not named.
  hs = await startTestServer({ config: { push_gateways_insecure: [`127.0.0.1:${gateway.port}`] } });
});
afterAll(async () => {
  await hs.destroy();
  await gateway.close();
});

let n = 0;
const newUser = (name: string) => registerRoomUser(hs.url, `${name}${++n}`);
const text = (body: string, extra: Record<string, unknown> = {}) => ({ msgtype: "m.text", body, ...extra });

async function setPusher(user: RoomUser, pushkey: string, extra: Record<string, unknown> = {}) {
  return user.call("POST", "/_matrix/client/v3/pushers/set", {
    kind: "http",
    app_id: "org.example.app",
    app_display_name: "Example",
    device_display_name: "Phone",
    lang: "en",
    pushkey,
    data: { url: gateway.url(), custom: "kept" },
    ...extra,
  });
}

async function addPusher(user: RoomUser, pushkey: string, extra: Record<string, unknown> = {}) {
  const res = await setPusher(user, pushkey, extra);
  expect(res.status, JSON.stringify(res.json)).toBe(200);
}

async function waitFor<T>(what: string, get: () => T | undefined | false, timeoutMs = 8000): Promise<T> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const v = get();
    if (v) return v;
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** Polls an HTTP read until it answers what is waited for. */
async function eventually<T>(what: string, get: () => Promise<T | undefined>, timeoutMs = 8000): Promise<T> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const v = await get();
    if (v !== undefined) return v;
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

const pushOf = (pushkey: string, eventId: string) => () => gateway.for(pushkey).find((p) => p.event_id === eventId);

/** A room of `members` (the first creates it), all joined. */
async function roomOf(members: RoomUser[], body: Record<string, unknown> = {}): Promise<string> {
  const roomId = await members[0]!.createRoom({ preset: "public_chat", ...body });
  for (const m of members.slice(1)) expect((await m.join(roomId)).status).toBe(200);
  return roomId;
}

describe("pushers", () => {
  it("sets, lists, updates and deletes a pusher", async () => {
    const alice = await newUser("alice");
    await addPusher(alice, "key-a", { profile_tag: "tag" });
    let res = await alice.call("GET", "/_matrix/client/v3/pushers");
    expect(res.json.pushers).toEqual([
      {
        pushkey: "key-a",
        kind: "http",
        app_id: "org.example.app",
        app_display_name: "Example",
        device_display_name: "Phone",
        profile_tag: "tag",
        lang: "en",
        data: { url: gateway.url(), custom: "kept" },
      },
    ]);
    await addPusher(alice, "key-a", { lang: "fr" });
    await addPusher(alice, "key-b");
    res = await alice.call("GET", "/_matrix/client/v3/pushers");
    expect(res.json.pushers.map((p: any) => [p.pushkey, p.lang])).toEqual([["key-a", "fr"], ["key-b", "en"]]);
    expect((await alice.call("POST", "/_matrix/client/v3/pushers/set", { kind: null, app_id: "org.example.app", pushkey: "key-a" })).status).toBe(200);
    res = await alice.call("GET", "/_matrix/client/v3/pushers");
    expect(res.json.pushers.map((p: any) => p.pushkey)).toEqual(["key-b"]);
  });

  it("refuses bad pushers with the spec's errors", async () => {
    const alice = await newUser("alice");
    const missing = await alice.call("POST", "/_matrix/client/v3/pushers/set", { kind: "http", app_id: "a", pushkey: "k", data: { url: gateway.url() } });
    expect([missing.status, missing.json.errcode]).toEqual([400, "M_MISSING_PARAM"]);
    const noKind = await alice.call("POST", "/_matrix/client/v3/pushers/set", { app_id: "a", pushkey: "k" });
    expect([noKind.status, noKind.json.errcode]).toEqual([400, "M_MISSING_PARAM"]);
    const noUrl = await setPusher(alice, "k", { data: {} });
    expect([noUrl.status, noUrl.json.errcode]).toEqual([400, "M_MISSING_PARAM"]);
    for (const url of ["https://gw.example/notify", "ftp://gw.example/_matrix/push/v1/notify", "not a url"]) {
      const bad = await setPusher(alice, "k", { data: { url } });
      expect([bad.status, bad.json.errcode], url).toEqual([400, "M_INVALID_PARAM"]);
    }
    const email = await setPusher(alice, "a@example.org", { kind: "email", app_id: "m.email" });
    expect([email.status, email.json.errcode]).toEqual([400, "M_INVALID_PARAM"]);
    const wrongType = await alice.call("POST", "/_matrix/client/v3/pushers/set", { kind: "http", app_id: 5, pushkey: "k" });
    expect(wrongType.status).toBe(400);
    expect((await alice.call("GET", "/_matrix/client/v3/pushers")).json.pushers).toEqual([]);
  });

  it("without append, takes the app_id and pushkey over from another user; with append, shares them", async () => {
    const [alice, bob, carol] = [await newUser("alice"), await newUser("bob"), await newUser("carol")];
    await addPusher(alice, "shared");
    await addPusher(bob, "shared", { append: true });
    expect((await alice.call("GET", "/_matrix/client/v3/pushers")).json.pushers).toHaveLength(1);
    await addPusher(carol, "shared");
    expect((await alice.call("GET", "/_matrix/client/v3/pushers")).json.pushers).toHaveLength(0);
    expect((await bob.call("GET", "/_matrix/client/v3/pushers")).json.pushers).toHaveLength(0);
    expect((await carol.call("GET", "/_matrix/client/v3/pushers")).json.pushers).toHaveLength(1);
  });

  it("goes when its device is deleted", async () => {
    const alice = await newUser("alice");
    const login = await loginUser(hs.url, alice.userId, alice.password);
    const phone = asRoomUser(hs.url, { ...alice, accessToken: login.json.access_token, deviceId: login.json.device_id });
    await addPusher(phone, "phone-key");
    await addPusher(alice, "laptop-key");
    const res = await alice.call("DELETE", `/_matrix/client/v3/devices/${encodeURIComponent(phone.deviceId)}`, { auth: passwordAuth(alice) });
    expect(res.status, JSON.stringify(res.json)).toBe(200);
    expect((await alice.call("GET", "/_matrix/client/v3/pushers")).json.pushers.map((p: any) => p.pushkey)).toEqual(["laptop-key"]);
  });

  it("go when their user is deactivated, a pusher set without a device (by an application service) too", async () => {
    const alice = await newUser("alice");
    await addPusher(alice, "own-key");
    // An application service acting as alice without a device_id sets a pusher tied to no device.
    await hs.services.pushers.set(alice.userId, null, { kind: "http", app_id: "bridge.app", pushkey: "bridge-key", app_display_name: "Bridge", device_display_name: "-", lang: "en", data: { url: gateway.url() } });
    expect((await alice.call("GET", "/_matrix/client/v3/pushers")).json.pushers.map((p: any) => p.pushkey).sort()).toEqual(["bridge-key", "own-key"]);
    const res = await alice.call("POST", "/_matrix/client/v3/account/deactivate", { auth: passwordAuth(alice) });
    expect(res.status, JSON.stringify(res.json)).toBe(200);
    expect(await hs.services.pushers.list(alice.userId)).toEqual([]);
  });

  it("set with other access tokens go on a password change, the changer's own stays", async () => {
    const alice = await newUser("alice");
    const login = await loginUser(hs.url, alice.userId, alice.password);
    const phone = asRoomUser(hs.url, { ...alice, accessToken: login.json.access_token, deviceId: login.json.device_id });
    await addPusher(phone, "phone-key");
    await addPusher(alice, "own-key");
    const res = await alice.call("POST", "/_matrix/client/v3/account/password", { new_password: "a new password 123", auth: passwordAuth(alice) });
    expect(res.status, JSON.stringify(res.json)).toBe(200);
    expect((await alice.call("GET", "/_matrix/client/v3/pushers")).json.pushers.map((p: any) => p.pushkey)).toEqual(["own-key"]);
  });
});

describe("pushes to the gateway", () => {
  it("a DM: the full notification, with the sound of the one-to-one rule", async () => {
    const [alice, bob] = [await newUser("alice"), await newUser("bob")];
    await addPusher(bob, "bob-dm");
    const roomId = await roomOf([alice, bob], { name: "Chat" });
    const eventId = await alice.send(roomId, text("hello bob"));
    const push = await waitFor("the DM's push", pushOf("bob-dm", eventId));
    expect(push).toMatchObject({
      event_id: eventId,
      room_id: roomId,
      type: "m.room.message",
      sender: alice.userId,
      sender_display_name: alice.userId.slice(1).split(":")[0],
      room_name: "Chat",
      content: { msgtype: "m.text", body: "hello bob" },
      counts: { unread: 1 },
      prio: "high",
    });
    expect(push.devices).toEqual([
      { app_id: "org.example.app", pushkey: "bob-dm", pushkey_ts: expect.any(Number), data: { custom: "kept" }, tweaks: { sound: "default" } },
    ]);
    expect(Math.abs(push.devices[0].pushkey_ts - Date.now() / 1000)).toBeLessThan(60);
    // The sender is never pushed their own message.
    await addPusher(alice, "alice-dm");
    const reply = await bob.send(roomId, text("hi"));
    await waitFor("the reply's push", pushOf("alice-dm", reply));
    expect(gateway.for("bob-dm").filter((p) => p.event_id === reply)).toEqual([]);
  });

  it("pushes every notification after a long run of events that notify no one, and across copy batches", async () => {
    const [alice, bob] = [await newUser("alice"), await newUser("bob")];
    await addPusher(bob, "bob-runs");
    const alone = await alice.createRoom({ preset: "private_chat" });
    const shared = await roomOf([alice, bob]);
    const sendMany = async (roomId: string, count: number, prefix: string) => {
      const ids: string[] = [];
      for (let i = 0; i < count; i += 10) {
        ids.push(...(await Promise.all(Array.from({ length: Math.min(10, count - i) }, (_, j) => alice.send(roomId, text(`${prefix} ${i + j}`))))));
      }
      return ids;
    };
    // More events than one copy batch (200 positions) that notify no one, then one that notifies bob.
    await sendMany(alone, 210, "to myself");
    const first = await alice.send(shared, text("bob, are you there?"));
    await waitFor("the push after the quiet run", pushOf("bob-runs", first));
    // More notifying events than one copy batch, all committed while the sender is stopped (as
    // after a restart): one wake copies and pushes each of them, once.
    await hs.services.pushSender.stop();
    await sendMany(alone, 210, "again to myself");
    const many = await sendMany(shared, 205, "for bob");
    await hs.services.pushSender.start();
    await waitFor("every push of the long run", () => many.every((id) => pushOf("bob-runs", id)()), 30_000);
    const pushed = gateway.for("bob-runs").map((p) => p.event_id);
    expect(pushed.length).toBe(new Set(pushed).size);
  }, 60_000);

  it("an invite is pushed to the user invited", async () => {
    const [alice, bob] = [await newUser("alice"), await newUser("bob")];
    await addPusher(bob, "bob-invite");
    const roomId = await alice.createRoom({ preset: "private_chat" });
    expect((await alice.call("POST", roomPath(roomId, "/invite"), { user_id: bob.userId })).status).toBe(200);
    const push = await waitFor("the invite's push", () => gateway.for("bob-invite").find((p) => p.type === "m.room.member"));
    expect(push).toMatchObject({ room_id: roomId, sender: alice.userId, user_is_target: true, content: { membership: "invite" } });
    expect(push.devices[0].tweaks).toMatchObject({ sound: "default" });
  });

  it("a mention highlights; a room message with the default rules notifies quietly", async () => {
    const [alice, bob, carol] = [await newUser("alice"), await newUser("bob"), await newUser("carol")];
    await addPusher(bob, "bob-room");
    const roomId = await roomOf([alice, bob, carol]);
    const plain = await alice.send(roomId, text("hello all"));
    const mention = await alice.send(roomId, text("hey bob", { "m.mentions": { user_ids: [bob.userId] } }));
    const quiet = await waitFor("the message's push", pushOf("bob-room", plain));
    expect(quiet.devices[0].tweaks).toEqual({});
    expect(quiet.prio).toBe("low");
    const loud = await waitFor("the mention's push", pushOf("bob-room", mention));
    expect(loud.devices[0].tweaks).toMatchObject({ highlight: true });
    expect(loud.prio).toBe("high");
    expect(loud.counts.unread).toBe(2);
  });

  it("a muted room pushes nothing", async () => {
    const [alice, bob, carol] = [await newUser("alice"), await newUser("bob"), await newUser("carol")];
    await addPusher(bob, "bob-muted");
    const muted = await roomOf([alice, bob, carol]);
    const other = await roomOf([alice, bob, carol]);
    const rule = await bob.call("PUT", `/_matrix/client/v3/pushrules/global/room/${encodeURIComponent(muted)}`, { actions: [] });
    expect(rule.status, JSON.stringify(rule.json)).toBe(200);
    const silent = await alice.send(muted, text("shh"));
    const heard = await alice.send(other, text("after"));
    // Pushes go in order: once the later event arrived, the muted one would have too.
    await waitFor("the other room's push", pushOf("bob-muted", heard));
    expect(gateway.for("bob-muted").filter((p) => p.event_id === silent)).toEqual([]);
  });

  it("an event_id_only pusher gets the event ID, the room, the counts and the devices only", async () => {
    const [alice, bob] = [await newUser("alice"), await newUser("bob")];
    await addPusher(bob, "bob-idonly", { data: { url: gateway.url(), format: "event_id_only" } });
    const roomId = await roomOf([alice, bob]);
    const eventId = await alice.send(roomId, text("secret"));
    const push = await waitFor("the push", pushOf("bob-idonly", eventId));
    expect(push.event_id).toBe(eventId);
    expect(push.room_id).toBe(roomId);
    expect(push.counts).toEqual({ unread: 1 });
    expect(push.devices[0].data).toEqual({ format: "event_id_only" });
    for (const key of ["content", "type", "sender", "sender_display_name", "room_name"]) expect(push).not.toHaveProperty(key);
  });

  it("a gateway down for a while gets each notification once when it is back", async () => {
    const [alice, bob] = [await newUser("alice"), await newUser("bob")];
    await addPusher(bob, "bob-down");
    const roomId = await roomOf([alice, bob]);
    gateway.down = true;
    const sent: string[] = [];
    try {
      for (let i = 0; i < 3; i++) sent.push(await alice.send(roomId, text(`while down ${i}`)));
      await new Promise((r) => setTimeout(r, 1500));
      expect(gateway.for("bob-down")).toEqual([]);
    } finally {
      gateway.down = false;
    }
    await waitFor("every push", () => sent.every((id) => pushOf("bob-down", id)()), 15_000);
    await new Promise((r) => setTimeout(r, 1000));
    expect(gateway.for("bob-down").map((p) => p.event_id)).toEqual(sent);
  });

  it("after a gateway outage, what the user read meanwhile is not pushed, and the rest carries the count at sending", async () => {
    const [alice, bob] = [await newUser("alice"), await newUser("bob")];
    await addPusher(bob, "bob-caught-up");
    const roomId = await roomOf([alice, bob]);
    gateway.down = true;
    const sent: string[] = [];
    try {
      for (let i = 0; i < 3; i++) sent.push(await alice.send(roomId, text(`while down ${i}`)));
      // Bob reads the first two on another device while his phone's gateway is down.
      const res = await bob.call("POST", roomPath(roomId, `/receipt/m.read/${encodeURIComponent(sent[1]!)}`), {});
      expect(res.status).toBe(200);
      await new Promise((r) => setTimeout(r, 1000));
    } finally {
      gateway.down = false;
    }
    const last = await waitFor("the unread message's push", pushOf("bob-caught-up", sent[2]!), 15_000);
    await new Promise((r) => setTimeout(r, 1000));
    const pushes = gateway.for("bob-caught-up");
    expect(pushes.filter((p) => p.event_id !== undefined).map((p) => p.event_id)).toEqual([sent[2]]);
    expect(last.counts).toEqual({ unread: 1 });
    // The receipt's count update went too.
    expect(pushes.some((p) => p.event_id === undefined)).toBe(true);
  });

  it("a rejected pushkey removes its pusher", async () => {
    const [alice, bob] = [await newUser("alice"), await newUser("bob")];
    await addPusher(bob, "bob-rejected");
    await addPusher(bob, "bob-kept");
    gateway.rejecting.add("bob-rejected");
    const roomId = await roomOf([alice, bob]);
    const eventId = await alice.send(roomId, text("hello"));
    await waitFor("the push", pushOf("bob-rejected", eventId));
    const listed = await eventually("the pusher's removal", async () => {
      const keys: string[] = (await bob.call("GET", "/_matrix/client/v3/pushers")).json.pushers.map((p: any) => p.pushkey);
      return keys.includes("bob-rejected") ? undefined : keys;
    });
    expect(listed).toEqual(["bob-kept"]);
    const later = await alice.send(roomId, text("again"));
    await waitFor("the kept pusher's push", pushOf("bob-kept", later));
    expect(gateway.for("bob-rejected").filter((p) => p.event_id === later)).toEqual([]);
  });

  it("a read receipt sends the zero count, without an event", async () => {
    const [alice, bob] = [await newUser("alice"), await newUser("bob")];
    await addPusher(bob, "bob-read");
    const roomId = await roomOf([alice, bob]);
    const eventId = await alice.send(roomId, text("read me"));
    await waitFor("the push", pushOf("bob-read", eventId));
    const res = await bob.call("POST", roomPath(roomId, `/receipt/m.read/${encodeURIComponent(eventId)}`), {});
    expect(res.status).toBe(200);
    const update = await waitFor("the count update", () => gateway.for("bob-read").find((p) => p.event_id === undefined));
    expect(update.counts).toEqual({ unread: 0 });
    expect(update).not.toHaveProperty("content");
  });

  it("a gateway on loopback not named in push_gateways_insecure gets nothing", async () => {
    const [alice, bob] = [await newUser("alice"), await newUser("bob")];
    await addPusher(bob, "bob-private", { data: { url: gateway.url("localhost") } });
    await addPusher(bob, "bob-allowed");
    const roomId = await roomOf([alice, bob]);
    const eventId = await alice.send(roomId, text("hello"));
    await waitFor("the allowed gateway's push", pushOf("bob-allowed", eventId));
    await new Promise((r) => setTimeout(r, 300));
    expect(gateway.for("bob-private")).toEqual([]);
  });
});

describe("GET /notifications", () => {
  it("lists the notifications newest first, pages them, marks the read ones, filters highlights", async () => {
    const [alice, bob, carol] = [await newUser("alice"), await newUser("bob"), await newUser("carol")];
    const roomId = await roomOf([alice, bob, carol]);
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) ids.push(await alice.send(roomId, text(`m${i}`, i === 3 ? { "m.mentions": { user_ids: [bob.userId] } } : {})));
    await bob.call("POST", roomPath(roomId, `/receipt/m.read/${encodeURIComponent(ids[1]!)}`), {});
    const get = (query: string) => bob.call("GET", `/_matrix/client/v3/notifications${query}`);
    // Notifications are copied after commit: wait for the last one.
    const all = await eventually("the notifications", async () => {
      const r = await get("?limit=2");
      return r.json.notifications?.[0]?.event.event_id === ids[4] ? r : undefined;
    });
    const pages: any[] = [...all.json.notifications];
    let next = all.json.next_token;
    while (next) {
      const page = await get(`?limit=2&from=${encodeURIComponent(next)}`);
      expect(page.status).toBe(200);
      pages.push(...page.json.notifications);
      next = page.json.next_token;
    }
    expect(pages.map((p) => p.event.event_id)).toEqual([...ids].reverse());
    expect(pages.map((p) => p.read)).toEqual([false, false, false, true, true]);
    expect(pages[0]).toMatchObject({ room_id: roomId, actions: expect.arrayContaining(["notify"]), profile_tag: null, ts: expect.any(Number) });
    expect(pages[0].event.content.body).toBe("m4");
    const highlights = await get("?only=highlight");
    expect(highlights.json.notifications.map((p: any) => p.event.event_id)).toEqual([ids[3]]);
    expect((await get("?from=nonsense")).status).toBe(400);
    expect((await alice.call("GET", "/_matrix/client/v3/notifications")).json.notifications).toEqual([]);
  });

  it("keeps notifications a receipt read before the push sender copied them", async () => {
    const [alice, bob] = [await newUser("alice"), await newUser("bob")];
    const roomId = await roomOf([alice, bob]);
    // The sender copies notifications a little after each commit; stopped, it copies nothing until
    // it starts again, so both reads below land before the copy.
    await hs.services.pushSender.stop();
    let ids: string[];
    try {
      ids = [await alice.send(roomId, text("one")), await alice.send(roomId, text("two")), await alice.send(roomId, text("three"))];
      // As a client does that marks a message read as soon as it shows.
      expect((await bob.call("POST", roomPath(roomId, `/receipt/m.read/${encodeURIComponent(ids[1]!)}`), {})).status).toBe(200);
    } finally {
      await hs.services.pushSender.start();
    }
    const listed = await eventually("the notifications", async () => {
      const r = await bob.call("GET", "/_matrix/client/v3/notifications");
      return r.json.notifications?.length === 3 ? r.json.notifications : undefined;
    });
    expect(listed.map((n: any) => [n.event.event_id, n.read])).toEqual([
      [ids[2], false],
      [ids[1], true],
      [ids[0], true],
    ]);
  });
});
