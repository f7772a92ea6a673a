// `parley admin export` / `import`: an embedded database moved to PostgreSQL (on CI's PostgreSQL
// run; on the PGlite run the target is a new embedded database), and the server carries on there
// as if nothing happened: same accounts and tokens, same rooms and history, streams that go on
// from where they were.
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type AdminIo, adminMain } from "../server/admin-cli.ts";
import { registerUser, type TestUser } from "./accounts-helpers.ts";
import { createTestDatabase, request, startTestServer, type TestDatabase, type TestServer } from "./harness.ts";
import { createRoom, enc, joinRoom, sync } from "./sync-helpers.ts";

const savedDatabaseUrl = process.env.DATABASE_URL;

async function admin(configFile: string, databaseUrl: string | undefined, ...argv: string[]) {
  const io: AdminIo & { stdout: string; stderr: string } = {
    stdout: "",
    stderr: "",
    out(text) {
      io.stdout += text;
    },
    err(text) {
      io.stderr += text;
    },
  };
  // The environment wins over the configuration file, as for `parley serve`.
  if (databaseUrl) process.env.DATABASE_URL = databaseUrl;
  else delete process.env.DATABASE_URL;
  try {
    const code = await adminMain(["--config", configFile, ...argv], io);
    return { code, ...io };
  } finally {
    if (savedDatabaseUrl === undefined) delete process.env.DATABASE_URL;
    else process.env.DATABASE_URL = savedDatabaseUrl;
  }
}

async function send(hs: TestServer, user: TestUser, roomId: string, body: string, txn: string): Promise<string> {
  const res = await request(hs.url, "PUT", `/_matrix/client/v3/rooms/${enc(roomId)}/send/m.room.message/${txn}`, {
    token: user.accessToken,
    body: { msgtype: "m.text", body },
  });
  expect(res.status, JSON.stringify(res.json)).toBe(200);
  return res.json.event_id;
}

