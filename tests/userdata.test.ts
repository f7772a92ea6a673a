import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { registerUser, type TestUser } from "./accounts-helpers.ts";
import { request, startTestServer, type TestServer } from "./harness.ts";

let hs: TestServer;
let alice: TestUser;
let bob: TestUser;
beforeAll(async () => {
  hs = await startTestServer();
  alice = await registerUser(hs.url, "alice");
  bob = await registerUser(hs.url, "bob");
});
afterAll(() => hs.destroy());

const u = (userId: string) => encodeURIComponent(userId);

describe("profiles", () => {
  it("sets and reads one's own displayname and avatar", async () => {
    const put = await request(hs.url, "PUT", `/_matrix/client/v3/profile/${u(alice.userId)}/displayname`, {
      token: alice.accessToken,
      body: { displayname: "Alice A." },
    });
    expect(put.status).toBe(200);
    await request(hs.url, "PUT", `/_matrix/client/v3/profile/${u(alice.userId)}/avatar_url`, {
      token: alice.accessToken,
      body: { avatar_url: "mxc://test.local/abc" },
    });
    expect((await request(hs.url, "GET", `/_matrix/client/v3/profile/${u(alice.userId)}`)).json).toEqual({
      displayname: "Alice A.",
      avatar_url: "mxc://test.local/abc",
    });
    expect((await request(hs.url, "GET", `/_matrix/client/v3/profile/${u(alice.userId)}/displayname`)).json).toEqual({
      displayname: "Alice A.",
    });
    expect((await request(hs.url, "GET", `/_matrix/client/v3/profile/${u(alice.userId)}/avatar_url`)).json).toEqual({
      avatar_url: "mxc://test.local/abc",
    });
  });

  it("refuses to set another user's profile", async () => {
    const res = await request(hs.url, "PUT", `/_matrix/client/v3/profile/${u(bob.userId)}/displayname`, {
      token: alice.accessToken,
      body: { displayname: "Not Bob" },
    });
    expect(res.status).toBe(403);
    expect(res.json.errcode).toBe("M_FORBIDDEN");
  });

  it("answers 404 M_NOT_FOUND for unknown users and unset fields", async () => {
    const unknown = await request(hs.url, "GET", `/_matrix/client/v3/profile/${u("@nobody:test.local")}`);
    expect(unknown.status).toBe(404);
    expect(unknown.json.errcode).toBe("M_NOT_FOUND");
    const noAvatar = await request(hs.url, "GET", `/_matrix/client/v3/profile/${u(bob.userId)}/avatar_url`);
    expect(noAvatar.status).toBe(404);
  });
});

describe("account data", () => {
  it("stores global account data and returns it as given", async () => {
    const path = `/_matrix/client/v3/user/${u(alice.userId)}/account_data/org.example.settings`;
    const content = { z: 1, a: { nested: [1, "two", null] }, m: true };
    expect((await request(hs.url, "PUT", path, { token: alice.accessToken, body: content })).status).toBe(200);
    const res = await request(hs.url, "GET", path, { token: alice.accessToken });
    expect(res.text).toBe(JSON.stringify(content));
  });

  it("answers 404 M_NOT_FOUND for a type never set", async () => {
    const res = await request(hs.url, "GET", `/_matrix/client/v3/user/${u(alice.userId)}/account_data/org.example.none`, {
      token: alice.accessToken,
    });
    expect(res.status).toBe(404);
    expect(res.json.errcode).toBe("M_NOT_FOUND");
  });

  it("keeps each user's account data to themselves", async () => {
    const path = `/_matrix/client/v3/user/${u(bob.userId)}/account_data/org.example.settings`;
    expect((await request(hs.url, "GET", path, { token: alice.accessToken })).status).toBe(403);
    expect((await request(hs.url, "PUT", path, { token: alice.accessToken, body: {} })).status).toBe(403);
  });

  it("refuses server-managed types with 405 M_BAD_JSON and non-objects with 400", async () => {
    const pushRules = await request(hs.url, "PUT", `/_matrix/client/v3/user/${u(alice.userId)}/account_data/m.push_rules`, {
      token: alice.accessToken,
      body: {},
    });
    expect(pushRules.status).toBe(405);
    expect(pushRules.json.errcode).toBe("M_BAD_JSON");
    const array = await request(hs.url, "PUT", `/_matrix/client/v3/user/${u(alice.userId)}/account_data/x.y`, {
      token: alice.accessToken,
      raw: "[1]",
    });
    expect(array.status).toBe(400);
  });

  it("gives every write a later stream position, for /sync", async () => {
    const before = await hs.services.userData.accountDataSince(alice.userId, 0);
    const last = Math.max(0, ...before.map((c) => c.streamId));
    await request(hs.url, "PUT", `/_matrix/client/v3/user/${u(alice.userId)}/account_data/org.example.stream`, {
      token: alice.accessToken,
      body: { n: 1 },
    });
    const changes = await hs.services.userData.accountDataSince(alice.userId, last);
    expect(changes).toEqual([{ roomId: "", type: "org.example.stream", content: { n: 1 }, streamId: expect.any(Number) }]);
    expect(changes[0]!.streamId).toBeGreaterThan(last);
  });
});

