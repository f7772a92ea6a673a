// The users side of Synapse's admin API (issue 18): users, devices, registration tokens, server
// version, login as a user, account locking; admin-only (403 M_FORBIDDEN for everyone else) and
// audited. https://element-hq.github.io/synapse/latest/admin_api/user_admin_api.html
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loginUser, type TestUser } from "./accounts-helpers.ts";
import { request, startTestServer, type TestServer } from "./harness.ts";

let hs: TestServer;
let admin: TestUser;
let plain: TestUser;

const enc = encodeURIComponent;
const call = (token: string | undefined, method: string, path: string, body?: unknown) =>
  request(hs.url, method, path, { token, ...(body !== undefined ? { body } : {}) });
const asAdmin = (method: string, path: string, body?: unknown) => call(admin.accessToken, method, path, body);

/** A user made through the service (registration on this server needs a token), logged in over HTTP. */
async function makeUser(localpart: string, options: { admin?: boolean } = {}): Promise<TestUser> {
  const password = `pw-${localpart}-secret`;
  const userId = await hs.services.accounts.createUser({ localpart, password, admin: options.admin }, "cli");
  const login = await loginUser(hs.url, userId, password);
  expect(login.status).toBe(200);
  return { userId, accessToken: login.json.access_token, deviceId: login.json.device_id, password };
}

/** The admin's audit entries (newest first) for one action. */
async function adminActions(action: string) {
  const entries = await hs.services.audit.list({ userId: admin.userId, limit: 500 });
  return entries.filter((e) => e.event === "admin_action" && e.detail.action === action);
}

beforeAll(async () => {
  hs = await startTestServer({ config: { registration: "token", registration_tokens: ["from-config"], allow_guest_access: true } });
  admin = await makeUser("root", { admin: true });
  plain = await makeUser("plain");
});
afterAll(() => hs.destroy());

describe("the admin API's guard", () => {
  const endpoints: Array<[string, string, unknown?]> = [
    ["GET", "/_synapse/admin/v2/users"],
    ["GET", "/_synapse/admin/v2/users/@plain:test.local"],
    ["PUT", "/_synapse/admin/v2/users/@newbie:test.local", { password: "x-secret" }],
    ["POST", "/_synapse/admin/v1/deactivate/@plain:test.local", { erase: false }],
    ["POST", "/_synapse/admin/v1/reset_password/@plain:test.local", { new_password: "other-secret" }],
    ["GET", "/_synapse/admin/v1/whois/@plain:test.local"],
    ["GET", "/_synapse/admin/v2/users/@plain:test.local/devices"],
    ["GET", "/_synapse/admin/v2/users/@plain:test.local/devices/X"],
    ["PUT", "/_synapse/admin/v2/users/@plain:test.local/devices/X", { display_name: "x" }],
    ["DELETE", "/_synapse/admin/v2/users/@plain:test.local/devices/X"],
    ["POST", "/_synapse/admin/v2/users/@plain:test.local/delete_devices", { devices: ["X"] }],
    ["GET", "/_synapse/admin/v1/users/@plain:test.local/joined_rooms"],
    ["POST", "/_synapse/admin/v1/users/@root:test.local/login", {}],
    ["GET", "/_synapse/admin/v1/users/@plain:test.local/admin"],
    ["PUT", "/_synapse/admin/v1/users/@plain:test.local/admin", { admin: true }],
    ["GET", "/_synapse/admin/v1/registration_tokens"],
    ["POST", "/_synapse/admin/v1/registration_tokens/new", {}],
    ["GET", "/_synapse/admin/v1/registration_tokens/abcd"],
    ["PUT", "/_synapse/admin/v1/registration_tokens/abcd", { uses_allowed: 1 }],
    ["DELETE", "/_synapse/admin/v1/registration_tokens/abcd"],
  ];

  it("answers 403 M_FORBIDDEN to a user who is not an admin, and 401 without a token, on every endpoint", async () => {
    for (const [method, path, body] of endpoints) {
      const res = await call(plain.accessToken, method, path, body);
      expect([method, path, res.status, res.json?.errcode]).toEqual([method, path, 403, "M_FORBIDDEN"]);
      expect((await call(undefined, method, path, body)).status).toBe(401);
    }
    // Nothing happened: plain is still active, still not an admin, and newbie does not exist.
    expect((await hs.services.accounts.getUser(plain.userId))).toMatchObject({ isAdmin: false, deactivatedTs: null });
    expect(await hs.services.accounts.getUser("@newbie:test.local")).toBeUndefined();
  });

  it("stops accepting an admin's token at once when the admin is demoted", async () => {
    const boss = await makeUser("boss", { admin: true });
    expect((await call(boss.accessToken, "GET", "/_synapse/admin/v2/users")).status).toBe(200);
    expect((await asAdmin("PUT", `/_synapse/admin/v1/users/${enc(boss.userId)}/admin`, { admin: false })).status).toBe(200);
    expect((await call(boss.accessToken, "GET", "/_synapse/admin/v2/users")).status).toBe(403);
    expect((await asAdmin("GET", `/_synapse/admin/v1/users/${enc(boss.userId)}/admin`)).json).toEqual({ admin: false });
    expect((await adminActions("revoke_admin")).map((e) => e.detail.user_id)).toContain(boss.userId);
  });

  it("refuses to let an admin demote themself", async () => {
    const res = await asAdmin("PUT", `/_synapse/admin/v1/users/${enc(admin.userId)}/admin`, { admin: false });
    expect(res.status).toBe(400);
    expect((await asAdmin("GET", `/_synapse/admin/v1/users/${enc(admin.userId)}/admin`)).json).toEqual({ admin: true });
  });

  it("answers the server version without a token, as Synapse does", async () => {
    const res = await call(undefined, "GET", "/_synapse/admin/v1/server_version");
    expect(res.status).toBe(200);
    expect(res.json.server_version).toMatch(/^Parley \d+\.\d+/);
  });
});