describe("parley admin export and import", () => {
  let work: string;
  let sourceDir: string;
  let targetDir: string;
  let target: TestDatabase;
  let moved: TestServer | undefined;
  let alice: TestUser;
  let bob: TestUser;
  let roomId: string;
  let before: string;
  let exportFile: string;
  let sourceConfig: string;
  let targetConfig: string;

  beforeAll(async () => {
    work = await mkdtemp(path.join(tmpdir(), "parley-export-"));
    // The source is always an embedded database on disk, whatever DATABASE_URL says.
    const source = await startTestServer({ database: { url: undefined, drop: async () => {} }, embedded: "disk" });
    sourceDir = source.dataDir;
    alice = await registerUser(source.url, "alice");
    bob = await registerUser(source.url, "bob");
    roomId = await createRoom(source.url, alice, { preset: "private_chat", invite: [bob.userId], name: "Moving" });
    await joinRoom(source.url, bob, roomId);
    before = await send(source, alice, roomId, "said before the move", "t1");
    const data = await request(source.url, "PUT", `/_matrix/client/v3/user/${enc(alice.userId)}/account_data/org.example.settings`, {
      token: alice.accessToken,
      body: { theme: "dark" },
    });
    expect(data.status).toBe(200);
    await source.stop();

    sourceConfig = path.join(work, "source.yaml");
    await writeFile(sourceConfig, `server_name: test.local\ndata_dir: ${JSON.stringify(sourceDir)}\n`);
    target = await createTestDatabase();
    // To PostgreSQL the data directory stays (signing key, media); a new embedded database needs its own.
    targetDir = target.url ? sourceDir : await mkdtemp(path.join(tmpdir(), "parley-export-target-"));
    targetConfig = path.join(work, "target.yaml");
    await writeFile(targetConfig, `server_name: test.local\ndata_dir: ${JSON.stringify(targetDir)}\n`);
    exportFile = path.join(work, "parley.export.gz");
  }, 120_000);

  afterAll(async () => {
    await moved?.destroy();
    await target?.drop();
    await rm(work, { recursive: true, force: true });
    await rm(sourceDir, { recursive: true, force: true });
  });

  it("exports the stopped embedded database, and never overwrites a file", async () => {
    const res = await admin(sourceConfig, undefined, "export", exportFile);
    expect(res.code, res.stderr).toBe(0);
    expect(res.stdout).toMatch(/exported \d+ row\(s\) of \d+ table\(s\)/);
    const again = await admin(sourceConfig, undefined, "export", exportFile);
    expect(again.code).toBe(1);
    expect(again.stderr).toMatch(/exists already/);
  }, 90_000); // opens the embedded database twice

  it("refuses what is not an export, and a file cut short, leaving the target empty", async () => {
    const junk = path.join(work, "junk");
    await writeFile(junk, "not an export at all");
    const res = await admin(targetConfig, target.url, "--init", "import", junk);
    expect(res.code).toBe(1);
    expect(res.stderr).toMatch(/not a Parley export/);

    const { readFile } = await import("node:fs/promises");
    const { gunzipSync, gzipSync } = await import("node:zlib");
    const text = gunzipSync(await readFile(exportFile)).toString("utf8");
    const cut = path.join(work, "cut.gz");
    await writeFile(cut, gzipSync(text.slice(0, text.indexOf("#end"))));
    const partial = await admin(targetConfig, target.url, "--init", "import", cut);
    expect(partial.code).toBe(1);
    expect(partial.stderr).toMatch(/incomplete/);
  }, 90_000); // creates the target database (initdb when embedded)

  it("imports into the new database, where the server carries on: tokens, history, account data, streams", async () => {
    const res = await admin(targetConfig, target.url, "--init", "import", exportFile);
    expect(res.code, res.stderr).toBe(0);
    expect(res.stdout).toMatch(/imported \d+ row\(s\)/);

    moved = await startTestServer({ database: target, dataDir: targetDir });
    const whoami = await request(moved.url, "GET", "/_matrix/client/v3/account/whoami", { token: alice.accessToken });
    expect(whoami.status).toBe(200);
    expect(whoami.json.user_id).toBe(alice.userId);

    const messages = await request(moved.url, "GET", `/_matrix/client/v3/rooms/${enc(roomId)}/messages?dir=b&limit=50`, { token: bob.accessToken });
    expect(messages.status).toBe(200);
    expect(messages.json.chunk.map((e: { event_id: string }) => e.event_id)).toContain(before);

    const data = await request(moved.url, "GET", `/_matrix/client/v3/user/${enc(alice.userId)}/account_data/org.example.settings`, { token: alice.accessToken });
    expect(data.status).toBe(200);
    expect(data.json).toEqual({ theme: "dark" });

    // The streams go on past what was exported: a new message comes after a sync token taken now.
    const b0 = await sync(moved.url, bob);
    const after = await send(moved, alice, roomId, "said after the move", "t2");
    const b1 = await sync(moved.url, bob, { since: b0.next_batch });
    expect(b1.rooms.join[roomId].timeline.events.map((e: { event_id: string }) => e.event_id)).toEqual([after]);
    // New rows get new IDs (the sequences were carried over), and the room's state is whole.
    const carol = await registerUser(moved.url, "carol");
    const invite = await request(moved.url, "POST", `/_matrix/client/v3/rooms/${enc(roomId)}/invite`, { token: alice.accessToken, body: { user_id: carol.userId } });
    expect(invite.status).toBe(200);
    await joinRoom(moved.url, carol, roomId);
    const name = await request(moved.url, "GET", `/_matrix/client/v3/rooms/${enc(roomId)}/state/m.room.name`, { token: carol.accessToken });
    expect(name.json.name).toBe("Moving");
  }, 60_000);

  it("refuses to import into a database that has accounts already", async () => {
    await moved!.stop();
    const res = await admin(targetConfig, target.url, "import", exportFile);
    expect(res.code).toBe(1);
    expect(res.stderr).toMatch(/not empty/);
    moved = await startTestServer({ database: target, dataDir: targetDir });
  }, 60_000);
});
