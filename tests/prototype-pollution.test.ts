// User-chosen keys never reach a prototype (issue 20, findings 1–3): a user ID `constructor` in a
// signature upload, a filter path through `__proto__`, an event type `toString` — each once took the
// whole server down or handed the attacker's values to every missing-key lookup in the process.
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import type { TestUser } from "./accounts-helpers.ts";
import { ed25519Key, sign } from "./e2ee-helpers.ts";
import { snapshotGlobals } from "./globals-guard.ts";
import { request, startTestServer, type TestServer } from "./harness.ts";

describe("prototype pollution", () => {
  let hs: TestServer;
  let token: string;
  let roomId: string;
  beforeAll(async () => {
    hs = await startTestServer();
    const reg = await request(hs.url, "POST", "/_matrix/client/v3/register", {
      body: { username: "mallory", password: "correct horse battery", auth: { type: "m.login.dummy" } },
    });
    token = reg.json.access_token;
    roomId = (await request(hs.url, "POST", "/_matrix/client/v3/createRoom", { token, body: {} })).json.room_id;
  });
  afterAll(() => hs?.destroy());

  async function expectServerWorks() {
    expect((await request(hs.url, "GET", "/_matrix/client/versions")).status).toBe(200);
    expect((await request(hs.url, "GET", "/health")).status).toBe(200);
    // The login flows (a password login, an Argon2 hash each time, is made in the key-claim test).
    expect((await request(hs.url, "GET", "/_matrix/client/v3/login")).status).toBe(200);
  }

  let globals = snapshotGlobals();
  beforeEach(() => {
    globals = snapshotGlobals();
  });
  /** Called straight after the attack: puts the globals back first, so the test runner itself keeps working. */
  async function expectUnharmed() {
    const polluted = ({} as Record<string, unknown>).zzz;
    const changes = globals.restore();
    expect(changes).toEqual([]);
    expect(polluted).toBeUndefined();
    await expectServerWorks();
  }

  it("answers a signature upload for user `constructor` per key and keeps serving", async () => {
    const res = await request(hs.url, "POST", "/_matrix/client/v3/keys/signatures/upload", {
      token,
      body: { constructor: { keys: {}, entries: {} } },
    });
    await expectUnharmed();
    expect(res.status).toBe(200);
    expect(Object.keys(res.json.failures.constructor)).toEqual(["keys", "entries"]);
  });

  it("answers a key claim for device `constructor` and keeps serving", async () => {
    const login = await request(hs.url, "POST", "/_matrix/client/v3/login", {
      body: {
        type: "m.login.password",
        identifier: { type: "m.id.user", user: "mallory" },
        password: "correct horse battery",
        device_id: "constructor",
      },
    });
    expect(login.status).toBe(200);
    const upload = await request(hs.url, "POST", "/_matrix/client/v3/keys/upload", {
      token: login.json.access_token,
      body: { one_time_keys: { "signed_curve25519:AAAA": "k1", "__proto__:__proto__": "k2" } },
    });
    expect(upload.status).toBe(200);
    const res = await request(hs.url, "POST", "/_matrix/client/v3/keys/claim", {
      token,
      raw: '{"one_time_keys":{"@mallory:test.local":{"constructor":"signed_curve25519"}}}',
    });
    const proto = await request(hs.url, "POST", "/_matrix/client/v3/keys/claim", {
      token,
      raw: '{"one_time_keys":{"@mallory:test.local":{"constructor":"__proto__"}}}',
    });
    await expectUnharmed();
    expect(res.status).toBe(200);
    expect(JSON.stringify(res.json.one_time_keys)).toBe('{"@mallory:test.local":{"constructor":{"signed_curve25519:AAAA":"k1"}}}');
    expect(proto.status).toBe(200);
    expect(JSON.stringify(proto.json.one_time_keys)).toBe('{"@mallory:test.local":{"constructor":{"__proto__:__proto__":"k2"}}}');
  });

  it("never walks a filter's event_fields through __proto__", async () => {
    const content = '{"msgtype":"m.text","body":"x","a":{"__proto__":{"zzz":1}}}';
    const sent = await request(hs.url, "PUT", `/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/send/m.room.message/p1`, {
      token,
      raw: content,
    });
    expect(sent.status).toBe(200);
    const filter = JSON.stringify({ event_fields: ["content.a.__proto__.zzz", "content.body", "type"] });
    const sync = await request(hs.url, "GET", `/_matrix/client/v3/sync?filter=${encodeURIComponent(filter)}`, { token });
    await expectUnharmed();
    expect(sync.status).toBe(200);
    const events: { type?: string; content?: Record<string, unknown> }[] = sync.json.rooms.join[roomId].timeline.events;
    const mine = events.find((e) => e.content?.body === "x")!;
    // The own `__proto__` key is data like any other: picked, and handed back as JSON.
    expect(JSON.stringify(mine)).toBe('{"content":{"a":{"__proto__":{"zzz":1}},"body":"x"},"type":"m.room.message"}');
  });

  it("keeps a `__proto__` key of event content as data, unchanged through storage and sync", async () => {
    const content = '{"msgtype":"m.text","body":"y","__proto__":{"zzz":2},"b":{"constructor":{"prototype":1}}}';
    const sent = await request(hs.url, "PUT", `/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/send/m.room.message/p2`, {
      token,
      raw: content,
    });
    expect(sent.status).toBe(200);
    const got = await request(hs.url, "GET", `/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/event/${encodeURIComponent(sent.json.event_id)}`, { token });
    expect(got.status).toBe(200);
    await expectUnharmed();
    const served = JSON.parse(got.text).content;
    expect(Object.keys(served).sort()).toEqual(["__proto__", "b", "body", "msgtype"]);
    expect(JSON.stringify(served.__proto__)).toBe('{"zzz":2}');
    expect(got.text).toContain('"b":{"constructor":{"prototype":1}}');
  });

  it("stores account data with a `__proto__` key exactly as sent", async () => {
    const path = `/_matrix/client/v3/user/${encodeURIComponent("@mallory:test.local")}/account_data/__proto__`;
    const put = await request(hs.url, "PUT", path, { token, raw: '{"__proto__":{"a":1},"constructor":2}' });
    expect(put.status).toBe(200);
    const got = await request(hs.url, "GET", path, { token });
    await expectUnharmed();
    expect(got.status).toBe(200);
    expect(got.text).toBe('{"__proto__":{"a":1},"constructor":2}');
  });

  it("stores signed device keys holding a `__proto__` field whole, so their signature still verifies", async () => {
    const login = await request(hs.url, "POST", "/_matrix/client/v3/login", {
      body: { type: "m.login.password", identifier: { type: "m.id.user", user: "mallory" }, password: "correct horse battery", device_id: "PROTO" },
    });
    const user = { userId: "@mallory:test.local", deviceId: "PROTO" } as TestUser;
    const key = ed25519Key("PROTO");
    const unsigned = JSON.parse(
      `{"user_id":"@mallory:test.local","device_id":"PROTO","algorithms":["m.megolm.v1.aes-sha2"],"keys":{"ed25519:PROTO":"${key.publicKeyBase64}"},"__proto__":{"x":1}}`,
    );
    const upload = await request(hs.url, "POST", "/_matrix/client/v3/keys/upload", {
      token: login.json.access_token,
      raw: JSON.stringify({ device_keys: sign(unsigned, user.userId, key) }),
    });
    const query = await request(hs.url, "POST", "/_matrix/client/v3/keys/query", {
      token,
      body: { device_keys: { "@mallory:test.local": ["PROTO"] } },
    });
    await expectUnharmed();
    expect(upload.status).toBe(200);
    const served = JSON.parse(query.text).device_keys["@mallory:test.local"].PROTO;
    expect(JSON.stringify(served.__proto__)).toBe('{"x":1}');
  });

  for (const type of ["__proto__", "constructor", "toString", "hasOwnProperty", "valueOf"]) {
    it(`signs and stores an event of type ${type} (redaction keeps no content keys for it)`, async () => {
      const room = encodeURIComponent(roomId);
      const sent = await request(hs.url, "PUT", `/_matrix/client/v3/rooms/${room}/send/${type}/t-${type}`, {
        token,
        body: { membership: "join", body: "hi" },
      });
      expect(sent.status).toBe(200);
      const state = await request(hs.url, "PUT", `/_matrix/client/v3/rooms/${room}/state/${type}/${type}`, {
        token,
        body: { a: 1 },
      });
      expect(state.status).toBe(200);
      const read = await request(hs.url, "GET", `/_matrix/client/v3/rooms/${room}/state/${type}/${type}`, { token });
      await expectUnharmed();
      expect(read.status).toBe(200);
      expect(read.json).toEqual({ a: 1 });
    });
  }
});
