import { eq } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { schema } from "../schema/db.ts";
import { loginUser, passwordAuth, registerUser } from "./accounts-helpers.ts";
import { request, startTestServer, type TestServer } from "./harness.ts";

describe("registration", () => {
  let hs: TestServer;
  beforeAll(async () => {
    hs = await startTestServer();
  });
  afterAll(() => hs.destroy());

  it("answers a first request with the UIA flows and a session, then registers with m.login.dummy", async () => {
    const first = await request(hs.url, "POST", "/_matrix/client/v3/register", {
      body: { username: "alice", password: "wonderland" },
    });
    expect(first.status).toBe(401);
    expect(first.json.flows).toEqual([{ stages: ["m.login.dummy"] }]);
    expect(typeof first.json.session).toBe("string");
    expect(first.json.errcode).toBeUndefined();
    const done = await request(hs.url, "POST", "/_matrix/client/v3/register", {
      body: {
        username: "alice",
        password: "wonderland",
        initial_device_display_name: "Alice's laptop",
        auth: { type: "m.login.dummy", session: first.json.session },
      },
    });
    expect(done.status).toBe(200);
    expect(done.json.user_id).toBe("@alice:test.local");
    expect(done.json.access_token).toMatch(/^pat_/);
    expect(typeof done.json.device_id).toBe("string");
    const who = await request(hs.url, "GET", "/_matrix/client/v3/account/whoami", { token: done.json.access_token });
    expect(who.json).toEqual({ user_id: "@alice:test.local", device_id: done.json.device_id, is_guest: false });
    const devices = await request(hs.url, "GET", "/_matrix/client/v3/devices", { token: done.json.access_token });
    expect(devices.json.devices[0].display_name).toBe("Alice's laptop");
  });

  it("gives new users their localpart as displayname", async () => {
    await registerUser(hs.url, "bob");
    const res = await request(hs.url, "GET", "/_matrix/client/v3/profile/@bob:test.local");
    expect(res.json).toEqual({ displayname: "bob" });
  });

  it("refuses taken and invalid usernames, before any auth stage", async () => {
    await registerUser(hs.url, "carol");
    const taken = await request(hs.url, "POST", "/_matrix/client/v3/register", { body: { username: "carol", password: "x" } });
    expect(taken.status).toBe(400);
    expect(taken.json.errcode).toBe("M_USER_IN_USE");
    const upper = await request(hs.url, "POST", "/_matrix/client/v3/register", { body: { username: "CAROL", password: "x" } });
    expect(upper.json.errcode).toBe("M_USER_IN_USE");
    for (const bad of ["caröl", "a b", "x:y", "@z", "a".repeat(250)]) {
      const res = await request(hs.url, "POST", "/_matrix/client/v3/register", { body: { username: bad, password: "x" } });
      expect(res.status, bad).toBe(400);
      expect(res.json.errcode, bad).toBe("M_INVALID_USERNAME");
    }
  });

  it("answers /register/available", async () => {
    await registerUser(hs.url, "dave");
    const free = await request(hs.url, "GET", "/_matrix/client/v3/register/available?username=erin");
    expect(free.json).toEqual({ available: true });
    const taken = await request(hs.url, "GET", "/_matrix/client/v3/register/available?username=dave");
    expect(taken.json.errcode).toBe("M_USER_IN_USE");
    const bad = await request(hs.url, "GET", "/_matrix/client/v3/register/available?username=no%20spaces");
    expect(bad.json.errcode).toBe("M_INVALID_USERNAME");
  });

  it("honours inhibit_login and a chosen device_id", async () => {
    const first = await request(hs.url, "POST", "/_matrix/client/v3/register", { body: {} });
    const inhibited = await request(hs.url, "POST", "/_matrix/client/v3/register", {
      body: { username: "frank", password: "pw-secret", inhibit_login: true, auth: { type: "m.login.dummy", session: first.json.session } },
    });
    expect(inhibited.json).toEqual({ user_id: "@frank:test.local" });
    const withDevice = await request(hs.url, "POST", "/_matrix/client/v3/register", {
      body: { username: "grace", password: "pw-secret", device_id: "GRACEPHONE", auth: { type: "m.login.dummy" } },
    });
    expect(withDevice.json.device_id).toBe("GRACEPHONE");
  });

  it("refuses a UIA session reused for another operation, and an unknown session", async () => {
    const unknown = await request(hs.url, "POST", "/_matrix/client/v3/register", {
      body: { username: "henry", password: "pw-secret", auth: { type: "m.login.dummy", session: "nope" } },
    });
    expect(unknown.status).toBe(400);
    const first = await request(hs.url, "POST", "/_matrix/client/v3/register", { body: {} });
    const used = await request(hs.url, "POST", "/_matrix/client/v3/register", {
      body: { username: "henry", password: "pw-secret", auth: { type: "m.login.dummy", session: first.json.session } },
    });
    expect(used.status).toBe(200);
    const again = await request(hs.url, "POST", "/_matrix/client/v3/register", {
      body: { username: "henry2", password: "pw-secret", auth: { type: "m.login.dummy", session: first.json.session } },
    });
    expect(again.status).toBe(400);
  });

  it("remembers a registration's parameters across steps, and answers a retry of the finished one with its result", async () => {
    const first = await request(hs.url, "POST", "/_matrix/client/v3/register", {
      body: { username: "Rememberme", password: "pässwörd", initial_device_display_name: "phone" },
    });
    expect(first.status).toBe(401);
    expect(first.json.session).toBeTypeOf("string");
    // The second step carries only auth.
    const auth = { type: "m.login.dummy", session: first.json.session };
    const done = await request(hs.url, "POST", "/_matrix/client/v3/register", { body: { auth } });
    expect(done.status).toBe(200);
    expect(done.json.user_id).toBe(`@rememberme:${hs.services.config.server_name}`);
    const login = await request(hs.url, "POST", "/_matrix/client/v3/login", {
      body: { type: "m.login.password", identifier: { type: "m.id.user", user: "rememberme" }, password: "pässwörd" },
    });
    expect(login.status).toBe(200);
    const devices = await request(hs.url, "GET", "/_matrix/client/v3/devices", { token: done.json.access_token });
    expect(devices.json.devices.find((d: any) => d.device_id === done.json.device_id)?.display_name).toBe("phone");
    // The response was lost: the same request again gets the same account, logged in anew.
    const retry = await request(hs.url, "POST", "/_matrix/client/v3/register", { body: { auth } });
    expect(retry.status).toBe(200);
    expect(retry.json.user_id).toBe(done.json.user_id);
    expect(retry.json.access_token).not.toBe(done.json.access_token);
    // The same with the username given again (sytest "registration is idempotent, with username").
    const named = await request(hs.url, "POST", "/_matrix/client/v3/register", { body: { username: "rememberme", password: "pässwörd", auth } });
    expect(named.status).toBe(200);
    expect(named.json.user_id).toBe(done.json.user_id);
    // The password never sits in the session in the clear.
    const [row] = await hs.services.db.select().from(schema.uiaSessions).where(eq(schema.uiaSessions.sessionId, first.json.session));
    expect(JSON.stringify(row?.params)).not.toContain("pässwörd");
  });

  it("says which stages are done in a 401 that follows an attempt", async () => {
    const first = await request(hs.url, "POST", "/_matrix/client/v3/register", { body: {} });
    expect(first.json.completed).toBeUndefined();
    const wrong = await request(hs.url, "POST", "/_matrix/client/v3/register", {
      body: { username: "stagey", password: "pw-secret", auth: { type: "m.login.recaptcha", session: first.json.session } },
    });
    expect(wrong.status).toBe(401);
    expect(wrong.json.completed).toEqual([]);
  });

  it("offers GET /login with the password flow (and the application-service login, as Synapse lists it)", async () => {
    const res = await request(hs.url, "GET", "/_matrix/client/v3/login");
    expect(res.json.flows).toEqual([{ type: "m.login.password" }, { type: "m.login.application_service" }]);
  });
});

