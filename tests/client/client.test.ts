// The client SDK core (client/client.ts, sync.ts, room.ts, http.ts) against a real Parley:
// registration and login, rooms, messages through the iterator and the events, history paging,
// typing and receipts, leaving; the sync loop riding out dropped connections, 5xx and 429, and
// ending on a dead token; the crypto hooks called where the E2EE layer needs them.
import { connect, createServer, type Server, type Socket } from "node:net";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { ParleyClient, type ClientCryptoHooks, type ParleyClientEvents } from "../../client/client.ts";
import { MatrixApiError, MatrixConnectionError, MatrixHttp } from "../../client/http.ts";
import type { TimelineEvent } from "../../client/room.ts";
import type { SyncState } from "../../client/sync.ts";
import { freePort } from "../free-port.ts";
import { startTestServer, type TestServer } from "../harness.ts";

let hs: TestServer;
let tokenServer: TestServer;
/** Run after each test: listeners off, per-test clients stopped (the shared ones go on). */
const cleanups: Array<() => unknown> = [];
const clients: ParleyClient[] = [];
beforeAll(async () => {
  // The registration-token server starts alongside: each start is seconds on a loaded machine.
  [hs, tokenServer] = await Promise.all([startTestServer(), startTestServer({ config: { registration: "token", registration_tokens: ["let-me-in"] } })]);
});
afterEach(async () => {
  await Promise.all(cleanups.splice(0).map((cleanup) => cleanup()));
});
afterAll(async () => {
  await Promise.all(clients.map((c) => c.stop()));
  await Promise.all([hs?.destroy(), tokenServer?.destroy()]);
});

let n = 0;
/** Short backoff: the tests wait for reconnections, a person's client would wait longer. */
const fastSync = { backoff: { initialMs: 50, maxMs: 400 } };

async function newClient(name: string, opts: { base?: string; fetch?: typeof fetch; pollTimeoutMs?: number } = {}): Promise<ParleyClient> {
  const base = opts.base ?? hs.url;
  const fetchImpl = opts.fetch;
  const registered = await ParleyClient.register(base, `${name}${++n}`, "correct horse battery", fetchImpl ? { fetch: fetchImpl } : {});
  const client = new ParleyClient({
    baseUrl: base,
    accessToken: registered.http.accessToken!,
    userId: registered.userId,
    deviceId: registered.deviceId,
    ...(fetchImpl ? { fetch: fetchImpl } : {}),
    sync: { ...fastSync, ...(opts.pollTimeoutMs ? { pollTimeoutMs: opts.pollTimeoutMs } : {}) },
  });
  clients.push(client);
  return client;
}

/** Resolves once `check` holds, checking after each sync of `client` (and now). */
async function until<T>(client: ParleyClient, check: () => T | undefined | false, what: string, timeoutMs = 8_000): Promise<T> {
  const now = check();
  if (now) return now;
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => {
      client.off("sync", onSync);
      reject(new Error(`timed out waiting for ${what}`));
    }, timeoutMs);
    const onSync = () => {
      const value = check();
      if (value) {
        clearTimeout(timer);
        client.off("sync", onSync);
        resolve(value);
      }
    };
    client.on("sync", onSync);
  });
}

/** Another client on the same device and token (no registration: it costs a password hash). */
function sameDevice(client: ParleyClient, extra: { crypto?: ClientCryptoHooks; pollTimeoutMs?: number; fetch?: typeof fetch } = {}): ParleyClient {
  const copy = new ParleyClient({
    baseUrl: hs.url,
    accessToken: client.http.accessToken!,
    userId: client.userId,
    deviceId: client.deviceId,
    ...(extra.crypto ? { crypto: extra.crypto } : {}),
    ...(extra.fetch ? { fetch: extra.fetch } : {}),
    sync: { ...fastSync, ...(extra.pollTimeoutMs ? { pollTimeoutMs: extra.pollTimeoutMs } : {}) },
  });
  clients.push(copy);
  // Stopped after the test: a copy syncing on would take the shared client's to-device messages.
  cleanups.push(() => copy.stop());
  return copy;
}