describe("filters", () => {
  it("returns a stored filter exactly as it was given", async () => {
    const filter = {
      room: { timeline: { limit: 20, unread_thread_notifications: true }, state: { lazy_load_members: true } },
      presence: { not_types: ["*"] },
      "org.example.unknown": { kept: true },
    };
    const created = await request(hs.url, "POST", `/_matrix/client/v3/user/${u(alice.userId)}/filter`, {
      token: alice.accessToken,
      body: filter,
    });
    expect(created.status).toBe(200);
    expect(typeof created.json.filter_id).toBe("string");
    const got = await request(hs.url, "GET", `/_matrix/client/v3/user/${u(alice.userId)}/filter/${created.json.filter_id}`, {
      token: alice.accessToken,
    });
    expect(got.text).toBe(JSON.stringify(filter));
  });

  it("answers 404 M_NOT_FOUND for unknown filters and other users' filters", async () => {
    const created = await request(hs.url, "POST", `/_matrix/client/v3/user/${u(alice.userId)}/filter`, {
      token: alice.accessToken,
      body: {},
    });
    const unknown = await request(hs.url, "GET", `/_matrix/client/v3/user/${u(alice.userId)}/filter/999999`, { token: alice.accessToken });
    expect(unknown.status).toBe(404);
    expect(unknown.json.errcode).toBe("M_NOT_FOUND");
    const junk = await request(hs.url, "GET", `/_matrix/client/v3/user/${u(alice.userId)}/filter/abc`, { token: alice.accessToken });
    expect(junk.status).toBe(404);
    const bobs = await request(hs.url, "GET", `/_matrix/client/v3/user/${u(bob.userId)}/filter/${created.json.filter_id}`, {
      token: bob.accessToken,
    });
    expect(bobs.status).toBe(404);
  });

  it("refuses filters of the wrong shape", async () => {
    const res = await request(hs.url, "POST", `/_matrix/client/v3/user/${u(alice.userId)}/filter`, {
      token: alice.accessToken,
      body: { room: { timeline: { limit: "ten" } } },
    });
    expect(res.status).toBe(400);
    expect(res.json.errcode).toBe("M_BAD_JSON");
    // Room and sender lists hold room and user IDs.
    for (const body of [{ room: { timeline: { rooms: ["not_a_room_id"] } } }, { room: { timeline: { senders: ["not_a_sender"] } } }, { room: { not_rooms: ["x"] } }]) {
      const bad = await request(hs.url, "POST", `/_matrix/client/v3/user/${u(alice.userId)}/filter`, { token: alice.accessToken, body });
      expect(bad.status, JSON.stringify(body)).toBe(400);
    }
  });
});