describe("registration modes", () => {
  it("refuses registration when closed", async () => {
    const hs = await startTestServer({ config: { registration: "closed" } });
    try {
      const res = await request(hs.url, "POST", "/_matrix/client/v3/register", { body: { username: "x", password: "y" } });
      expect(res.status).toBe(403);
      expect(res.json.errcode).toBe("M_FORBIDDEN");
    } finally {
      await hs.destroy();
    }
  });

  it("asks for a registration token in token mode", async () => {
    const hs = await startTestServer({ config: { registration: "token", registration_tokens: ["let-me-in"] } });
    try {
      const first = await request(hs.url, "POST", "/_matrix/client/v3/register", { body: { username: "tina", password: "pw-secret" } });
      expect(first.status).toBe(401);
      expect(first.json.flows).toEqual([{ stages: ["m.login.registration_token"] }]);
      const dummy = await request(hs.url, "POST", "/_matrix/client/v3/register", {
        body: { username: "tina", password: "pw-secret", auth: { type: "m.login.dummy", session: first.json.session } },
      });
      expect(dummy.status).toBe(401);
      const wrong = await request(hs.url, "POST", "/_matrix/client/v3/register", {
        body: { username: "tina", password: "pw-secret", auth: { type: "m.login.registration_token", token: "guess", session: first.json.session } },
      });
      expect(wrong.status).toBe(401);
      expect(wrong.json.errcode).toBe("M_FORBIDDEN");
      expect(wrong.json.session).toBe(first.json.session);
      const ok = await request(hs.url, "POST", "/_matrix/client/v3/register", {
        body: { username: "tina", password: "pw-secret", auth: { type: "m.login.registration_token", token: "let-me-in", session: first.json.session } },
      });
      expect(ok.status).toBe(200);
      const validity = await request(hs.url, "GET", "/_matrix/client/v1/register/m.login.registration_token/validity?token=let-me-in");
      expect(validity.json).toEqual({ valid: true });
      const invalid = await request(hs.url, "GET", "/_matrix/client/v1/register/m.login.registration_token/validity?token=no");
      expect(invalid.json).toEqual({ valid: false });
    } finally {
      await hs.destroy();
    }
  });
});