/** Registers a listener removed after the test (the shared clients outlive it). */
function listen<K extends keyof ParleyClientEvents>(client: ParleyClient, event: K, listener: (...args: ParleyClientEvents[K]) => void): void {
  const on = client.on as (e: K, l: (...args: ParleyClientEvents[K]) => void) => ParleyClient;
  const off = client.off as (e: K, l: (...args: ParleyClientEvents[K]) => void) => ParleyClient;
  on.call(client, event, listener);
  cleanups.push(() => off.call(client, event, listener));
}

let shared: Promise<{ alice: ParleyClient; bob: ParleyClient }> | undefined;
/** Alice and Bob, registered and syncing once for the whole file (registration hashes a password: slow). */
function sharedClients() {
  shared ??= (async () => {
    const [alice, bob] = await Promise.all([newClient("alice"), newClient("bob")]);
    await Promise.all([alice.start(), bob.start()]);
    return { alice, bob };
  })();
  return shared;
}

/** The shared clients and a new room both have joined. */
async function pair(opts: { encrypted?: boolean } = {}) {
  const { alice, bob } = await sharedClients();
  const { encrypted } = opts;
  const roomId = await alice.createRoom({ invite: [bob.userId], ...(encrypted ? { encrypted } : {}) });
  await until(bob, () => bob.room(roomId)?.membership === "invite", "bob's invite");
  await bob.joinRoom(roomId);
  await until(alice, () => alice.room(roomId)?.members().get(bob.userId)?.membership === "join", "bob's join at alice");
  await until(bob, () => bob.room(roomId)?.membership === "join", "bob's join at bob");
  return { alice, bob, roomId };
}

describe("accounts", () => {
  it("registers through the UIA dance and logs in again with the password", async () => {
    const name = `carol${++n}`;
    const registered = await ParleyClient.register(hs.url, name, "correct horse battery", { initialDeviceDisplayName: "first" });
    expect(registered.userId).toBe(`@${name}:test.local`);
    const again = await ParleyClient.login(hs.url, name, "correct horse battery", { deviceId: "SECOND" });
    expect(again.userId).toBe(registered.userId);
    expect(again.deviceId).toBe("SECOND");
    const devices = await again.devices();
    expect(devices.map((d) => d.device_id).sort()).toEqual([registered.deviceId, "SECOND"].sort());
    expect(devices.find((d) => d.device_id === registered.deviceId)?.display_name).toBe("first");

    const wrong = await ParleyClient.login(hs.url, name, "wrong password").catch((e) => e);
    expect(wrong).toBeInstanceOf(MatrixApiError);
    expect(wrong.errcode).toBe("M_FORBIDDEN");
  });

  it("registers with a registration token where the server asks for one, and refuses without", async () => {
    {
      const refused = await ParleyClient.register(tokenServer.url, "dave", "correct horse battery").catch((e) => e);
      expect(refused).toBeInstanceOf(MatrixApiError);
      expect(refused.message).toMatch(/m\.login\.registration_token/);
      const wrongToken = await ParleyClient.register(tokenServer.url, "dave", "correct horse battery", { registrationToken: "nope" }).catch((e) => e);
      expect(wrongToken).toBeInstanceOf(MatrixApiError);
      const dave = await ParleyClient.register(tokenServer.url, "dave", "correct horse battery", { registrationToken: "let-me-in" });
      expect(dave.userId).toBe("@dave:test.local");
    }
  });

  it("sets a display name that the other side reads from the profile and the room", async () => {
    const { alice, bob, roomId } = await pair();
    await bob.setDisplayName("Bobby");
    expect(await alice.getProfile(bob.userId)).toMatchObject({ displayname: "Bobby" });
    // The display name change is an m.room.member event in every room of bob's.
    await until(alice, () => alice.room(roomId)?.members().get(bob.userId)?.displayname === "Bobby", "bob's new name in the room");
    // No room name: the room is named after its other member (the heroes of the summary).
    expect(alice.room(roomId)!.name).toBe("Bobby");
  });
});

