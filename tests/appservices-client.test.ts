// Application services as clients of the homeserver (identity assertion, registration and login
// of their users, exclusive namespaces, timestamp massaging, their room directories) and the
// queries the homeserver makes to them (users, aliases, ping, third-party lookups), against tiny
// mock services on loopback.
// https://spec.matrix.org/latest/application-service-api/
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { registerUser } from "./accounts-helpers.ts";
import { request, startTestServer, type TestServer } from "./harness.ts";
import { registerRoomUser, roomPath } from "./rooms-helpers.ts";

const enc = encodeURIComponent;
const SERVER = "test.local";

interface SeenRequest {
  method: string;
  path: string;
  query: URLSearchParams;
  authorization: string | undefined;
  body: string;
}

type Answer = { status: number; body?: unknown } | undefined;

/** A mock application service: records every request, answers through `handle` (404 M_UNRECOGNIZED when it has no answer). */
class MockAppService {
  readonly seen: SeenRequest[] = [];
  handle: (req: SeenRequest) => Promise<Answer> | Answer = () => undefined;
  private server!: Server;
  url = "";

  async start(): Promise<void> {
    this.server = createServer((req: IncomingMessage, res: ServerResponse) => {
      const chunks: Buffer[] = [];
      req.on("data", (c: Buffer) => chunks.push(c));
      req.on("end", async () => {
        const url = new URL(req.url!, "http://x");
        const seen: SeenRequest = {
          method: req.method!,
          path: decodeURIComponent(url.pathname),
          query: url.searchParams,
          authorization: req.headers.authorization,
          body: Buffer.concat(chunks).toString("utf8"),
        };
        // Event transactions (the delivery side) are acknowledged and not recorded.
        if (/\/transactions\//.test(seen.path)) {
          res.writeHead(200, { "Content-Type": "application/json" }).end("{}");
          return;
        }
        this.seen.push(seen);
        let answer: Answer;
        try {
          answer = await this.handle(seen);
        } catch (err) {
          answer = { status: 500, body: { errcode: "M_UNKNOWN", error: String(err) } };
        }
        answer ??= { status: 404, body: { errcode: "M_UNRECOGNIZED", error: "Unrecognized request" } };
        res.writeHead(answer.status, { "Content-Type": "application/json" }).end(JSON.stringify(answer.body ?? {}));
      });
    });
    await new Promise<void>((resolve) => this.server.listen(0, "127.0.0.1", resolve));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  reset(): void {
    this.seen.length = 0;
    this.handle = () => undefined;
  }

  paths(): string[] {
    return this.seen.map((r) => r.path);
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise((resolve) => this.server.close(resolve));
  }
}

function registration(fields: {
  id: string;
  url: string | null;
  asToken: string;
  hsToken: string;
  sender: string;
  users: Array<[string, boolean]>;
  aliases?: Array<[string, boolean]>;
  protocols?: string[];
}): string {
  const ns = (list: Array<[string, boolean]>) => (list.length === 0 ? " []" : "\n" + list.map(([regex, exclusive]) => `    - regex: '${regex}'\n      exclusive: ${exclusive}`).join("\n"));
  return [
    `id: ${fields.id}`,
    `url: ${fields.url === null ? "null" : `"${fields.url}"`}`,
    `as_token: ${fields.asToken}`,
    `hs_token: ${fields.hsToken}`,
    `sender_localpart: ${fields.sender}`,
    "namespaces:",
    `  users:${ns(fields.users)}`,
    `  aliases:${ns(fields.aliases ?? [])}`,
    "  rooms: []",
    `protocols: [${(fields.protocols ?? []).map((p) => `"${p}"`).join(", ")}]`,
    "",
  ].join("\n");
}

const BRIDGE_TOKEN = "as-token-bridge";
const LEGACY_TOKEN = "as-token-legacy";
const NOURL_TOKEN = "as-token-nourl";

let hs: TestServer;
let base: string;
let dir: string;
/** Speaks the versioned API (`/_matrix/app/v1/...`). */
const bridge = new MockAppService();
/** Speaks only the legacy paths: its versioned paths answer 404 M_UNRECOGNIZED. */
const legacy = new MockAppService();

const asCall = (token: string, method: string, p: string, body?: unknown) =>
  request(base, method, p, { token, ...(body !== undefined ? { body } : {}) });
const withUser = (p: string, userId: string) => `${p}${p.includes("?") ? "&" : "?"}user_id=${enc(userId)}`;

async function asRegister(token: string, username: string, extra: Record<string, unknown> = {}) {
  return asCall(token, "POST", "/_matrix/client/v3/register", { type: "m.login.application_service", username, ...extra });
}

beforeAll(async () => {
  await bridge.start();
  await legacy.start();
  dir = await mkdtemp(path.join(tmpdir(), "parley-as-"));
  const files = [
    registration({
      id: "bridge",
      url: bridge.url,
      asToken: BRIDGE_TOKEN,
      hsToken: "hs-token-bridge",
      sender: "bridgebot",
      users: [["@_bridge_.*", true], ["@shared_.*", false]],
      aliases: [["#_bridge_.*", true]],
      protocols: ["ymca"],
    }),
    registration({
      id: "legacy",
      url: legacy.url,
      asToken: LEGACY_TOKEN,
      hsToken: "hs-token-legacy",
      sender: "legacybot",
      users: [["@_legacy_.*", true]],
      aliases: [["#_legacy_.*", true]],
      protocols: ["ymca", "gitter"],
    }),
    registration({ id: "nourl", url: null, asToken: NOURL_TOKEN, hsToken: "hs-token-nourl", sender: "nourlbot", users: [] }),
  ];
  const paths = await Promise.all(
    files.map(async (text, i) => {
      const file = path.join(dir, `as-${i}.yaml`);
      await writeFile(file, text);
      return file;
    }),
  );
  hs = await startTestServer({ config: { app_service_config_files: paths } });
  base = hs.url;
}, 60_000);

afterAll(async () => {
  await hs?.destroy();
  await bridge.stop();
  await legacy.stop();
  await rm(dir, { recursive: true, force: true });
});

describe("identity assertion", () => {
  it("authenticates the as_token as the service's bot, which exists from the start", async () => {
    const who = await asCall(BRIDGE_TOKEN, "GET", "/_matrix/client/v3/account/whoami");
    expect(who.status).toBe(200);
    expect(who.json.user_id).toBe(`@bridgebot:${SERVER}`);
    // Without device_id the service acts on no device: none to name, none to upload keys for.
    expect(who.json.device_id).toBeUndefined();
    const keys = await asCall(BRIDGE_TOKEN, "POST", "/_matrix/client/v3/keys/upload", { one_time_keys: {} });
    expect(keys.status).toBe(400);
    expect(keys.json.errcode).toBe("M_UNKNOWN_DEVICE");
    const profile = await request(base, "GET", `/_matrix/client/v3/profile/${enc(`@bridgebot:${SERVER}`)}`);
    expect(profile.status).toBe(200);
  });

  it("acts as a registered user of its namespace with ?user_id=, and on one of its devices with ?device_id=", async () => {
    const reg = await asRegister(BRIDGE_TOKEN, "_bridge_alice");
    expect(reg.status, JSON.stringify(reg.json)).toBe(200);
    const who = await asCall(BRIDGE_TOKEN, "GET", withUser("/_matrix/client/v3/account/whoami", `@_bridge_alice:${SERVER}`));
    expect(who.json.user_id).toBe(`@_bridge_alice:${SERVER}`);
    const onDevice = await asCall(BRIDGE_TOKEN, "GET", withUser(`/_matrix/client/v3/account/whoami?device_id=${reg.json.device_id}`, `@_bridge_alice:${SERVER}`));
    expect(onDevice.status).toBe(200);
    expect(onDevice.json.device_id).toBe(reg.json.device_id);
    const unstable = await asCall(BRIDGE_TOKEN, "GET", withUser(`/_matrix/client/v3/account/whoami?org.matrix.msc3202.device_id=${reg.json.device_id}`, `@_bridge_alice:${SERVER}`));
    expect(unstable.json.device_id).toBe(reg.json.device_id);
    const noDevice = await asCall(BRIDGE_TOKEN, "GET", withUser("/_matrix/client/v3/account/whoami?device_id=NOSUCHDEVICE", `@_bridge_alice:${SERVER}`));
    expect(noDevice.status).toBe(400);
    expect(noDevice.json.errcode).toBe("M_UNKNOWN_DEVICE");
  });

  it("refuses to act as a user outside its namespaces, or one of them not registered (403 M_FORBIDDEN)", async () => {
    const carol = await registerUser(base, "carol");
    const outside = await asCall(BRIDGE_TOKEN, "GET", withUser("/_matrix/client/v3/account/whoami", carol.userId));
    expect(outside.status).toBe(403);
    expect(outside.json.errcode).toBe("M_FORBIDDEN");
    const otherService = await asCall(BRIDGE_TOKEN, "GET", withUser("/_matrix/client/v3/account/whoami", `@legacybot:${SERVER}`));
    expect(otherService.status).toBe(403);
    const unregistered = await asCall(BRIDGE_TOKEN, "GET", withUser("/_matrix/client/v3/account/whoami", `@_bridge_nobody:${SERVER}`));
    expect(unregistered.status).toBe(403);
    expect(unregistered.json.errcode).toBe("M_FORBIDDEN");
  });

  it("lets a ghost join and send through the service, and the room sees the ghost as sender", async () => {
    const owner = await registerRoomUser(base, "roomowner1");
    const roomId = await owner.createRoom({ preset: "public_chat" });
    await asRegister(BRIDGE_TOKEN, "_bridge_bob");
    const ghost = `@_bridge_bob:${SERVER}`;
    const join = await asCall(BRIDGE_TOKEN, "POST", withUser(`/_matrix/client/v3/join/${enc(roomId)}`, ghost), {});
    expect(join.status, JSON.stringify(join.json)).toBe(200);
    const sent = await asCall(BRIDGE_TOKEN, "PUT", withUser(roomPath(roomId, "/send/m.room.message/t1"), ghost), { msgtype: "m.text", body: "hi" });
    expect(sent.status).toBe(200);
    const event = await owner.call("GET", roomPath(roomId, `/event/${enc(sent.json.event_id)}`));
    expect(event.json.sender).toBe(ghost);
  });
});

describe("registration and login by a service", () => {
  it("registers a user of its namespace without UIA, and honours inhibit_login", async () => {
    const res = await asRegister(BRIDGE_TOKEN, "_bridge_dave");
    expect(res.status).toBe(200);
    expect(res.json).toMatchObject({ user_id: `@_bridge_dave:${SERVER}`, home_server: SERVER });
    expect(typeof res.json.access_token).toBe("string");
    const own = await request(base, "GET", "/_matrix/client/v3/account/whoami", { token: res.json.access_token });
    expect(own.json.user_id).toBe(`@_bridge_dave:${SERVER}`);
    const inhibited = await asRegister(BRIDGE_TOKEN, "_bridge_erin", { inhibit_login: true });
    expect(inhibited.status).toBe(200);
    expect(inhibited.json.user_id).toBe(`@_bridge_erin:${SERVER}`);
    expect(inhibited.json.access_token).toBeUndefined();
    expect(inhibited.json.device_id).toBeUndefined();
    // The type may come inside `auth` too.
    const inAuth = await asCall(BRIDGE_TOKEN, "POST", "/_matrix/client/v3/register", { auth: { type: "m.login.application_service" }, username: "shared_frank", inhibit_login: true });
    expect(inAuth.status).toBe(200);
  });

  it("refuses names outside its namespace or in another service's (400 M_EXCLUSIVE), and a missing or wrong token (401)", async () => {
    const outside = await asRegister(BRIDGE_TOKEN, "plainname");
    expect(outside.status).toBe(400);
    expect(outside.json.errcode).toBe("M_EXCLUSIVE");
    const others = await asRegister(BRIDGE_TOKEN, "_legacy_x");
    expect(others.json.errcode).toBe("M_EXCLUSIVE");
    const missing = await request(base, "POST", "/_matrix/client/v3/register", { body: { type: "m.login.application_service", username: "_bridge_g" } });
    expect(missing.status).toBe(401);
    expect(missing.json.errcode).toBe("M_MISSING_TOKEN");
    const wrong = await asRegister("not-a-token", "_bridge_g");
    expect(wrong.status).toBe(401);
    expect(wrong.json.errcode).toBe("M_UNKNOWN_TOKEN");
  });

  it("refuses anyone else a user ID in an exclusive namespace (400 M_EXCLUSIVE), not in a shared one", async () => {
    const first = await request(base, "POST", "/_matrix/client/v3/register", { body: { username: "_bridge_squatter", password: "a-long-password" } });
    expect(first.status).toBe(400);
    expect(first.json.errcode).toBe("M_EXCLUSIVE");
    const available = await request(base, "GET", "/_matrix/client/v3/register/available?username=_bridge_squatter");
    expect(available.json.errcode).toBe("M_EXCLUSIVE");
    const shared = await registerUser(base, "shared_grace");
    expect(shared.userId).toBe(`@shared_grace:${SERVER}`);
  });

  it("logs in as a user of its namespace with m.login.application_service", async () => {
    await asRegister(BRIDGE_TOKEN, "_bridge_heidi", { inhibit_login: true });
    const flows = await request(base, "GET", "/_matrix/client/v3/login");
    expect(flows.json.flows).toContainEqual({ type: "m.login.application_service" });
    const login = await asCall(BRIDGE_TOKEN, "POST", "/_matrix/client/v3/login", { type: "m.login.application_service", identifier: { type: "m.id.user", user: "_bridge_heidi" } });
    expect(login.status, JSON.stringify(login.json)).toBe(200);
    expect(login.json.user_id).toBe(`@_bridge_heidi:${SERVER}`);
    const who = await request(base, "GET", "/_matrix/client/v3/account/whoami", { token: login.json.access_token });
    expect(who.json.device_id).toBe(login.json.device_id);
    const outside = await asCall(BRIDGE_TOKEN, "POST", "/_matrix/client/v3/login", { type: "m.login.application_service", identifier: { type: "m.id.user", user: "carol" } });
    expect(outside.status).toBe(400);
    expect(outside.json.errcode).toBe("M_EXCLUSIVE");
    const unknown = await asCall(BRIDGE_TOKEN, "POST", "/_matrix/client/v3/login", { type: "m.login.application_service", identifier: { type: "m.id.user", user: "_bridge_ghostless" } });
    expect(unknown.status).toBe(403);
    const noToken = await request(base, "POST", "/_matrix/client/v3/login", { body: { type: "m.login.application_service", identifier: { type: "m.id.user", user: "_bridge_heidi" } } });
    expect(noToken.status).toBe(401);
  });

  it("deactivates a user it acts as without UIA; the user is gone for it afterwards", async () => {
    await asRegister(BRIDGE_TOKEN, "_bridge_ivan", { inhibit_login: true });
    const ivan = `@_bridge_ivan:${SERVER}`;
    const res = await asCall(BRIDGE_TOKEN, "POST", withUser("/_matrix/client/v3/account/deactivate", ivan), {});
    expect(res.status, JSON.stringify(res.json)).toBe(200);
    const after = await asCall(BRIDGE_TOKEN, "GET", withUser("/_matrix/client/v3/account/whoami", ivan));
    expect(after.status).toBe(403);
    // A regular user still goes through UIA.
    const judy = await registerUser(base, "judy");
    const uia = await request(base, "POST", "/_matrix/client/v3/account/deactivate", { token: judy.accessToken, body: {} });
    expect(uia.status).toBe(401);
  });

  it("works while registration is closed, and is not rate-limited for the bot (the users it acts as are, per rate_limited)", async () => {
    const closedDir = await mkdtemp(path.join(tmpdir(), "parley-as-closed-"));
    const file = path.join(closedDir, "as.yaml");
    await writeFile(file, registration({ id: "c", url: null, asToken: "tok-c", hsToken: "hs-c", sender: "cbot", users: [["@_c_.*", true]] }));
    const closed = await startTestServer({
      config: { registration: "closed", app_service_config_files: [file], rate_limits: true, rate_limit_requests: "5/1m", rate_limit_registration: "2/1m" },
    });
    try {
      // More registrations than one address may make: the service's are not counted per address.
      for (const name of ["_c_one", "_c_two", "_c_three"]) {
        const byService = await request(closed.url, "POST", "/_matrix/client/v3/register", { token: "tok-c", body: { type: "m.login.application_service", username: name } });
        expect(byService.status, JSON.stringify(byService.json)).toBe(200);
      }
      const byOthers = await request(closed.url, "POST", "/_matrix/client/v3/register", { body: { username: "someone", password: "a-long-password" } });
      expect(byOthers.status).toBe(403);
      const whoami = (query = "") => request(closed.url, "GET", `/_matrix/client/v3/account/whoami${query}`, { token: "tok-c" });
      for (let i = 0; i < 8; i++) expect((await whoami()).status).toBe(200);
      const asGhost = [];
      for (let i = 0; i < 8; i++) asGhost.push((await whoami(`?user_id=${enc("@_c_one:test.local")}`)).status);
      expect(asGhost).toContain(429);
    } finally {
      await closed.destroy();
      await rm(closedDir, { recursive: true, force: true });
    }
  }, 30_000);
});

describe("device management by a service", () => {
  it("creates devices for its users (201, then 200) and deletes them without UIA", async () => {
    await asRegister(BRIDGE_TOKEN, "_bridge_devices", { inhibit_login: true });
    const ghost = `@_bridge_devices:${SERVER}`;
    const create = await asCall(BRIDGE_TOKEN, "PUT", withUser("/_matrix/client/v3/devices/BRIDGEDEV1", ghost), { display_name: "Bridge device" });
    expect(create.status).toBe(201);
    const update = await asCall(BRIDGE_TOKEN, "PUT", withUser("/_matrix/client/v3/devices/BRIDGEDEV1", ghost), { display_name: "Renamed" });
    expect(update.status).toBe(200);
    const onDevice = await asCall(BRIDGE_TOKEN, "GET", withUser("/_matrix/client/v3/account/whoami?device_id=BRIDGEDEV1", ghost));
    expect(onDevice.json.device_id).toBe("BRIDGEDEV1");
    const listed = await asCall(BRIDGE_TOKEN, "GET", withUser("/_matrix/client/v3/devices", ghost));
    expect(listed.json.devices).toEqual([expect.objectContaining({ device_id: "BRIDGEDEV1", display_name: "Renamed" })]);
    await asCall(BRIDGE_TOKEN, "PUT", withUser("/_matrix/client/v3/devices/BRIDGEDEV2", ghost), {});
    const del = await asCall(BRIDGE_TOKEN, "DELETE", withUser("/_matrix/client/v3/devices/BRIDGEDEV1", ghost), {});
    expect(del.status, JSON.stringify(del.json)).toBe(200);
    const delMany = await asCall(BRIDGE_TOKEN, "POST", withUser("/_matrix/client/v3/delete_devices", ghost), { devices: ["BRIDGEDEV2"] });
    expect(delMany.status).toBe(200);
    expect((await asCall(BRIDGE_TOKEN, "GET", withUser("/_matrix/client/v3/devices", ghost))).json.devices).toEqual([]);
    // A regular user still cannot create a device this way.
    const user = await registerUser(base, "nodevicecreation");
    const byUser = await request(base, "PUT", "/_matrix/client/v3/devices/NEWDEV", { token: user.accessToken, body: {} });
    expect(byUser.status).toBe(404);
  });
});

describe("exclusive alias namespaces", () => {
  it("lets a service manage aliases of its namespace without being in the room, and no one else", async () => {
    const owner = await registerRoomUser(base, "aliasowner");
    const roomId = await owner.createRoom();
    const alias = `#_bridge_room1:${SERVER}`;
    const byUser = await owner.call("PUT", `/_matrix/client/v3/directory/room/${enc(alias)}`, { room_id: roomId });
    expect(byUser.status).toBe(400);
    expect(byUser.json.errcode).toBe("M_EXCLUSIVE");
    const byOther = await asCall(LEGACY_TOKEN, "PUT", `/_matrix/client/v3/directory/room/${enc(alias)}`, { room_id: roomId });
    expect(byOther.json.errcode).toBe("M_EXCLUSIVE");
    const outside = await asCall(BRIDGE_TOKEN, "PUT", `/_matrix/client/v3/directory/room/${enc(`#plain:${SERVER}`)}`, { room_id: roomId });
    expect(outside.json.errcode).toBe("M_EXCLUSIVE");
    const byService = await asCall(BRIDGE_TOKEN, "PUT", `/_matrix/client/v3/directory/room/${enc(alias)}`, { room_id: roomId });
    expect(byService.status, JSON.stringify(byService.json)).toBe(200);
    const resolved = await request(base, "GET", `/_matrix/client/v3/directory/room/${enc(alias)}`);
    expect(resolved.json.room_id).toBe(roomId);
    const deleteByUser = await owner.call("DELETE", `/_matrix/client/v3/directory/room/${enc(alias)}`);
    expect(deleteByUser.json.errcode).toBe("M_EXCLUSIVE");
    const deleteByService = await asCall(BRIDGE_TOKEN, "DELETE", `/_matrix/client/v3/directory/room/${enc(alias)}`);
    expect(deleteByService.status).toBe(200);
  });
});

describe("queries to the service", () => {
  it("asks the service about an unknown user of its namespace (v1 path, hs_token), which may create it", async () => {
    bridge.reset();
    const ghost = `@_bridge_asked:${SERVER}`;
    bridge.handle = async (req) => {
      if (req.path !== `/_matrix/app/v1/users/${ghost}`) return undefined;
      await asRegister(BRIDGE_TOKEN, "_bridge_asked", { inhibit_login: true });
      return { status: 200, body: {} };
    };
    const profile = await request(base, "GET", `/_matrix/client/v3/profile/${enc(ghost)}`);
    expect(profile.status, JSON.stringify(profile.json)).toBe(200);
    expect(bridge.seen[0]!.authorization).toBe("Bearer hs-token-bridge");
    expect(bridge.seen[0]!.query.get("access_token")).toBe("hs-token-bridge");
    bridge.reset();
    const missing = await request(base, "GET", `/_matrix/client/v3/profile/${enc(`@_bridge_nope:${SERVER}`)}`);
    expect(missing.status).toBe(404);
    expect(bridge.paths()).toEqual([`/_matrix/app/v1/users/@_bridge_nope:${SERVER}`, `/users/@_bridge_nope:${SERVER}`]);
    // Users outside every namespace are nobody's to ask.
    bridge.reset();
    await request(base, "GET", `/_matrix/client/v3/profile/${enc(`@plainnobody:${SERVER}`)}`);
    expect(bridge.seen).toHaveLength(0);
  });

  it("asks on an invite of an unknown user of its namespace", async () => {
    bridge.reset();
    const ghost = `@_bridge_invited:${SERVER}`;
    bridge.handle = async (req) => {
      if (req.path !== `/_matrix/app/v1/users/${ghost}`) return undefined;
      await asRegister(BRIDGE_TOKEN, "_bridge_invited", { inhibit_login: true });
      return { status: 200, body: {} };
    };
    const owner = await registerRoomUser(base, "inviter");
    const roomId = await owner.createRoom();
    const invite = await owner.call("POST", roomPath(roomId, "/invite"), { user_id: ghost });
    expect(invite.status, JSON.stringify(invite.json)).toBe(200);
  });

  it("asks about an unknown alias of its namespace on resolution and on a join", async () => {
    bridge.reset();
    const owner = await registerRoomUser(base, "portalowner");
    const roomId = await owner.createRoom({ preset: "public_chat" });
    bridge.handle = async (req) => {
      const m = /^\/_matrix\/app\/v1\/rooms\/(#_bridge_portal\d:test\.local)$/.exec(req.path);
      if (!m) return undefined;
      await asCall(BRIDGE_TOKEN, "PUT", `/_matrix/client/v3/directory/room/${enc(m[1]!)}`, { room_id: roomId });
      return { status: 200, body: {} };
    };
    const resolved = await request(base, "GET", `/_matrix/client/v3/directory/room/${enc(`#_bridge_portal1:${SERVER}`)}`);
    expect(resolved.status, JSON.stringify(resolved.json)).toBe(200);
    expect(resolved.json.room_id).toBe(roomId);
    const joiner = await registerRoomUser(base, "portaljoiner");
    const join = await joiner.join(`#_bridge_portal2:${SERVER}`);
    expect(join.status, JSON.stringify(join.json)).toBe(200);
    expect(join.json.room_id).toBe(roomId);
    expect(bridge.paths()).toEqual([`/_matrix/app/v1/rooms/#_bridge_portal1:${SERVER}`, `/_matrix/app/v1/rooms/#_bridge_portal2:${SERVER}`]);
  });

  it("falls back to the legacy path for a service that does not know the versioned one, and remembers it", async () => {
    legacy.reset();
    legacy.handle = async (req) => {
      const m = /^\/users\/@(_legacy_\w+):test\.local$/.exec(req.path);
      if (!m) return undefined;
      await asRegister(LEGACY_TOKEN, m[1]!, { inhibit_login: true });
      return { status: 200, body: {} };
    };
    const first = await request(base, "GET", `/_matrix/client/v3/profile/${enc(`@_legacy_one:${SERVER}`)}`);
    expect(first.status).toBe(200);
    expect(legacy.paths()).toEqual([`/_matrix/app/v1/users/@_legacy_one:${SERVER}`, `/users/@_legacy_one:${SERVER}`]);
    legacy.seen.length = 0;
    const second = await request(base, "GET", `/_matrix/client/v3/profile/${enc(`@_legacy_two:${SERVER}`)}`);
    expect(second.status).toBe(200);
    expect(legacy.paths()).toEqual([`/users/@_legacy_two:${SERVER}`]);
  });
});

describe("ping", () => {
  const ping = (token: string, id: string, body: unknown = {}) => asCall(token, "POST", `/_matrix/client/v1/appservice/${id}/ping`, body);

  it("pings the service with the transaction ID and answers the time it took", async () => {
    bridge.reset();
    bridge.handle = (req) => (req.path === "/_matrix/app/v1/ping" ? { status: 200, body: {} } : undefined);
    const res = await ping(BRIDGE_TOKEN, "bridge", { transaction_id: "txn-42" });
    expect(res.status, JSON.stringify(res.json)).toBe(200);
    expect(typeof res.json.duration_ms).toBe("number");
    expect(bridge.seen).toHaveLength(1);
    expect(bridge.seen[0]!.method).toBe("POST");
    expect(JSON.parse(bridge.seen[0]!.body)).toEqual({ transaction_id: "txn-42" });
    expect(bridge.seen[0]!.authorization).toBe("Bearer hs-token-bridge");
  });

  it("is for the service itself only (403), and reports a missing URL, a bad status and a failed connection", async () => {
    expect((await ping(LEGACY_TOKEN, "bridge")).status).toBe(403);
    const user = await registerUser(base, "pinger");
    const byUser = await request(base, "POST", "/_matrix/client/v1/appservice/bridge/ping", { token: user.accessToken, body: {} });
    expect(byUser.status).toBe(403);
    expect(byUser.json.errcode).toBe("M_FORBIDDEN");
    const noUrl = await ping(NOURL_TOKEN, "nourl");
    expect(noUrl.status).toBe(400);
    expect(noUrl.json.errcode).toBe("M_URL_NOT_SET");
    bridge.reset();
    bridge.handle = () => ({ status: 401, body: { errcode: "M_UNKNOWN_TOKEN" } });
    const bad = await ping(BRIDGE_TOKEN, "bridge");
    expect(bad.status).toBe(502);
    expect(bad.json).toMatchObject({ errcode: "M_BAD_STATUS", status: 401 });
    expect(JSON.parse(bad.json.body)).toEqual({ errcode: "M_UNKNOWN_TOKEN" });
  });

  it("reports M_CONNECTION_FAILED when nothing listens", async () => {
    const closedDir = await mkdtemp(path.join(tmpdir(), "parley-as-down-"));
    const file = path.join(closedDir, "as.yaml");
    // A port just freed: nothing listens there.
    const probe = createServer();
    await new Promise<void>((resolve) => probe.listen(0, "127.0.0.1", resolve));
    const port = (probe.address() as AddressInfo).port;
    await new Promise((resolve) => probe.close(resolve));
    await writeFile(file, registration({ id: "down", url: `http://127.0.0.1:${port}`, asToken: "tok-down", hsToken: "hs-down", sender: "downbot", users: [] }));
    const other = await startTestServer({ config: { app_service_config_files: [file] } });
    try {
      const res = await request(other.url, "POST", "/_matrix/client/v1/appservice/down/ping", { token: "tok-down", body: {} });
      expect(res.status).toBe(502);
      expect(res.json.errcode).toBe("M_CONNECTION_FAILED");
    } finally {
      await other.destroy();
      await rm(closedDir, { recursive: true, force: true });
    }
  }, 30_000);
});

describe("third-party lookups", () => {
  const protocolOf = (desc: string, network?: string) => ({
    user_fields: ["nick"],
    location_fields: ["channel"],
    icon: "mxc://example.org/icon",
    field_types: {},
    instances: [{ desc, fields: {}, ...(network ? { network_id: network } : {}) }],
  });

  it("merges the protocol metadata of every service that bridges it, with instance IDs", async () => {
    bridge.reset();
    legacy.reset();
    bridge.handle = (req) => (req.path === "/_matrix/app/v1/thirdparty/protocol/ymca" ? { status: 200, body: protocolOf("Bridge YMCA", "ymca-net") } : undefined);
    legacy.handle = (req) => {
      if (req.path === "/_matrix/app/unstable/thirdparty/protocol/ymca") return { status: 200, body: protocolOf("Legacy YMCA") };
      if (req.path === "/_matrix/app/unstable/thirdparty/protocol/gitter") return { status: 200, body: protocolOf("Gitter") };
      return undefined;
    };
    const user = await registerUser(base, "thirdparty1");
    const all = await request(base, "GET", "/_matrix/client/v3/thirdparty/protocols", { token: user.accessToken });
    expect(all.status).toBe(200);
    expect(Object.keys(all.json).sort()).toEqual(["gitter", "ymca"]);
    const instances = [...all.json.ymca.instances].sort((a: any, b: any) => a.desc.localeCompare(b.desc));
    expect(instances).toEqual([
      { desc: "Bridge YMCA", fields: {}, network_id: "ymca-net", instance_id: "bridge|ymca-net" },
      { desc: "Legacy YMCA", fields: {} },
    ]);
    expect(all.json.ymca.user_fields).toEqual(["nick"]);
    const one = await request(base, "GET", "/_matrix/client/unstable/thirdparty/protocol/gitter", { token: user.accessToken });
    expect(one.status).toBe(200);
    expect(one.json.instances).toEqual([{ desc: "Gitter", fields: {} }]);
    const unknown = await request(base, "GET", "/_matrix/client/v3/thirdparty/protocol/irc", { token: user.accessToken });
    expect(unknown.status).toBe(404);
    expect(unknown.json.errcode).toBe("M_NOT_FOUND");
  });

  it("proxies user and location lookups with their fields to the services of the protocol and merges the results", async () => {
    bridge.reset();
    legacy.reset();
    bridge.handle = (req) =>
      req.path === "/_matrix/app/v1/thirdparty/user/ymca"
        ? { status: 200, body: [{ userid: "@_bridge_r:test.local", protocol: "ymca", fields: { nick: "r" } }, { bogus: true }] }
        : undefined;
    legacy.handle = (req) =>
      req.path === "/_matrix/app/unstable/thirdparty/user/ymca" ? { status: 200, body: [{ userid: "@_legacy_r:test.local", protocol: "ymca", fields: { nick: "r" } }] } : undefined;
    const user = await registerUser(base, "thirdparty2");
    const res = await request(base, "GET", "/_matrix/client/v3/thirdparty/user/ymca?nick=r&nick=s", { token: user.accessToken });
    expect(res.status).toBe(200);
    expect(res.json.map((r: any) => r.userid).sort()).toEqual(["@_bridge_r:test.local", "@_legacy_r:test.local"]);
    const asked = bridge.seen.find((r) => r.path === "/_matrix/app/v1/thirdparty/user/ymca")!;
    expect(asked.query.getAll("nick")).toEqual(["r", "s"]);
    expect(asked.query.get("access_token")).toBe("hs-token-bridge");

    bridge.handle = (req) =>
      req.path === "/_matrix/app/v1/thirdparty/location" && req.query.get("alias") === "#portal:test.local"
        ? { status: 200, body: [{ alias: "#portal:test.local", protocol: "ymca", fields: { channel: "#c" } }] }
        : undefined;
    legacy.handle = () => undefined;
    const reverse = await request(base, "GET", `/_matrix/client/v3/thirdparty/location?alias=${enc("#portal:test.local")}`, { token: user.accessToken });
    expect(reverse.status, JSON.stringify(reverse.json)).toBe(200);
    expect(reverse.json).toEqual([{ alias: "#portal:test.local", protocol: "ymca", fields: { channel: "#c" } }]);
    const none = await request(base, "GET", "/_matrix/client/v3/thirdparty/location/ymca?channel=x", { token: user.accessToken });
    expect(none.status).toBe(404);
    const missingParam = await request(base, "GET", "/_matrix/client/v3/thirdparty/user", { token: user.accessToken });
    expect(missingParam.status).toBe(400);
  });
});

describe("a service's published room directory", () => {
  it("keeps a service's list per network apart from the main list; include_all_networks shows both", async () => {
    const owner = await registerRoomUser(base, "listowner");
    const roomId = await owner.createRoom({ preset: "public_chat", name: "bridged" });
    const put = await asCall(BRIDGE_TOKEN, "PUT", `/_matrix/client/v3/directory/list/appservice/ymca-net/${enc(roomId)}`, { visibility: "public" });
    expect(put.status, JSON.stringify(put.json)).toBe(200);
    const ids = async (body: Record<string, unknown>) => {
      const res = await owner.call("POST", "/_matrix/client/v3/publicRooms", body);
      expect(res.status, JSON.stringify(res.json)).toBe(200);
      return res.json.chunk.map((r: any) => r.room_id);
    };
    expect(await ids({})).not.toContain(roomId);
    expect(await ids({ third_party_instance_id: "bridge|ymca-net" })).toContain(roomId);
    expect(await ids({ third_party_instance_id: "bridge|other-net" })).not.toContain(roomId);
    expect(await ids({ include_all_networks: true })).toContain(roomId);
    expect(await ids({ include_all_networks: "true" })).toContain(roomId);
    const get = await request(base, "GET", `/_matrix/client/v3/publicRooms?third_party_instance_id=${enc("bridge|ymca-net")}`);
    expect(get.json.chunk.map((r: any) => r.room_id)).toContain(roomId);

    const byUser = await owner.call("PUT", `/_matrix/client/v3/directory/list/appservice/ymca-net/${enc(roomId)}`, { visibility: "public" });
    expect(byUser.status).toBe(403);
    const bad = await asCall(BRIDGE_TOKEN, "PUT", `/_matrix/client/v3/directory/list/appservice/ymca-net/${enc(roomId)}`, { visibility: "sideways" });
    expect(bad.status).toBe(400);

    const hide = await asCall(BRIDGE_TOKEN, "PUT", `/_matrix/client/v3/directory/list/appservice/ymca-net/${enc(roomId)}`, { visibility: "private" });
    expect(hide.status).toBe(200);
    expect(await ids({ third_party_instance_id: "bridge|ymca-net" })).not.toContain(roomId);
    await asCall(BRIDGE_TOKEN, "PUT", `/_matrix/client/v3/directory/list/appservice/ymca-net/${enc(roomId)}`, { visibility: "public" });
    const del = await asCall(BRIDGE_TOKEN, "DELETE", `/_matrix/client/v3/directory/list/appservice/ymca-net/${enc(roomId)}`);
    expect(del.status).toBe(200);
    expect(await ids({ third_party_instance_id: "bridge|ymca-net" })).not.toContain(roomId);
  });
});

describe("timestamp massaging", () => {
  it("sets origin_server_ts from ?ts= for a service, and ignores it for anyone else", async () => {
    const owner = await registerRoomUser(base, "tsowner");
    const roomId = await owner.createRoom({ preset: "public_chat" });
    await asRegister(BRIDGE_TOKEN, "_bridge_ts", { inhibit_login: true });
    const ghost = `@_bridge_ts:${SERVER}`;
    await asCall(BRIDGE_TOKEN, "POST", withUser(`/_matrix/client/v3/join/${enc(roomId)}`, ghost), {});
    const ts = 1_500_000_000_000;
    const sent = await asCall(BRIDGE_TOKEN, "PUT", withUser(roomPath(roomId, `/send/m.room.message/ts1?ts=${ts}`), ghost), { msgtype: "m.text", body: "old" });
    expect(sent.status).toBe(200);
    const event = await owner.call("GET", roomPath(roomId, `/event/${enc(sent.json.event_id)}`));
    expect(event.json.origin_server_ts).toBe(ts);
    const state = await asCall(BRIDGE_TOKEN, "PUT", withUser(roomPath(roomId, `/state/m.room.member/${enc(ghost)}?ts=${ts + 1}`), ghost), { membership: "join", displayname: "Old Name" });
    expect(state.status, JSON.stringify(state.json)).toBe(200);
    const stateEvent = await owner.call("GET", roomPath(roomId, `/event/${enc(state.json.event_id)}`));
    expect(stateEvent.json.origin_server_ts).toBe(ts + 1);
    const byUser = await owner.call("PUT", roomPath(roomId, `/send/m.room.message/ts2?ts=${ts}`), { msgtype: "m.text", body: "now" });
    const userEvent = await owner.call("GET", roomPath(roomId, `/event/${enc(byUser.json.event_id)}`));
    expect(userEvent.json.origin_server_ts).toBeGreaterThan(ts + 1000);
    const bad = await asCall(BRIDGE_TOKEN, "PUT", withUser(roomPath(roomId, "/send/m.room.message/ts3?ts=yesterday"), ghost), { msgtype: "m.text", body: "x" });
    expect(bad.status).toBe(400);
  });
});