describe("users", () => {
  it("lists users a page at a time with next_token and total, and filters by name, guests and deactivated", async () => {
    for (const name of ["list-a", "list-b", "list-c"]) await makeUser(name);
    await hs.services.accounts.setDisplayName("@list-b:test.local", "Bea Zed");
    const guest = await request(hs.url, "POST", "/_matrix/client/v3/register?kind=guest", { body: {} });
    expect(guest.status).toBe(200);
    await hs.services.accounts.deactivate("@list-c:test.local", "cli");

    const first = await asAdmin("GET", "/_synapse/admin/v2/users?name=list-&limit=1");
    expect(first.status).toBe(200);
    expect(first.json.total).toBe(2);
    expect(first.json.next_token).toBe("1");
    expect(first.json.users.map((u: any) => u.name)).toEqual(["@list-a:test.local"]);
    const second = await asAdmin("GET", `/_synapse/admin/v2/users?name=list-&limit=1&from=${first.json.next_token}`);
    expect(second.json.users.map((u: any) => u.name)).toEqual(["@list-b:test.local"]);
    expect(second.json.next_token).toBeUndefined();

    const withDeactivated = await asAdmin("GET", "/_synapse/admin/v2/users?name=list-&deactivated=true&dir=b");
    expect(withDeactivated.json.users.map((u: any) => [u.name, u.deactivated])).toEqual([
      ["@list-c:test.local", 1],
      ["@list-b:test.local", 0],
      ["@list-a:test.local", 0],
    ]);
    // `name` matches the displayname too.
    expect((await asAdmin("GET", "/_synapse/admin/v2/users?name=bea%20z")).json.users.map((u: any) => u.name)).toEqual(["@list-b:test.local"]);
    // `user_id` matches the user ID; LIKE's wildcards are taken literally.
    expect((await asAdmin("GET", "/_synapse/admin/v2/users?user_id=list_")).json.total).toBe(0);

    const guestId = guest.json.user_id;
    const all = await asAdmin("GET", "/_synapse/admin/v2/users?limit=1000");
    expect(all.json.users.find((u: any) => u.name === guestId)).toMatchObject({ is_guest: 1 });
    const noGuests = await asAdmin("GET", "/_synapse/admin/v2/users?limit=1000&guests=false");
    expect(noGuests.json.users.map((u: any) => u.name)).not.toContain(guestId);
    expect(noGuests.json.total).toBe(all.json.total - 1);

    const byCreation = await asAdmin("GET", "/_synapse/admin/v2/users?order_by=creation_ts&dir=b&limit=1");
    expect(byCreation.json.users[0].name).toBe(guestId);
    expect((await asAdmin("GET", "/_synapse/admin/v2/users?guests=yes")).status).toBe(400);
    expect((await asAdmin("GET", "/_synapse/admin/v2/users?order_by=password")).status).toBe(400);
  });

  it("shows a user's details in Synapse's shape; 404 for an unknown user, 400 for another server's", async () => {
    const res = await asAdmin("GET", `/_synapse/admin/v2/users/${enc(plain.userId)}`);
    expect(res.status).toBe(200);
    expect(res.json).toMatchObject({
      name: plain.userId,
      admin: 0,
      deactivated: 0,
      is_guest: 0,
      erased: false,
      locked: false,
      displayname: "plain",
      threepids: [],
      external_ids: [],
    });
    // Synapse's creation_ts is in seconds.
    expect(Math.abs(res.json.creation_ts - Date.now() / 1000)).toBeLessThan(600);
    expect(res.json.password_hash).toBeUndefined();
    expect((await asAdmin("GET", "/_synapse/admin/v2/users/@nobody:test.local")).status).toBe(404);
    expect((await asAdmin("GET", "/_synapse/admin/v2/users/@plain:elsewhere.test")).status).toBe(400);
  });

  it("creates a user with PUT (201), who can then log in; a second PUT modifies them (200)", async () => {
    const path = "/_synapse/admin/v2/users/@carol:test.local";
    const created = await asAdmin("PUT", path, { password: "carol-secret-1", displayname: "Carol", admin: false });
    expect(created.status).toBe(201);
    expect(created.json).toMatchObject({ name: "@carol:test.local", displayname: "Carol", admin: 0, deactivated: 0 });
    const login = await loginUser(hs.url, "carol", "carol-secret-1");
    expect(login.status).toBe(200);

    const modified = await asAdmin("PUT", path, { displayname: "Carol C.", admin: true, password: "carol-secret-2" });
    expect(modified.status).toBe(200);
    expect(modified.json).toMatchObject({ displayname: "Carol C.", admin: 1 });
    // A new password logs the user's devices out by default (logout_devices).
    expect((await call(login.json.access_token, "GET", "/_matrix/client/v3/account/whoami")).status).toBe(401);
    expect((await loginUser(hs.url, "carol", "carol-secret-2")).status).toBe(200);
    const [entry] = await adminActions("modify_user");
    expect(entry!.detail).toMatchObject({ user_id: "@carol:test.local" });
    expect(JSON.stringify(entry!.detail)).not.toContain("carol-secret");
    expect((await adminActions("create_user")).map((e) => e.detail.user_id)).toContain("@carol:test.local");

    expect((await asAdmin("PUT", path, { threepids: [{ medium: "email", address: "c@example.org" }] })).status).toBe(400);
    expect((await asAdmin("PUT", "/_synapse/admin/v2/users/@carol:elsewhere.test", { password: "x-secret" })).status).toBe(400);
    expect((await asAdmin("PUT", "/_synapse/admin/v2/users/@Bad%20Name:test.local", { password: "x-secret" })).json.errcode).toBe("M_INVALID_USERNAME");
  });

  it("deactivates with PUT and reactivates only with a new password", async () => {
    const dave = await makeUser("dave");
    const path = `/_synapse/admin/v2/users/${enc(dave.userId)}`;
    expect((await asAdmin("PUT", path, { deactivated: true })).json).toMatchObject({ deactivated: 1 });
    expect((await call(dave.accessToken, "GET", "/_matrix/client/v3/account/whoami")).status).toBe(401);
    expect((await loginUser(hs.url, "dave", dave.password)).json.errcode).toBe("M_USER_DEACTIVATED");

    const noPassword = await asAdmin("PUT", path, { deactivated: false });
    expect(noPassword.status).toBe(400);
    expect(noPassword.json.errcode).toBe("M_MISSING_PARAM");
    expect((await asAdmin("PUT", path, { deactivated: false, password: "dave-again-1" })).json).toMatchObject({ deactivated: 0 });
    expect((await loginUser(hs.url, "dave", "dave-again-1")).status).toBe(200);
  });

  it("locks an account: its requests get 401 M_USER_LOCKED (soft logout) and so does its login, until unlocked", async () => {
    const erin = await makeUser("erin");
    const path = `/_synapse/admin/v2/users/${enc(erin.userId)}`;
    expect((await asAdmin("PUT", path, { locked: true })).json).toMatchObject({ locked: true });
    const refused = await call(erin.accessToken, "GET", "/_matrix/client/v3/account/whoami");
    expect(refused.status).toBe(401);
    expect(refused.json).toMatchObject({ errcode: "M_USER_LOCKED", soft_logout: true });
    const login = await loginUser(hs.url, "erin", erin.password);
    expect([login.status, login.json.errcode]).toEqual([401, "M_USER_LOCKED"]);
    // A wrong password still gets the ordinary answer: the lock is not told to who lacks it.
    expect((await loginUser(hs.url, "erin", "wrong-password")).json.errcode).toBe("M_FORBIDDEN");
    expect((await asAdmin("GET", "/_synapse/admin/v2/users?name=erin")).json.users[0].locked).toBe(true);

    expect((await asAdmin("PUT", path, { locked: false })).json).toMatchObject({ locked: false });
    expect((await call(erin.accessToken, "GET", "/_matrix/client/v3/account/whoami")).json.user_id).toBe(erin.userId);
  });

  it("lets a locked user still log out", async () => {
    const fay = await makeUser("fay");
    await asAdmin("PUT", `/_synapse/admin/v2/users/${enc(fay.userId)}`, { locked: true });
    expect((await call(fay.accessToken, "POST", "/_matrix/client/v3/logout", {})).status).toBe(200);
    expect(await hs.services.accounts.listDevices(fay.userId)).toEqual([]);
  });

  it("deactivates with erase, and audits it", async () => {
    const gus = await makeUser("gus");
    const res = await asAdmin("POST", `/_synapse/admin/v1/deactivate/${enc(gus.userId)}`, { erase: true });
    expect(res.status).toBe(200);
    expect(res.json).toEqual({ id_server_unbind_result: "success" });
    expect((await asAdmin("GET", `/_synapse/admin/v2/users/${enc(gus.userId)}`)).json).toMatchObject({ deactivated: 1, erased: true });
    expect((await call(gus.accessToken, "GET", "/_matrix/client/v3/account/whoami")).status).toBe(401);
    expect((await adminActions("deactivate_user")).find((e) => e.detail.user_id === gus.userId)?.detail.erase).toBe(true);
    // The deactivation itself is in the log under the user, from the admin's request.
    const own = await hs.services.audit.list({ userId: gus.userId });
    expect(own.map((e) => e.event)).toContain("deactivated");
    expect((await asAdmin("POST", "/_synapse/admin/v1/deactivate/@nobody:test.local", {})).status).toBe(404);
  });

  it("resets a password, logging the devices out unless told not to", async () => {
    const hal = await makeUser("hal");
    const keep = await asAdmin("POST", `/_synapse/admin/v1/reset_password/${enc(hal.userId)}`, { new_password: "hal-new-1", logout_devices: false });
    expect(keep.status).toBe(200);
    expect((await call(hal.accessToken, "GET", "/_matrix/client/v3/account/whoami")).status).toBe(200);
    await asAdmin("POST", `/_synapse/admin/v1/reset_password/${enc(hal.userId)}`, { new_password: "hal-new-2" });
    expect((await call(hal.accessToken, "GET", "/_matrix/client/v3/account/whoami")).status).toBe(401);
    expect((await loginUser(hs.url, "hal", "hal-new-1")).status).toBe(403);
    expect((await loginUser(hs.url, "hal", "hal-new-2")).status).toBe(200);
    expect((await adminActions("reset_password")).filter((e) => e.detail.user_id === hal.userId)).toHaveLength(2);
  });

  it("shows whois and joined rooms", async () => {
    const ida = await makeUser("ida");
    const room = await call(ida.accessToken, "POST", "/_matrix/client/v3/createRoom", {});
    expect(room.status).toBe(200);
    const rooms = await asAdmin("GET", `/_synapse/admin/v1/users/${enc(ida.userId)}/joined_rooms`);
    expect(rooms.json).toEqual({ joined_rooms: [room.json.room_id], total: 1 });
    const whois = await asAdmin("GET", `/_synapse/admin/v1/whois/${enc(ida.userId)}`);
    expect(whois.json.user_id).toBe(ida.userId);
    expect(Object.keys(whois.json.devices)).toEqual([ida.deviceId]);
  });

  it("logs an admin in as a user with a token that acts as the user, on a device the user sees, and audits it", async () => {
    const jo = await makeUser("jo");
    const res = await asAdmin("POST", `/_synapse/admin/v1/users/${enc(jo.userId)}/login`, {});
    expect(res.status).toBe(200);
    expect((await call(res.json.access_token, "GET", "/_matrix/client/v3/account/whoami")).json.user_id).toBe(jo.userId);
    const devices = (await call(jo.accessToken, "GET", "/_matrix/client/v3/devices")).json.devices;
    expect(devices.map((d: any) => d.display_name)).toContain(`Admin login by ${admin.userId}`);
    const [entry] = await adminActions("login_as_user");
    expect(entry!.detail.user_id).toBe(jo.userId);
    expect(JSON.stringify(entry)).not.toContain(res.json.access_token);

    // A token with valid_until_ms dies then.
    const soon = await asAdmin("POST", `/_synapse/admin/v1/users/${enc(jo.userId)}/login`, { valid_until_ms: Date.now() + 300 });
    expect((await call(soon.json.access_token, "GET", "/_matrix/client/v3/account/whoami")).status).toBe(200);
    await new Promise((r) => setTimeout(r, 400));
    expect((await call(soon.json.access_token, "GET", "/_matrix/client/v3/account/whoami")).status).toBe(401);

    expect((await asAdmin("POST", `/_synapse/admin/v1/users/${enc(jo.userId)}/login`, { valid_until_ms: 1000 })).status).toBe(400);
    expect((await asAdmin("POST", `/_synapse/admin/v1/users/${enc(admin.userId)}/login`, {})).status).toBe(400);
  });
});