describe("rooms and messages", () => {
  it("delivers messages to the other client through the iterator and the events, in order", async () => {
    const { alice, bob, roomId } = await pair();
    const iterator = bob.timeline();
    const viaEvents: string[] = [];
    listen(bob, "timeline", (room, event) => {
      if (room.roomId === roomId && event.type === "m.room.message") viaEvents.push(event.content.body as string);
    });
    const sent = [];
    for (const body of ["one", "two", "three"]) sent.push(await alice.sendText(roomId, body));
    expect(new Set(sent).size).toBe(3);

    const viaIterator: TimelineEvent[] = [];
    for await (const { room, event } of iterator) {
      if (room.roomId !== roomId || event.type !== "m.room.message") continue;
      viaIterator.push(event);
      if (viaIterator.length === 3) break;
    }
    expect(viaIterator.map((e) => e.content.body)).toEqual(["one", "two", "three"]);
    expect(viaIterator.map((e) => e.event_id)).toEqual(sent);
    expect(viaIterator[0]!.sender).toBe(alice.userId);
    expect(viaEvents).toEqual(["one", "two", "three"]);
    expect(bob.room(roomId)!.timeline.filter((e) => e.type === "m.room.message").map((e) => e.content.body)).toEqual(["one", "two", "three"]);
  });

  it("sends once when the answer to a send is lost and the client retries it", async () => {
    const { alice, roomId } = await pair();
    let lost = 0;
    const losing: typeof fetch = async (input, init) => {
      const answer = await fetch(input, init);
      // The server took the event; its answer never reaches the client.
      if (String(input).includes("/send/m.room.message/") && lost++ === 0) throw new TypeError("fetch failed");
      return answer;
    };
    const sender = new ParleyClient({ baseUrl: hs.url, accessToken: alice.http.accessToken!, userId: alice.userId, deviceId: alice.deviceId, fetch: losing });
    const eventId = await sender.sendText(roomId, "only once");
    expect(lost).toBe(2);
    const page = await alice.messages(roomId, { limit: 10 });
    const copies = page.events.filter((e) => e.content.body === "only once");
    // The retry used the same transaction ID: the server answered with the first event, not a second one.
    expect(copies.map((e) => e.event_id)).toEqual([eventId]);
  });

  it("records a direct chat in m.direct", async () => {
    const { alice, bob } = await sharedClients();
    const roomId = await alice.createRoom({ invite: [bob.userId], isDirect: true });
    const direct = await alice.http.request("GET", `/_matrix/client/v3/user/${encodeURIComponent(alice.userId)}/account_data/m.direct`);
    expect(direct[bob.userId]).toContain(roomId);
    const invite = await until(bob, () => bob.room(roomId)?.getState("m.room.member", bob.userId), "the invite");
    expect(invite.content.is_direct).toBe(true);
  });

  it("ends the timeline iterator when the client stops", async () => {
    const client = sameDevice((await sharedClients()).alice);
    await client.start();
    const iterator = client.timeline();
    const next = iterator.next();
    await client.stop();
    expect(await next).toEqual({ value: undefined, done: true });
  });

  it("names rooms per the spec: the name, else the heroes", async () => {
    const { alice, bob, roomId } = await pair();
    const named = await alice.createRoom({ name: "Project X", topic: "plans", invite: [bob.userId] });
    await until(bob, () => bob.room(named)?.membership === "invite", "the invite");
    // An invite is named from its stripped state.
    expect(bob.room(named)!.name).toBe("Project X");
    await bob.joinRoom(named);
    await until(bob, () => bob.room(named)?.topic === "plans", "the topic");
    expect(bob.room(named)!.name).toBe("Project X");
    // Unnamed, two members: each sees the other's display name (the localpart, set at registration).
    expect(bob.room(roomId)!.name).toBe((await bob.getProfile(alice.userId)).displayname);
    expect(alice.room(roomId)!.name).toBe((await alice.getProfile(bob.userId)).displayname);
    expect(alice.room(roomId)!.name).not.toBe("Empty Room");
  });

  it("pages the history backwards with messages() until the start of the room", async () => {
    const { alice, bob, roomId } = await pair();
    for (let i = 0; i < 7; i++) await alice.sendText(roomId, `m${i}`);
    const bodies: string[] = [];
    let from: string | undefined;
    let pages = 0;
    do {
      const page = await bob.messages(roomId, { limit: 3, ...(from ? { from } : {}) });
      pages++;
      bodies.push(...page.events.filter((e) => e.type === "m.room.message").map((e) => e.content.body as string));
      from = page.end;
      if (page.events.length === 0) break;
    } while (from && pages < 20);
    // Newest first, all seven, then the room's creation events ended the paging.
    expect(bodies).toEqual(["m6", "m5", "m4", "m3", "m2", "m1", "m0"]);
    expect(pages).toBeGreaterThan(3);
  });

  it("shows typing and read receipts to the other client", async () => {
    const { alice, bob, roomId } = await pair();
    let typingEvents = 0;
    listen(bob, "typing", (room) => {
      if (room.roomId === roomId) typingEvents++;
    });
    await alice.sendTyping(roomId, true, 10_000);
    await until(bob, () => bob.room(roomId)!.typing.includes(alice.userId), "alice typing");
    expect(typingEvents).toBeGreaterThan(0);
    await alice.sendTyping(roomId, false);
    await until(bob, () => !bob.room(roomId)!.typing.includes(alice.userId), "alice stopped typing");

    const eventId = await alice.sendText(roomId, "read me");
    await until(bob, () => bob.room(roomId)!.timeline.some((e) => e.event_id === eventId), "the message");
    await until(bob, () => bob.room(roomId)!.unreadCount > 0, "an unread count");
    await bob.sendReadReceipt(roomId, eventId);
    const receipt = await until(alice, () => alice.room(roomId)!.receipts.get(bob.userId), "bob's receipt");
    expect(receipt).toMatchObject({ eventId, type: "m.read" });
    expect(receipt.ts).toBeGreaterThan(0);
    await until(bob, () => bob.room(roomId)!.unreadCount === 0, "the unread count cleared by the receipt");
  });

  it("passes presence to the other client", async () => {
    const { alice, bob } = await pair();
    const seen = new Promise<string | undefined>((resolve) =>
      listen(bob, "presence", (userId, presence) => {
        if (userId === alice.userId && presence.status_msg === "at lunch") resolve(presence.presence);
      }),
    );
    await alice.setPresence("unavailable", "at lunch");
    expect(await seen).toBe("unavailable");
  });

  it("sees a member leave, and its own leave moves the room to membership leave", async () => {
    const { alice, bob, roomId } = await pair();
    await bob.leaveRoom(roomId);
    await until(alice, () => alice.room(roomId)!.members().get(bob.userId)?.membership === "leave", "bob's leave at alice");
    await until(bob, () => bob.room(roomId)?.membership === "leave", "bob's own leave");
    // Alone in the room: empty, with the hint of who was there.
    const bobName = (await alice.getProfile(bob.userId)).displayname;
    await until(alice, () => alice.room(roomId)!.name === `Empty Room (was ${bobName})`, "the empty room's name");
    await alice.leaveRoom(roomId);
    await until(alice, () => alice.room(roomId)?.membership === "leave", "alice's leave");
  });

  it("delivers to-device messages that no crypto consumed as toDevice events", async () => {
    const { alice, bob } = await pair();
    const got = new Promise<Record<string, unknown>>((resolve) => listen(bob, "toDevice", resolve));
    await alice.sendToDevice("org.example.ping", { [bob.userId]: { [bob.deviceId]: { hello: "bob" } } });
    expect(await got).toMatchObject({ type: "org.example.ping", sender: alice.userId, content: { hello: "bob" } });
  });
});