describe("login, refresh and logout", () => {
  let hs: TestServer;
  beforeAll(async () => {
    hs = await startTestServer({ config: { access_token_lifetime_ms: 1500 } });
    await registerUser(hs.url, "lena", "correct horse");
  });
  afterAll(() => hs.destroy());

  it("logs in with identifier m.id.user (localpart or full ID) and with the deprecated top-level user", async () => {
    const byLocalpart = await loginUser(hs.url, "lena", "correct horse");
    expect(byLocalpart.status).toBe(200);
    expect(byLocalpart.json.user_id).toBe("@lena:test.local");
    expect(byLocalpart.json.home_server).toBe("test.local");
    expect(byLocalpart.json.well_known["m.homeserver"].base_url).toMatch(/^http/);
    expect(byLocalpart.json.refresh_token).toBeUndefined();
    const byId = await loginUser(hs.url, "@lena:test.local", "correct horse");
    expect(byId.status).toBe(200);
    const legacy = await request(hs.url, "POST", "/_matrix/client/v3/login", {
      body: { type: "m.login.password", user: "LENA", password: "correct horse" },
    });
    expect(legacy.status).toBe(200);
    expect(legacy.json.user_id).toBe("@lena:test.local");
  });

  it("answers a wrong password, an unknown user and another server's user with 403 M_FORBIDDEN", async () => {
    for (const user of ["lena", "nobody", "@lena:elsewhere.org"]) {
      const res = await loginUser(hs.url, user, "wrong");
      expect(res.status, user).toBe(403);
      expect(res.json.errcode, user).toBe("M_FORBIDDEN");
    }
    const type = await request(hs.url, "POST", "/_matrix/client/v3/login", { body: { type: "m.login.token", token: "x" } });
    expect(type.status).toBe(400);
  });

  it("reuses a given device_id and kills that device's old token", async () => {
    const first = await loginUser(hs.url, "lena", "correct horse", { device_id: "LENADESK" });
    const second = await loginUser(hs.url, "lena", "correct horse", { device_id: "LENADESK" });
    expect(second.json.device_id).toBe("LENADESK");
    const old = await request(hs.url, "GET", "/_matrix/client/v3/account/whoami", { token: first.json.access_token });
    expect(old.status).toBe(401);
    expect(old.json.errcode).toBe("M_UNKNOWN_TOKEN");
    const current = await request(hs.url, "GET", "/_matrix/client/v3/account/whoami", { token: second.json.access_token });
    expect(current.json.device_id).toBe("LENADESK");
  });

  it("issues expiring tokens with refresh_token: true and rotates them on /refresh", async () => {
    const res = await loginUser(hs.url, "lena", "correct horse", { refresh_token: true });
    expect(res.json.refresh_token).toMatch(/^prt_/);
    expect(res.json.expires_in_ms).toBe(1500);
    const refreshed = await request(hs.url, "POST", "/_matrix/client/v3/refresh", { body: { refresh_token: res.json.refresh_token } });
    expect(refreshed.status).toBe(200);
    expect(refreshed.json.access_token).not.toBe(res.json.access_token);
    expect(refreshed.json.refresh_token).not.toBe(res.json.refresh_token);
    // The old refresh token worked once.
    const reused = await request(hs.url, "POST", "/_matrix/client/v3/refresh", { body: { refresh_token: res.json.refresh_token } });
    expect(reused.status).toBe(401);
    expect(reused.json.errcode).toBe("M_UNKNOWN_TOKEN");
    // The new access token works on the same device, until it expires.
    const who = await request(hs.url, "GET", "/_matrix/client/v3/account/whoami", { token: refreshed.json.access_token });
    expect(who.json.device_id).toBe(res.json.device_id);
    await new Promise((r) => setTimeout(r, 1600));
    const expired = await request(hs.url, "GET", "/_matrix/client/v3/account/whoami", { token: refreshed.json.access_token });
    expect(expired.status).toBe(401);
    expect(expired.json).toMatchObject({ errcode: "M_UNKNOWN_TOKEN", soft_logout: true });
    const again = await request(hs.url, "POST", "/_matrix/client/v3/refresh", { body: { refresh_token: refreshed.json.refresh_token } });
    expect(again.status).toBe(200);
  });

  it("refuses requests without a token or with an unknown one", async () => {
    const missing = await request(hs.url, "GET", "/_matrix/client/v3/account/whoami");
    expect(missing.status).toBe(401);
    expect(missing.json.errcode).toBe("M_MISSING_TOKEN");
    const unknown = await request(hs.url, "GET", "/_matrix/client/v3/account/whoami", { token: "pat_nonsense" });
    expect(unknown.status).toBe(401);
    expect(unknown.json.errcode).toBe("M_UNKNOWN_TOKEN");
  });

  it("logs out one device at once, and all devices with /logout/all", async () => {
    const a = await loginUser(hs.url, "lena", "correct horse");
    const b = await loginUser(hs.url, "lena", "correct horse");
    // Warm the token cache, then log out: the token must fail at once.
    expect((await request(hs.url, "GET", "/_matrix/client/v3/account/whoami", { token: a.json.access_token })).status).toBe(200);
    expect((await request(hs.url, "POST", "/_matrix/client/v3/logout", { token: a.json.access_token })).status).toBe(200);
    expect((await request(hs.url, "GET", "/_matrix/client/v3/account/whoami", { token: a.json.access_token })).status).toBe(401);
    const devices = await request(hs.url, "GET", "/_matrix/client/v3/devices", { token: b.json.access_token });
    expect(devices.json.devices.map((d: { device_id: string }) => d.device_id)).not.toContain(a.json.device_id);
    expect((await request(hs.url, "POST", "/_matrix/client/v3/logout/all", { token: b.json.access_token })).status).toBe(200);
    expect((await request(hs.url, "GET", "/_matrix/client/v3/account/whoami", { token: b.json.access_token })).status).toBe(401);
    const entries = await hs.services.audit.list({ userId: "@lena:test.local" });
    expect(entries.some((e) => e.event === "logout")).toBe(true);
  });
});

