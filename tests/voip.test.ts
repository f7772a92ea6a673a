// TURN credentials, `GET /_matrix/client/v3/voip/turnServer`, over HTTP.
// https://spec.matrix.org/latest/client-server-api/#get_matrixclientv3voipturnserver
import { createHmac } from "node:crypto";
import { Writable } from "node:stream";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { redactedConfig, resolveConfig } from "../server/config.ts";
import { registerUser, type TestUser } from "./accounts-helpers.ts";
import { request, startTestServer, type TestServer } from "./harness.ts";

const TURN = "/_matrix/client/v3/voip/turnServer";
const SECRET = "a coturn static-auth-secret 7f3a";
const URIS = ["turn:turn.example.org:3478?transport=udp", "turns:turn.example.org:5349?transport=tcp"];

async function guestOf(hs: TestServer): Promise<string> {
  const res = await request(hs.url, "POST", "/_matrix/client/v3/register?kind=guest", { body: {} });
  expect(res.status).toBe(200);
  return res.json.access_token;
}

describe("with a shared secret", () => {
  let hs: TestServer;
  let alice: TestUser;
  let now = 1_800_000_000_000;
  const logged: string[] = [];
  beforeAll(async () => {
    const logger = pino(
      { level: "trace" },
      new Writable({
        write(chunk, _enc, done) {
          logged.push(String(chunk));
          done();
        },
      }),
    );
    hs = await startTestServer({
      logger,
      now: () => now,
      config: { turn_uris: URIS, turn_shared_secret: SECRET, turn_user_lifetime_ms: 3_600_000, allow_guest_access: true },
    });
    alice = await registerUser(hs.url, "alice");
  });
  afterAll(() => hs?.destroy());

  it("hands out coturn use-auth-secret credentials: <expiry>:<user id>, base64 HMAC-SHA1 of it", async () => {
    now = 1_800_000_000_123;
    const res = await request(hs.url, "GET", TURN, { token: alice.accessToken });
    expect(res.status).toBe(200);
    const expiry = Math.floor((now + 3_600_000) / 1000);
    expect(res.json.username).toBe(`${expiry}:${alice.userId}`);
    // Computed here independently, as coturn does with its static-auth-secret.
    const expected = createHmac("sha1", Buffer.from(SECRET, "utf8")).update(Buffer.from(res.json.username, "utf8")).digest().toString("base64");
    expect(res.json.password).toBe(expected);
    expect(res.json.password).toMatch(/^[A-Za-z0-9+/]{27}=$/); // padded standard base64 of 20 bytes
    expect(res.json.uris).toEqual(URIS);
    expect(res.json.ttl).toBe(3600);
    expect(Object.keys(res.json).sort()).toEqual(["password", "ttl", "uris", "username"]);
  });

  it("gives each user and each moment its own credential", async () => {
    const bob = await registerUser(hs.url, "bob");
    now = 1_800_000_100_000;
    const a = (await request(hs.url, "GET", TURN, { token: alice.accessToken })).json;
    const b = (await request(hs.url, "GET", TURN, { token: bob.accessToken })).json;
    expect(a.username).toBe(`${1_800_003_700}:${alice.userId}`);
    expect(b.username).toBe(`${1_800_003_700}:${bob.userId}`);
    expect(a.password).not.toBe(b.password);
    now += 60_000;
    const later = (await request(hs.url, "GET", TURN, { token: alice.accessToken })).json;
    expect(later.username).toBe(`${1_800_003_760}:${alice.userId}`);
    expect(later.password).not.toBe(a.password);
  });

  it("requires an access token", async () => {
    const res = await request(hs.url, "GET", TURN);
    expect(res.status).toBe(401);
    expect(res.json.errcode).toBe("M_MISSING_TOKEN");
    const bad = await request(hs.url, "GET", TURN, { token: "not-a-token" });
    expect(bad.status).toBe(401);
    expect(bad.json.errcode).toBe("M_UNKNOWN_TOKEN");
  });

  it("serves guests by default (turn_allow_guests), as Synapse does", async () => {
    const res = await request(hs.url, "GET", TURN, { token: await guestOf(hs) });
    expect(res.status).toBe(200);
    expect(res.json.uris).toEqual(URIS);
  });

  it("never writes the shared secret to the log", async () => {
    expect(logged.length).toBeGreaterThan(0);
    expect(logged.join("\n")).toContain("<redacted>");
    expect(logged.join("\n")).not.toContain(SECRET);
  });
});

describe("other configurations", () => {
  // Started together in the hook: a server start is slow on a loaded machine.
  let bare: TestServer;
  let fixed: TestServer;
  let urisOnly: TestServer;
  beforeAll(async () => {
    [bare, fixed, urisOnly] = await Promise.all([
      startTestServer(),
      startTestServer({
        config: { turn_uris: "turn:a.example:3478, turns:b.example:5349", turn_username: "calls", turn_password: "static pw", turn_allow_guests: false, allow_guest_access: true },
      }),
      startTestServer({ config: { turn_uris: URIS } }),
    ]);
  });
  afterAll(() => Promise.all([bare?.destroy(), fixed?.destroy(), urisOnly?.destroy()]));

  it("answers 200 {} when no TURN server is configured (what Synapse answers)", async () => {
    const alice = await registerUser(bare.url, "alice");
    const res = await request(bare.url, "GET", TURN, { token: alice.accessToken });
    expect(res.status).toBe(200);
    expect(res.json).toEqual({});
    expect((await request(bare.url, "GET", TURN)).status).toBe(401);
  });

  it("hands out a static username and password, with the default lifetime of a day; refuses guests when turn_allow_guests is off", async () => {
    const alice = await registerUser(fixed.url, "alice");
    const res = await request(fixed.url, "GET", TURN, { token: alice.accessToken });
    expect(res.json).toEqual({ username: "calls", password: "static pw", uris: ["turn:a.example:3478", "turns:b.example:5349"], ttl: 86_400 });
    const guest = await request(fixed.url, "GET", TURN, { token: await guestOf(fixed) });
    expect(guest.status).toBe(403);
    expect(guest.json.errcode).toBe("M_GUEST_ACCESS_FORBIDDEN");
  });

  it("answers {} when URIs are configured without any credential", async () => {
    const alice = await registerUser(urisOnly.url, "alice");
    expect((await request(urisOnly.url, "GET", TURN, { token: alice.accessToken })).json).toEqual({});
  });

  it("reads the URIs from the environment (comma-separated) and refuses one that is not turn: or turns:", () => {
    const env = resolveConfig({}, { PARLEY_TURN_URIS: "turn:a.example:3478 , turns:b.example:5349", PARLEY_TURN_SHARED_SECRET: "s" });
    expect(env.turn_uris).toEqual(["turn:a.example:3478", "turns:b.example:5349"]);
    expect(env.turn_user_lifetime_ms).toBe(86_400_000);
    expect(redactedConfig(env).turn_shared_secret).toBe("<redacted>");
    expect(() => resolveConfig({ turn_uris: ["https://turn.example.org"] }, {})).toThrow(/turn/);
    expect(() => resolveConfig({}, { PARLEY_TURN_URIS: "stun:x.example" })).toThrow(/turn/);
  });
});