/** Stand-in for the E2EE layer: "encrypts" by wrapping the JSON, and records each call. */
function fakeCrypto(calls: string[]): ClientCryptoHooks {
  return {
    async processSync(sync) {
      calls.push("processSync");
      return sync.to_device?.events ?? [];
    },
    async decryptRoomEvent(_roomId, event) {
      calls.push(`decrypt:${event.event_id}`);
      const inner = JSON.parse(String(event.content.ciphertext));
      return { ...event, type: inner.type, content: inner.content, encrypted: { decrypted: true, senderCurve25519: "fake", verified: "unverified" } };
    },
    async encryptRoomEvent(roomId, type, content, members) {
      calls.push(`encrypt:${[...members].sort().join(",")}`);
      return { algorithm: "m.megolm.v1.aes-sha2", ciphertext: JSON.stringify({ type, content, room_id: roomId }) };
    },
    onMembershipChange(_roomId, userId, membership) {
      calls.push(`member:${userId}:${membership}`);
    },
  };
}

describe("crypto hooks", () => {
  it("encrypts for the joined and invited members, decrypts the timeline and history, and reports membership changes", async () => {
    const shared = await pair({ encrypted: true });
    const { roomId } = shared;
    const aliceCalls: string[] = [];
    const bobCalls: string[] = [];
    const alice = sameDevice(shared.alice, { crypto: fakeCrypto(aliceCalls) });
    const bob = sameDevice(shared.bob, { crypto: fakeCrypto(bobCalls) });
    await Promise.all([alice.start(), bob.start()]);
    const carol = await ParleyClient.register(hs.url, `carol${++n}`, "correct horse battery");
    await alice.invite(roomId, carol.userId);

    const eventId = await alice.sendText(roomId, "secret");
    expect(aliceCalls).toContain(`encrypt:${[alice.userId, bob.userId, carol.userId].sort().join(",")}`);
    const received = await until(bob, () => bob.room(roomId)!.timeline.find((e) => e.event_id === eventId), "the encrypted message");
    expect(received).toMatchObject({ type: "m.room.message", content: { body: "secret" }, encrypted: { decrypted: true } });
    // processSync comes before the room's events of the same sync.
    expect(bobCalls.indexOf("processSync")).toBeLessThan(bobCalls.indexOf(`decrypt:${eventId}`));
    await until(alice, () => aliceCalls.includes(`member:${carol.userId}:invite`), "the invite reported to crypto");

    const history = await bob.messages(roomId, { limit: 5 });
    expect(history.events.find((e) => e.event_id === eventId)).toMatchObject({ content: { body: "secret" }, encrypted: { decrypted: true } });
  });

  it("hands a sync to crypto again when crypto's own request failed on the connection", async () => {
    const { alice, bob } = await pair();
    const calls: string[] = [];
    const crypto = fakeCrypto(calls);
    let failOnce = true;
    const flakyCrypto: ClientCryptoHooks = {
      ...crypto,
      async processSync(sync) {
        if (failOnce && sync.to_device?.events?.length) {
          failOnce = false;
          throw new MatrixConnectionError("POST /_matrix/client/v3/keys/upload failed: fetch failed");
        }
        return crypto.processSync(sync);
      },
    };
    // A device of its own: two clients of one device would take each other's to-device messages.
    const login = await ParleyClient.login(hs.url, bob.userId, "correct horse battery");
    const bobWithCrypto = new ParleyClient({ baseUrl: hs.url, accessToken: login.http.accessToken!, userId: bob.userId, deviceId: login.deviceId, crypto: flakyCrypto, sync: fastSync });
    clients.push(bobWithCrypto);
    cleanups.push(() => bobWithCrypto.stop());
    await bobWithCrypto.start();
    const got = new Promise<Record<string, unknown>>((resolve) => listen(bobWithCrypto, "toDevice", resolve));
    await alice.sendToDevice("org.example.key", { [bob.userId]: { [login.deviceId]: { n: 1 } } });
    expect(await got).toMatchObject({ type: "org.example.key", content: { n: 1 } });
    expect(failOnce).toBe(false);
  });

  it("refuses to send in the clear into an encrypted room without crypto, even before the room is synced", async () => {
    const dana = sameDevice((await sharedClients()).alice);
    // Not started: the client has not seen the room's state; it asks the server.
    const roomId = await dana.createRoom({ encrypted: true });
    await expect(dana.sendText(roomId, "plain")).rejects.toThrow(/encrypted/);
    const page = await dana.messages(roomId, { limit: 10 });
    expect(page.events.some((e) => e.type === "m.room.message")).toBe(false);
  });

  it("marks encrypted events as undecryptable without crypto", async () => {
    const { alice, bob, roomId } = await pair({ encrypted: true });
    // Alice's copy of the shared client would change the other tests: a client of her own with crypto.
    const aliceWithCrypto = sameDevice(alice, { crypto: fakeCrypto([]) });
    const eventId = await aliceWithCrypto.sendText(roomId, "secret");
    const received = await until(bob, () => bob.room(roomId)!.timeline.find((e) => e.event_id === eventId), "the message");
    expect(received).toMatchObject({ type: "m.room.encrypted", encrypted: { decrypted: false, error: "NO_CRYPTO" } });
  });
});