describe("push rules", () => {
  it("serves the default rule set at /pushrules/, /pushrules/global/ and /pushrules/global/{kind}/, and in the initial sync", async () => {
    const res = await request(hs.url, "GET", "/_matrix/client/v3/pushrules/", { token: alice.accessToken });
    expect(res.status).toBe(200);
    const ids = res.json.global.override.map((r: { rule_id: string }) => r.rule_id);
    expect(ids[0]).toBe(".m.rule.master");
    expect(res.json.global.underride.length).toBeGreaterThan(0);
    const global = await request(hs.url, "GET", "/_matrix/client/v3/pushrules/global/", { token: alice.accessToken });
    expect(global.json).toEqual(res.json.global);
    const content = await request(hs.url, "GET", "/_matrix/client/v3/pushrules/global/content/", { token: alice.accessToken });
    expect(content.json).toEqual(res.json.global.content);
    // Never changed, the rules still come in the initial sync's account data, as an object.
    const initial = await request(hs.url, "GET", "/_matrix/client/v3/sync", { token: alice.accessToken });
    const event = initial.json.account_data.events.find((e: { type: string }) => e.type === "m.push_rules");
    expect(event.content).toEqual(res.json);
  });

  it("answers malformed push rule paths with 400", async () => {
    const t = { token: alice.accessToken };
    const base = "/_matrix/client/v3/pushrules";
    for (const path of ["", "/global", "/global/room", "/not_a_scope/", "/global/not_a_template/", "/global/override/.m.rule.master/not_an_attr"]) {
      const res = await request(hs.url, "GET", `${base}${path}`, t);
      expect(res.status, `GET ${path}`).toBe(400);
    }
    for (const path of ["/", "/global", "/global/room", "/global/room/", "/global/override/.m.rule.master/not_an_attr"]) {
      const res = await request(hs.url, "PUT", `${base}${path}`, { ...t, body: { actions: ["notify"], enabled: true } });
      expect(res.status, `PUT ${path}`).toBe(400);
    }
    // The attributes themselves still answer.
    expect((await request(hs.url, "GET", `${base}/global/override/.m.rule.master/enabled`, t)).status).toBe(200);
  });

  it("keeps room rules with any ID and the historical dont_notify action as written", async () => {
    const t = { token: bob.accessToken };
    const path = `/_matrix/client/v3/pushrules/global/room/${encodeURIComponent("#a:example.com")}`;
    expect((await request(hs.url, "PUT", path, { ...t, body: { actions: ["dont_notify"] } })).status).toBe(200);
    expect((await request(hs.url, "GET", path, t)).json).toMatchObject({ rule_id: "#a:example.com", actions: ["dont_notify"] });
    const master = "/_matrix/client/v3/pushrules/global/override/.m.rule.master/actions";
    await request(hs.url, "PUT", master, { ...t, body: { actions: ["dont_notify"] } });
    expect((await request(hs.url, "GET", master, t)).json).toEqual({ actions: ["dont_notify"] });
    await request(hs.url, "PUT", master, { ...t, body: { actions: [] } });
  });

  it("adds, orders, reads, toggles and deletes a user's rules", async () => {
    const base = "/_matrix/client/v3/pushrules/global";
    const t = { token: bob.accessToken };
    const put = await request(hs.url, "PUT", `${base}/content/cats`, { ...t, body: { pattern: "cat*", actions: ["notify"] } });
    expect(put.status).toBe(200);
    await request(hs.url, "PUT", `${base}/content/dogs?after=cats`, { ...t, body: { pattern: "dog*", actions: [] } });
    const all = await request(hs.url, "GET", "/_matrix/client/v3/pushrules/", t);
    expect(all.json.global.content.map((r: { rule_id: string }) => r.rule_id).slice(0, 2)).toEqual(["cats", "dogs"]);
    const one = await request(hs.url, "GET", `${base}/content/cats`, t);
    expect(one.json).toMatchObject({ rule_id: "cats", pattern: "cat*", enabled: true, default: false });

    await request(hs.url, "PUT", `${base}/content/cats/enabled`, { ...t, body: { enabled: false } });
    expect((await request(hs.url, "GET", `${base}/content/cats/enabled`, t)).json).toEqual({ enabled: false });
    await request(hs.url, "PUT", `${base}/override/.m.rule.master/actions`, { ...t, body: { actions: ["notify"] } });
    expect((await request(hs.url, "GET", `${base}/override/.m.rule.master/actions`, t)).json).toEqual({ actions: ["notify"] });

    expect((await request(hs.url, "DELETE", `${base}/content/dogs`, t)).status).toBe(200);
    const gone = await request(hs.url, "GET", `${base}/content/dogs`, t);
    expect(gone.status).toBe(404);
    expect(gone.json.errcode).toBe("M_NOT_FOUND");
    // The rules stream as account data.
    const streamed = await hs.services.userData.accountDataSince(bob.userId, 0);
    expect(streamed.find((c) => c.type === "m.push_rules")?.content).toEqual(
      (await request(hs.url, "GET", "/_matrix/client/v3/pushrules/", t)).json,
    );
  });

  it("refuses bad kinds, scopes and positions", async () => {
    const t = { token: alice.accessToken };
    expect((await request(hs.url, "GET", "/_matrix/client/v3/pushrules/global/nonsense/x", t)).status).toBe(400);
    expect((await request(hs.url, "GET", "/_matrix/client/v3/pushrules/device/content/x", t)).status).toBe(400);
    const before = await request(hs.url, "PUT", "/_matrix/client/v3/pushrules/global/content/x?before=missing", {
      ...t,
      body: { pattern: "x", actions: [] },
    });
    expect(before.status).toBe(400);
  });
});

describe("capabilities", () => {
  it("lists what accounts may change", async () => {
    const res = await request(hs.url, "GET", "/_matrix/client/v3/capabilities", { token: alice.accessToken });
    expect(res.json.capabilities).toMatchObject({
      "m.change_password": { enabled: true },
      "m.set_displayname": { enabled: true },
      "m.set_avatar_url": { enabled: true },
      "m.3pid_changes": { enabled: false },
      "m.get_login_token": { enabled: false },
    });
  });
});
