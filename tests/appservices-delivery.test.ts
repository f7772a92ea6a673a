// Pushing events to application services: the durable per-service transaction queue.
// https://spec.matrix.org/latest/application-service-api/#pushing-events
import { createServer, type IncomingMessage, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { adminMain } from "../server/admin-cli.ts";
import { type TestDatabase, type TestServer, createTestDatabase, request, startTestServer } from "./harness.ts";
import { asRoomUser, registerRoomUser, roomPath, type RoomUser } from "./rooms-helpers.ts";
import { createRoom, enc } from "./sync-helpers.ts";

interface Received {
  txnId: string;
  path: string;
  accessToken: string | null;
  authorization: string | undefined;
  events: any[];
  ephemeral: any[] | undefined;
  toDevice: any[] | undefined;
}

/** A mock application service on loopback: records transactions; can answer 500 or be closed. */
class MockAppService {
  received: Received[] = [];
  mode: "ok" | "fail" = "ok";
  /** Speaks only the legacy paths of older drafts (`/transactions/{txnId}?access_token=`), as sytest's mock does. */
  legacyOnly = false;
  failed = 0;
  private server?: Server;
  port = 0;
  private waiters: Array<() => void> = [];

  async start(port = 0): Promise<void> {
    this.server = createServer((req, res) => {
      void this.handle(req).then(([status, body]) => {
        res.writeHead(status, { "content-type": "application/json" });
        res.end(JSON.stringify(body));
      });
    });
    await new Promise<void>((resolve) => this.server!.listen(port, "127.0.0.1", resolve));
    this.port = (this.server.address() as AddressInfo).port;
  }

  async close(): Promise<void> {
    const s = this.server;
    this.server = undefined;
    if (!s) return;
    s.closeAllConnections();
    await new Promise((resolve) => s.close(resolve));
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  private async handle(req: IncomingMessage): Promise<[number, unknown]> {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const url = new URL(req.url ?? "/", "http://as.invalid");
    const m = (this.legacyOnly ? /^\/transactions\/([^/]+)$/ : /^\/_matrix\/app\/v1\/transactions\/([^/]+)$/).exec(url.pathname);
    if (req.method !== "PUT" || !m) return [404, { errcode: "M_UNRECOGNIZED" }];
    if (this.mode === "fail") {
      this.failed++;
      return [500, { errcode: "M_UNKNOWN" }];
    }
    const body = JSON.parse(Buffer.concat(chunks).toString("utf8"));
    this.received.push({ txnId: decodeURIComponent(m[1]!), path: url.pathname, accessToken: url.searchParams.get("access_token"), authorization: req.headers.authorization, events: body.events, ephemeral: body.ephemeral, toDevice: body["org.matrix.msc2409.to_device"] });
    for (const w of this.waiters.splice(0)) w();
    return [200, {}];
  }

  /** Events of the transactions received, each transaction counted once (as a service would). */
  events(): any[] {
    const seen = new Set<string>();
    const out: any[] = [];
    for (const t of this.received) {
      if (seen.has(t.txnId)) continue;
      seen.add(t.txnId);
      out.push(...t.events);
    }
    return out;
  }

  async waitFor(check: () => boolean, timeoutMs = 15_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!check()) {
      if (Date.now() > deadline) throw new Error("timed out waiting for the application service to receive it");
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, 100);
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }
}

const HS_TOKEN = "hs-token-for-the-bridge-0123456789";

async function writeRegistration(dir: string, url: string | null, extra = ""): Promise<string> {
  const file = path.join(dir, `bridge-${Math.random().toString(36).slice(2)}.yaml`);
  await writeFile(
    file,
    [
      "id: test-bridge",
      `url: ${url === null ? "null" : JSON.stringify(url)}`,
      "as_token: as-token-for-the-bridge-0123456789",
      `hs_token: ${HS_TOKEN}`,
      "sender_localpart: bridgebot",
      "namespaces:",
      "  users:",
      "    - exclusive: false",
      "      regex: '@bridged_.*'",
      "  aliases:",
      "    - exclusive: false",
      "      regex: '#bridged_.*'",
      "  rooms:",
      "    - exclusive: false",
      "      regex: '!never-a-room-id:.*'",
      extra,
    ].join("\n"),
  );
  return file;
}

async function say(user: RoomUser, roomId: string, body: string): Promise<string> {
  return user.send(roomId, { msgtype: "m.text", body });
}

const bodiesOf = (events: any[], roomId: string) =>
  events.filter((e) => e.room_id === roomId && e.type === "m.room.message").map((e) => e.content.body as string);

describe("application services: pushing events", () => {
  let dir: string;
  const as = new MockAppService();
  let hs: TestServer;
  let alice: RoomUser;
  let bridged: RoomUser;

  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "parley-as-"));
    await as.start();
    const registration = await writeRegistration(dir, as.url, "receive_ephemeral: true\norg.matrix.msc4203.receive_to_device: true");
    hs = await startTestServer({ config: { app_service_config_files: [registration] } });
    alice = await registerRoomUser(hs.url, "alice");
    bridged = await registerRoomUser(hs.url, "bridged_bob");
  });
  afterAll(async () => {
    await hs?.destroy();
    await as.close();
    await rm(dir, { recursive: true, force: true });
  });

  it("sends the events of interest only, in order, with the hs_token, in client format", async () => {
    const portal = await createRoom(hs.url, alice, { preset: "public_chat" });
    const join = await request(hs.url, "POST", `/_matrix/client/v3/join/${enc(portal)}`, { token: bridged.accessToken, body: {} });
    expect(join.status).toBe(200);
    const unrelated = await createRoom(hs.url, alice);
    const aliased = await createRoom(hs.url, alice);
    const alias = await request(hs.url, "PUT", `/_matrix/client/v3/directory/room/${enc("#bridged_lobby:test.local")}`, {
      token: alice.accessToken,
      body: { room_id: aliased },
    });
    expect(alias.status).toBe(200);
    for (let i = 1; i <= 5; i++) {
      await say(alice, portal, `portal ${i}`);
      await say(alice, unrelated, `unrelated ${i}`);
    }
    await say(alice, aliased, "in the aliased room");
    await as.waitFor(() => bodiesOf(as.events(), portal).length === 5 && bodiesOf(as.events(), aliased).length === 1);

    const events = as.events();
    expect(bodiesOf(events, portal)).toEqual(["portal 1", "portal 2", "portal 3", "portal 4", "portal 5"]);
    expect(events.filter((e) => e.room_id === unrelated)).toEqual([]);
    expect(events.some((e) => e.type === "m.room.member" && e.state_key === bridged.userId && e.content.membership === "join")).toBe(true);
    for (const t of as.received) expect(t.authorization).toBe(`Bearer ${HS_TOKEN}`);
    // Numeric transaction IDs, one more each time.
    const ids = as.received.map((t) => Number(t.txnId));
    expect(ids).toEqual(ids.map((_, i) => ids[0]! + i));
    // Client format: unsigned, no PDU fields.
    const message = events.find((e) => e.content?.body === "portal 1");
    expect(message.unsigned).toBeTypeOf("object");
    expect(message.sender).toBe(alice.userId);
    for (const field of ["auth_events", "prev_events", "hashes", "signatures", "depth"]) expect(message).not.toHaveProperty(field);
    // In stream order overall: each room's events never go backwards.
    const orderings = events.filter((e) => e.room_id === portal).map((e) => e.origin_server_ts);
    expect(orderings).toEqual([...orderings].sort((a, b) => a - b));
  });

  it("sends typing in a room of interest as ephemeral data (receive_ephemeral)", async () => {
    const portal = await createRoom(hs.url, alice, { preset: "public_chat" });
    await request(hs.url, "POST", `/_matrix/client/v3/join/${enc(portal)}`, { token: bridged.accessToken, body: {} });
    const typing = await request(hs.url, "PUT", roomPath(portal, `/typing/${enc(alice.userId)}`), {
      token: alice.accessToken,
      body: { typing: true, timeout: 10_000 },
    });
    expect(typing.status).toBe(200);
    const found = () => as.received.flatMap((t) => t.ephemeral ?? []).find((e) => e.type === "m.typing" && e.room_id === portal);
    await as.waitFor(() => found()?.content.user_ids.includes(alice.userId) === true);
  });

  it("sends to-device messages for its users (receive_to_device), not for others", async () => {
    const send = (to: RoomUser, body: string) =>
      request(hs.url, "PUT", `/_matrix/client/v3/sendToDevice/m.test/${enc(`td-${body}-${Date.now()}`)}`, {
        token: alice.accessToken,
        body: { messages: { [to.userId]: { "*": { body } } } },
      });
    expect((await send(bridged, "for the ghost")).status).toBe(200);
    expect((await send(alice, "for alice")).status).toBe(200);
    const all = () => as.received.flatMap((t) => t.toDevice ?? []);
    await as.waitFor(() => all().some((m) => m.content.body === "for the ghost"));
    expect(all().find((m) => m.content.body === "for the ghost")).toEqual({
      type: "m.test",
      sender: alice.userId,
      to_user_id: bridged.userId,
      to_device_id: bridged.deviceId,
      content: { body: "for the ghost" },
    });
    // Another of alice's messages goes through after, so the first would have been in time.
    expect((await send(bridged, "second")).status).toBe(200);
    await as.waitFor(() => all().some((m) => m.content.body === "second"));
    expect(all().some((m) => m.content.body === "for alice")).toBe(false);
  });

  it("loses nothing while the service answers 500: every event arrives once, in order, after it recovers", async () => {
    const portal = await createRoom(hs.url, alice, { preset: "public_chat" });
    await request(hs.url, "POST", `/_matrix/client/v3/join/${enc(portal)}`, { token: bridged.accessToken, body: {} });
    await as.waitFor(() => as.events().some((e) => e.room_id === portal && e.state_key === bridged.userId));
    as.mode = "fail";
    const sent: string[] = [];
    for (let i = 1; i <= 8; i++) {
      await say(alice, portal, `while down ${i}`);
      sent.push(`while down ${i}`);
    }
    await as.waitFor(() => as.failed > 0);
    const [state] = await hs.services.appServiceDelivery.list();
    expect(state!.failures).toBeGreaterThan(0);
    expect(state!.lastError).toMatch(/500/);
    expect(state!.queued).toBeGreaterThan(0);
    as.mode = "ok";
    await as.waitFor(() => bodiesOf(as.events(), portal).length >= sent.length);
    expect(bodiesOf(as.events(), portal)).toEqual(sent);
    // The acknowledgement is recorded just after the service answered.
    await as.waitFor(() => false, 0).catch(() => {});
    let after = await hs.services.appServiceDelivery.list();
    for (let i = 0; i < 50 && after[0]!.queued > 0; i++) {
      await new Promise((r) => setTimeout(r, 100));
      after = await hs.services.appServiceDelivery.list();
    }
    expect(after[0]!.queued).toBe(0);
    expect(after[0]!.failures).toBe(0);
  });
});