describe("devices", () => {
  it("lists, shows, renames and deletes a user's devices; a deleted device's token stops working", async () => {
    const kim = await makeUser("kim");
    const second = await loginUser(hs.url, "kim", kim.password);
    const third = await loginUser(hs.url, "kim", kim.password);
    const base = `/_synapse/admin/v2/users/${enc(kim.userId)}`;
    const list = await asAdmin("GET", `${base}/devices`);
    expect(list.json.total).toBe(3);
    // Synapse's fields, null when unknown (a device not used since its login has not been seen).
    expect(Object.keys(list.json.devices[0]).sort()).toEqual(["device_id", "display_name", "last_seen_ip", "last_seen_ts", "last_seen_user_agent", "user_id"]);
    expect(list.json.devices.every((d: any) => d.user_id === kim.userId)).toBe(true);

    expect((await asAdmin("PUT", `${base}/devices/${kim.deviceId}`, { display_name: "Kim's laptop" })).status).toBe(200);
    expect((await asAdmin("GET", `${base}/devices/${kim.deviceId}`)).json.display_name).toBe("Kim's laptop");
    expect((await asAdmin("GET", `${base}/devices/NOSUCHDEVICE`)).status).toBe(404);

    expect((await asAdmin("DELETE", `${base}/devices/${second.json.device_id}`)).status).toBe(200);
    expect((await call(second.json.access_token, "GET", "/_matrix/client/v3/account/whoami")).status).toBe(401);
    expect((await asAdmin("POST", `${base}/delete_devices`, { devices: [third.json.device_id, "NOSUCHDEVICE"] })).status).toBe(200);
    expect((await call(third.json.access_token, "GET", "/_matrix/client/v3/account/whoami")).status).toBe(401);
    expect((await asAdmin("GET", `${base}/devices`)).json.devices.map((d: any) => d.device_id)).toEqual([kim.deviceId]);
    expect((await adminActions("delete_devices")).filter((e) => e.detail.user_id === kim.userId)).toHaveLength(2);
    expect((await asAdmin("POST", `${base}/delete_devices`, { devices: "all" })).status).toBe(400);
  });
});