describe("devices", () => {
  let hs: TestServer;
  beforeAll(async () => {
    hs = await startTestServer();
  });
  afterAll(() => hs.destroy());

  it("lists, renames and shows devices with last-seen information", async () => {
    const user = await registerUser(hs.url, "dora");
    const list = await request(hs.url, "GET", "/_matrix/client/v3/devices", { token: user.accessToken });
    expect(list.json.devices).toHaveLength(1);
    expect(list.json.devices[0].device_id).toBe(user.deviceId);
    expect(list.json.devices[0].last_seen_ip).toBeTruthy();
    expect(list.json.devices[0].last_seen_ts).toBeGreaterThan(0);
    const path = `/_matrix/client/v3/devices/${user.deviceId}`;
    expect((await request(hs.url, "PUT", path, { token: user.accessToken, body: { display_name: "Phone" } })).status).toBe(200);
    const one = await request(hs.url, "GET", path, { token: user.accessToken });
    expect(one.json.display_name).toBe("Phone");
    const missing = await request(hs.url, "GET", "/_matrix/client/v3/devices/NOPE", { token: user.accessToken });
    expect(missing.status).toBe(404);
    const putMissing = await request(hs.url, "PUT", "/_matrix/client/v3/devices/NOPE", { token: user.accessToken, body: { display_name: "x" } });
    expect(putMissing.status).toBe(404);
  });

  it("deletes a device after password UIA; its token then fails at once", async () => {
    const user = await registerUser(hs.url, "eddie");
    const other = await loginUser(hs.url, "eddie", user.password);
    const path = `/_matrix/client/v3/devices/${other.json.device_id}`;
    const challenge = await request(hs.url, "DELETE", path, { token: user.accessToken });
    expect(challenge.status).toBe(401);
    expect(challenge.json.flows).toEqual([{ stages: ["m.login.password"] }]);
    const wrong = await request(hs.url, "DELETE", path, {
      token: user.accessToken,
      body: { auth: { ...passwordAuth(user, challenge.json.session), password: "nope" } },
    });
    expect(wrong.status).toBe(401);
    expect(wrong.json.errcode).toBe("M_FORBIDDEN");
    const ok = await request(hs.url, "DELETE", path, { token: user.accessToken, body: { auth: passwordAuth(user, challenge.json.session) } });
    expect(ok.status).toBe(200);
    const dead = await request(hs.url, "GET", "/_matrix/client/v3/account/whoami", { token: other.json.access_token });
    expect(dead.status).toBe(401);
    expect(dead.json.errcode).toBe("M_UNKNOWN_TOKEN");
  });

  it("calls the devices-deleted hook", async () => {
    const seen: [string, string[]][] = [];
    hs.services.accounts.onDevicesDeleted((userId, ids) => {
      seen.push([userId, ids]);
    });
    const user = await registerUser(hs.url, "fiona");
    const a = await loginUser(hs.url, "fiona", user.password);
    const b = await loginUser(hs.url, "fiona", user.password);
    const res = await request(hs.url, "POST", "/_matrix/client/v3/delete_devices", {
      token: user.accessToken,
      body: { devices: [a.json.device_id, b.json.device_id], auth: passwordAuth(user) },
    });
    expect(res.status).toBe(200);
    expect(seen).toContainEqual(["@fiona:test.local", expect.arrayContaining([a.json.device_id, b.json.device_id])]);
    const list = await request(hs.url, "GET", "/_matrix/client/v3/devices", { token: user.accessToken });
    expect(list.json.devices).toHaveLength(1);
  });

  it("will not let a session for one set of devices delete another, nor another user's password count", async () => {
    const user = await registerUser(hs.url, "gus");
    const intruder = await registerUser(hs.url, "ivan");
    const a = await loginUser(hs.url, "gus", user.password);
    const res = await request(hs.url, "POST", "/_matrix/client/v3/delete_devices", {
      token: user.accessToken,
      body: { devices: [a.json.device_id], auth: passwordAuth(intruder) },
    });
    // Refused outright (403, as Synapse and sytest expect), not a failed stage to retry.
    expect(res.status).toBe(403);
    expect(res.json.errcode).toBe("M_FORBIDDEN");
    const devices = await request(hs.url, "GET", "/_matrix/client/v3/devices", { token: user.accessToken });
    expect(devices.json.devices.map((d: { device_id: string }) => d.device_id)).toContain(a.json.device_id);
  });
});