describe("application services: a service of the older drafts", () => {
  let dir: string;
  const as = new MockAppService();
  let hs: TestServer;

  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "parley-as-"));
    as.legacyOnly = true;
    await as.start();
    hs = await startTestServer({ config: { app_service_config_files: [await writeRegistration(dir, as.url)] } });
  });
  afterAll(async () => {
    await hs?.destroy();
    await as.close();
    await rm(dir, { recursive: true, force: true });
  });

  it("gets its transactions on the legacy path, with the hs_token also as access_token, when the versioned one is refused", async () => {
    const alice = await registerRoomUser(hs.url, "alice");
    const bridged = await registerRoomUser(hs.url, "bridged_dan");
    const portal = await createRoom(hs.url, alice, { preset: "public_chat" });
    expect((await bridged.join(portal)).status).toBe(200);
    for (let i = 1; i <= 3; i++) await say(alice, portal, `legacy ${i}`);
    await as.waitFor(() => bodiesOf(as.events(), portal).length === 3);
    expect(bodiesOf(as.events(), portal)).toEqual(["legacy 1", "legacy 2", "legacy 3"]);
    for (const t of as.received) {
      expect(t.path).toMatch(/^\/transactions\/\d+$/);
      expect(t.accessToken).toBe(HS_TOKEN);
      expect(t.authorization).toBe(`Bearer ${HS_TOKEN}`);
    }
  });
});