/** A TCP proxy in front of the test server that can drop every connection and refuse new ones. */
async function droppingProxy(targetPort: number) {
  const port = await freePort();
  const sockets = new Set<Socket>();
  let server: Server | undefined;
  const listen = () =>
    new Promise<void>((resolve, reject) => {
      server = createServer((client) => {
        const upstream = connect(targetPort, "127.0.0.1");
        for (const s of [client, upstream]) {
          sockets.add(s);
          s.on("close", () => sockets.delete(s));
          s.on("error", () => s.destroy());
        }
        client.pipe(upstream).pipe(client);
        client.on("close", () => upstream.destroy());
        upstream.on("close", () => client.destroy());
      });
      server.once("error", reject);
      server.listen(port, "127.0.0.1", () => resolve());
    });
  await listen();
  return {
    url: `http://127.0.0.1:${port}`,
    /** Resets every open connection (the long-poll in flight too) and refuses new ones. */
    async down() {
      const closed = new Promise<void>((resolve) => server!.close(() => resolve()));
      for (const s of sockets) s.resetAndDestroy();
      await closed;
    },
    up: listen,
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => (server?.listening ? server.close(() => resolve()) : resolve()));
    },
  };
}


describe("the sync loop", () => {
  it("rides out a dropped connection and refused connections, and catches up", async () => {
    const proxy = await droppingProxy(hs.port);
    try {
      const { alice } = await sharedClients();
      const bob = await newClient("bob", { base: proxy.url });
      await bob.start();
      const roomId = await alice.createRoom({ invite: [bob.userId] });
      await until(bob, () => bob.room(roomId), "the invite");
      await bob.joinRoom(roomId);
      await until(bob, () => bob.room(roomId)?.membership === "join", "the join");

      const states: Array<{ state: SyncState; fatal?: boolean }> = [];
      bob.on("sync", (state, data) => states.push({ state, ...(data?.fatal !== undefined ? { fatal: data.fatal } : {}) }));
      await new Promise((r) => setTimeout(r, 100)); // bob's long-poll is in flight
      await proxy.down();
      const whileDown = await alice.sendText(roomId, "while you were away");
      await until(bob, () => states.filter((s) => s.state === "ERROR").length >= 2, "bob's failed attempts");
      await proxy.up();
      await until(bob, () => bob.room(roomId)!.timeline.some((e) => e.event_id === whileDown), "the message sent while down");
      expect(states.filter((s) => s.state === "ERROR").every((s) => s.fatal === false)).toBe(true);
      expect(states.some((s) => s.state === "STOPPED")).toBe(false);
      // And it goes on: the next message arrives through the long-poll.
      const after = await alice.sendText(roomId, "welcome back");
      await until(bob, () => bob.room(roomId)!.timeline.some((e) => e.event_id === after), "the next message");
    } finally {
      await proxy.close();
    }
  });

  it("retries failed fetches and 5xx with backoff, and waits out a 429 for its retry_after_ms", async () => {
    const script: Array<"network" | "503" | "429"> = [];
    let rateLimitedAt = 0;
    let retriedAt = 0;
    const flaky: typeof fetch = async (input, init) => {
      if (String(input).includes("/_matrix/client/v3/sync")) {
        const kind = script.shift();
        if (kind === "network") throw new TypeError("fetch failed");
        if (kind === "503") return new Response(JSON.stringify({ errcode: "M_UNKNOWN", error: "restarting" }), { status: 503 });
        if (kind === "429") {
          rateLimitedAt = performance.now();
          return new Response(JSON.stringify({ errcode: "M_LIMIT_EXCEEDED", error: "slow down", retry_after_ms: 300 }), { status: 429 });
        }
        if (rateLimitedAt && !retriedAt) retriedAt = performance.now();
      }
      return fetch(input, init);
    };
    // Short long-polls: the one in flight when the script is set comes back within a second.
    const { alice, bob } = await sharedClients();
    const flakyBob = sameDevice(bob, { fetch: flaky, pollTimeoutMs: 1_000 });
    await flakyBob.start();
    const errors: string[] = [];
    listen(flakyBob, "sync", (state, data) => {
      if (state === "ERROR") errors.push(data?.error instanceof MatrixApiError ? String(data.error.status) : data?.error?.name ?? "?");
    });
    script.push("network", "503", "network", "429");
    await until(flakyBob, () => retriedAt > 0, "the sync after the failures");
    // The 429 was waited out inside MatrixHttp (no ERROR), for at least retry_after_ms.
    expect(errors).toEqual(["MatrixConnectionError", "503", "MatrixConnectionError"]);
    expect(retriedAt - rateLimitedAt).toBeGreaterThanOrEqual(290);
    // Still syncing: an invite reaches it.
    const roomId = await alice.createRoom({ invite: [flakyBob.userId] });
    await until(flakyBob, () => flakyBob.room(roomId)?.membership === "invite", "the invite");
  });

  it("ends with a fatal error when the access token stops working", async () => {
    const client = await newClient("frank", { pollTimeoutMs: 1_000 });
    await client.start();
    const errors: Error[] = [];
    client.on("error", (e) => errors.push(e));
    const stopped = new Promise<void>((resolve) => client.on("sync", (state) => void (state === "STOPPED" && resolve())));
    // Another holder of the token logs it out while the long-poll is waiting.
    await new MatrixHttp({ baseUrl: hs.url, accessToken: client.http.accessToken! }).request("POST", "/_matrix/client/v3/logout", { body: {} });
    await stopped;
    expect(errors).toHaveLength(1);
    expect(errors[0]).toMatchObject({ status: 401, errcode: "M_UNKNOWN_TOKEN" });
  });

  it("refuses to start with a bad token", async () => {
    const client = new ParleyClient({ baseUrl: hs.url, accessToken: "not-a-token", userId: "@nobody:test.local", deviceId: "X", sync: fastSync });
    const states: SyncState[] = [];
    client.on("sync", (s) => states.push(s));
    await expect(client.start()).rejects.toMatchObject({ errcode: "M_UNKNOWN_TOKEN" });
    expect(states).toEqual(["ERROR", "STOPPED"]);
  });
});