describe("passwords and deactivation", () => {
  let hs: TestServer;
  beforeAll(async () => {
    hs = await startTestServer();
  });
  afterAll(() => hs.destroy());

  it("changes the password and logs out the other devices by default", async () => {
    const user = await registerUser(hs.url, "paula", "old password");
    const other = await loginUser(hs.url, "paula", "old password");
    const res = await request(hs.url, "POST", "/_matrix/client/v3/account/password", {
      token: user.accessToken,
      body: { new_password: "new password", auth: passwordAuth(user) },
    });
    expect(res.status).toBe(200);
    expect((await request(hs.url, "GET", "/_matrix/client/v3/account/whoami", { token: other.json.access_token })).status).toBe(401);
    expect((await request(hs.url, "GET", "/_matrix/client/v3/account/whoami", { token: user.accessToken })).status).toBe(200);
    expect((await loginUser(hs.url, "paula", "old password")).status).toBe(403);
    expect((await loginUser(hs.url, "paula", "new password")).status).toBe(200);
    const audit = await hs.services.audit.list({ userId: "@paula:test.local" });
    expect(audit.map((e) => e.event)).toContain("password_changed");
  });

  it("keeps other devices with logout_devices: false", async () => {
    const user = await registerUser(hs.url, "quinn", "pw number one");
    const other = await loginUser(hs.url, "quinn", "pw number one");
    await request(hs.url, "POST", "/_matrix/client/v3/account/password", {
      token: user.accessToken,
      body: { new_password: "pw number two", logout_devices: false, auth: passwordAuth(user) },
    });
    expect((await request(hs.url, "GET", "/_matrix/client/v3/account/whoami", { token: other.json.access_token })).status).toBe(200);
  });

  it("deactivates: tokens die, login fails, the localpart stays taken", async () => {
    const user = await registerUser(hs.url, "rita");
    const res = await request(hs.url, "POST", "/_matrix/client/v3/account/deactivate", {
      token: user.accessToken,
      body: { auth: passwordAuth(user) },
    });
    expect(res.status).toBe(200);
    expect((await request(hs.url, "GET", "/_matrix/client/v3/account/whoami", { token: user.accessToken })).status).toBe(401);
    const login = await loginUser(hs.url, "rita", user.password);
    expect(login.status).toBe(403);
    expect(login.json.errcode).toBe("M_USER_DEACTIVATED");
    const again = await request(hs.url, "GET", "/_matrix/client/v3/register/available?username=rita");
    expect(again.json.errcode).toBe("M_USER_IN_USE");
    const audit = await hs.services.audit.list({ userId: "@rita:test.local" });
    expect(audit.map((e) => e.event)).toContain("deactivated");
  });
});