describe("application services: delivery across a restart", () => {
  let dir: string;
  let database: TestDatabase;
  const as = new MockAppService();
  let hs: TestServer | undefined;
  let registration: string;

  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "parley-as-"));
    database = await createTestDatabase();
    await as.start();
    registration = await writeRegistration(dir, as.url);
  });
  afterAll(async () => {
    await hs?.destroy();
    await as.close();
    await rm(dir, { recursive: true, force: true });
  });

  it("delivers what waited for a dead service once, in order, after the homeserver restarted; parley admin lists the queue", async () => {
    // No fsync: this test is about our queue surviving a restart, not the disk surviving a power loss.
    const config = { app_service_config_files: [registration], embedded_fsync: false };
    hs = await startTestServer({ database, embedded: "disk", config });
    const dataDir = hs.dataDir;
    const alice = await registerRoomUser(hs.url, "alice");
    const bridged = await registerRoomUser(hs.url, "bridged_carol");
    const portal = await createRoom(hs.url, alice, { preset: "public_chat" });
    await request(hs.url, "POST", `/_matrix/client/v3/join/${enc(portal)}`, { token: bridged.accessToken, body: {} });
    await say(alice, portal, "before");
    await as.waitFor(() => bodiesOf(as.events(), portal).includes("before"));

    // The service goes away: nothing listens on its port.
    const port = as.port;
    await as.close();
    const sent = ["before"];
    for (let i = 1; i <= 6; i++) {
      await say(alice, portal, `dead ${i}`);
      sent.push(`dead ${i}`);
    }
    let pending: number | null = null;
    const deadline = Date.now() + 10_000;
    while (Date.now() < deadline) {
      const [q] = await hs.services.appServiceDelivery.list();
      if (q!.failures > 0 && q!.pendingTxnId !== null) {
        pending = q!.pendingTxnId;
        break;
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(pending).not.toBeNull();
    await hs.stop();
    hs = undefined;

    // The admin command, with the server stopped (PGlite allows one process), shows the queue.
    const configFile = path.join(dataDir, "parley.yaml");
    await writeFile(
      configFile,
      [`server_name: test.local`, `data_dir: ${JSON.stringify(dataDir)}`, `app_service_config_files: [${JSON.stringify(registration)}]`]
        .concat(database.url ? [`database_url: ${JSON.stringify(database.url)}`] : [])
        .join("\n"),
    );
    let out = "";
    // The environment's DATABASE_URL (the PostgreSQL server) would win over the file: point it at this test's database.
    const savedDatabaseUrl = process.env.DATABASE_URL;
    if (database.url) process.env.DATABASE_URL = database.url;
    let code: number;
    try {
      code = await adminMain(["--config", configFile, "appservices"], { out: (t) => (out += t), err: (t) => (out += t) });
    } finally {
      if (savedDatabaseUrl === undefined) delete process.env.DATABASE_URL;
      else process.env.DATABASE_URL = savedDatabaseUrl;
    }
    expect(code).toBe(0);
    const line = out.split("\n").find((l) => l.startsWith("test-bridge\t"))!;
    const cols = line.split("\t");
    expect(cols[1]).toBe(as.url);
    expect(cols[2]).toBe("@bridgebot:test.local");
    expect(cols[3]).toBe("3");
    expect(Number(cols[4])).toBe(6);
    expect(cols[5]).toBe(String(pending));
    expect(Number(cols[6])).toBeGreaterThan(0);
    expect(cols[10]).toMatch(/cannot reach/);

    // The service is back before the homeserver: what it delivers comes from the recorded queue.
    await as.start(port);
    hs = await startTestServer({ database, dataDir, config });
    const aliceAgain = asRoomUser(hs.url, alice);
    for (let i = 7; i <= 8; i++) {
      await say(aliceAgain, portal, `dead ${i}`);
      sent.push(`dead ${i}`);
    }
    await as.waitFor(() => bodiesOf(as.events(), portal).length >= sent.length, 20_000);
    expect(bodiesOf(as.events(), portal)).toEqual(sent);
    // The transaction recorded before the restart was sent again under its ID, first.
    const afterRestart = as.received.filter((t) => Number(t.txnId) >= pending!);
    expect(Number(afterRestart[0]!.txnId)).toBe(pending);
    expect(new Set(as.received.map((t) => t.txnId)).size).toBe(as.received.length);
  }, 90_000);
});