describe("registration tokens", () => {
  const register = (token: string | undefined, username: string) => registerWithToken(token, username);

  async function registerWithToken(token: string | undefined, username: string) {
    const body = { username, password: `pw-${username}-secret` };
    const first = await request(hs.url, "POST", "/_matrix/client/v3/register", { body });
    expect(first.status).toBe(401);
    return request(hs.url, "POST", "/_matrix/client/v3/register", {
      body: { ...body, auth: { type: "m.login.registration_token", token, session: first.json.session } },
    });
  }

  it("makes a token usable uses_allowed times, counting completed registrations", async () => {
    const created = await asAdmin("POST", "/_synapse/admin/v1/registration_tokens/new", { token: "once-only", uses_allowed: 1 });
    expect(created.status).toBe(200);
    expect(created.json).toEqual({ token: "once-only", uses_allowed: 1, pending: 0, completed: 0, expiry_time: null });
    const validity = (token: string) => request(hs.url, "GET", `/_matrix/client/v1/register/m.login.registration_token/validity?token=${token}`);
    expect((await validity("once-only")).json).toEqual({ valid: true });

    const ok = await register("once-only", "tok-user-1");
    expect(ok.status, JSON.stringify(ok.json)).toBe(200);
    expect((await asAdmin("GET", "/_synapse/admin/v1/registration_tokens/once-only")).json).toMatchObject({ pending: 0, completed: 1 });
    expect((await validity("once-only")).json).toEqual({ valid: false });
    const refused = await register("once-only", "tok-user-2");
    expect([refused.status, refused.json.errcode]).toEqual([401, "M_FORBIDDEN"]);

    const valid = (await asAdmin("GET", "/_synapse/admin/v1/registration_tokens?valid=true")).json.registration_tokens.map((t: any) => t.token);
    const invalid = (await asAdmin("GET", "/_synapse/admin/v1/registration_tokens?valid=false")).json.registration_tokens.map((t: any) => t.token);
    expect(invalid).toContain("once-only");
    expect(valid).not.toContain("once-only");

    // One more use allowed: the second user can register now.
    expect((await asAdmin("PUT", "/_synapse/admin/v1/registration_tokens/once-only", { uses_allowed: 2 })).json.uses_allowed).toBe(2);
    expect((await register("once-only", "tok-user-2")).status).toBe(200);

    expect((await asAdmin("DELETE", "/_synapse/admin/v1/registration_tokens/once-only")).status).toBe(200);
    expect((await asAdmin("GET", "/_synapse/admin/v1/registration_tokens/once-only")).status).toBe(404);
    expect((await register("once-only", "tok-user-3")).status).toBe(401);
    for (const action of ["create_registration_token", "update_registration_token", "delete_registration_token"]) {
      const [entry] = await adminActions(action);
      // The log names a token by its first characters only.
      expect(entry!.detail.token_prefix).toBe("once");
    }
  });

  it("gives the last use of a token to only one of two sessions racing for it", async () => {
    await asAdmin("POST", "/_synapse/admin/v1/registration_tokens/new", { token: "last-seat", uses_allowed: 1 });
    const results = await Promise.all([register("last-seat", "race-a"), register("last-seat", "race-b")]);
    expect(results.map((r) => r.status).sort()).toEqual([200, 401]);
    expect((await asAdmin("GET", "/_synapse/admin/v1/registration_tokens/last-seat")).json).toMatchObject({ pending: 0, completed: 1 });
  });

  it("generates a token of the asked length, refuses an expired or malformed one, and honours expiry_time", async () => {
    const generated = await asAdmin("POST", "/_synapse/admin/v1/registration_tokens/new", { length: 24, uses_allowed: null, expiry_time: null });
    expect(generated.json.token).toMatch(/^[A-Za-z0-9._~-]{24}$/);
    expect((await asAdmin("POST", "/_synapse/admin/v1/registration_tokens/new", {})).json.token).toHaveLength(16);
    expect((await asAdmin("POST", "/_synapse/admin/v1/registration_tokens/new", { token: "has space" })).status).toBe(400);
    expect((await asAdmin("POST", "/_synapse/admin/v1/registration_tokens/new", { token: generated.json.token })).status).toBe(400);
    expect((await asAdmin("POST", "/_synapse/admin/v1/registration_tokens/new", { expiry_time: Date.now() - 1000 })).status).toBe(400);
    expect((await asAdmin("POST", "/_synapse/admin/v1/registration_tokens/new", { length: 65 })).status).toBe(400);

    const brief = await asAdmin("POST", "/_synapse/admin/v1/registration_tokens/new", { token: "brief", expiry_time: Date.now() + 300 });
    expect(brief.status).toBe(200);
    await new Promise((r) => setTimeout(r, 400));
    expect((await register("brief", "late-user")).status).toBe(401);
    // Removing the expiry (null) makes it valid again.
    expect((await asAdmin("PUT", "/_synapse/admin/v1/registration_tokens/brief", { expiry_time: null })).json.expiry_time).toBeNull();
    expect((await register("brief", "late-user")).status).toBe(200);
  });

  it("still accepts the tokens of the configuration, without counting their uses", async () => {
    expect((await register("from-config", "cfg-user-1")).status).toBe(200);
    expect((await register("from-config", "cfg-user-2")).status).toBe(200);
    expect((await asAdmin("GET", "/_synapse/admin/v1/registration_tokens/from-config")).status).toBe(404);
  });
});