describe("guests", () => {
  it("are refused unless allow_guest_access is on", async () => {
    const hs = await startTestServer();
    try {
      const res = await request(hs.url, "POST", "/_matrix/client/v3/register?kind=guest", { body: {} });
      expect(res.status).toBe(403);
      expect(res.json.errcode).toBe("M_GUEST_ACCESS_FORBIDDEN");
    } finally {
      await hs.destroy();
    }
  });

  it("get a token, may use the guest endpoints and nothing else", async () => {
    const hs = await startTestServer({ config: { allow_guest_access: true } });
    try {
      const res = await request(hs.url, "POST", "/_matrix/client/v3/register?kind=guest", { body: {} });
      expect(res.status).toBe(200);
      const token = res.json.access_token as string;
      const who = await request(hs.url, "GET", "/_matrix/client/v3/account/whoami", { token });
      expect(who.json.is_guest).toBe(true);
      const name = await request(hs.url, "PUT", `/_matrix/client/v3/profile/${encodeURIComponent(res.json.user_id)}/displayname`, {
        token,
        body: { displayname: "Visitor" },
      });
      expect(name.status).toBe(200);
      expect((await request(hs.url, "GET", "/_matrix/client/v3/devices", { token })).status).toBe(200);
      const data = await request(hs.url, "PUT", `/_matrix/client/v3/user/${encodeURIComponent(res.json.user_id)}/account_data/x.y`, {
        token,
        body: { a: 1 },
      });
      expect(data.status).toBe(403);
      expect(data.json.errcode).toBe("M_GUEST_ACCESS_FORBIDDEN");
      const rules = await request(hs.url, "GET", "/_matrix/client/v3/pushrules/", { token });
      expect(rules.json.errcode).toBe("M_GUEST_ACCESS_FORBIDDEN");
    } finally {
      await hs.destroy();
    }
  });

  it("can upgrade to a full account that keeps the user ID", async () => {
    const hs = await startTestServer({ config: { allow_guest_access: true } });
    try {
      const guest = await request(hs.url, "POST", "/_matrix/client/v3/register?kind=guest", { body: {} });
      const userId = guest.json.user_id as string;
      const localpart = userId.slice(1, userId.indexOf(":"));
      const token = guest.json.access_token as string;
      // Warm the token cache with the guest's requester.
      expect((await request(hs.url, "GET", "/_matrix/client/v3/account/whoami", { token })).json.is_guest).toBe(true);
      const wrongName = await request(hs.url, "POST", "/_matrix/client/v3/register", {
        body: { username: "someoneelse", password: "pw-secret", guest_access_token: token, auth: { type: "m.login.dummy" } },
      });
      expect(wrongName.status).toBe(400);
      const upgraded = await request(hs.url, "POST", "/_matrix/client/v3/register", {
        body: { username: localpart, password: "now a member", guest_access_token: token, auth: { type: "m.login.dummy" } },
      });
      expect(upgraded.status).toBe(200);
      expect(upgraded.json.user_id).toBe(userId);
      expect((await request(hs.url, "GET", "/_matrix/client/v3/account/whoami", { token })).json.is_guest).toBe(false);
      expect((await loginUser(hs.url, localpart, "now a member")).status).toBe(200);
    } finally {
      await hs.destroy();
    }
  });
});
