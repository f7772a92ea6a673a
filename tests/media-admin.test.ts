// Media retention: the remote-media cache sweep by age (bytes still referenced are kept), and
// `parley admin media usage|purge-user|purge-room|purge-remote`, run in-process against a test
// server's database. Deleted media answers 404.
import { mkdir, readdir, readFile, utimes, writeFile } from "node:fs/promises";
import path from "node:path";
import { and, eq } from "drizzle-orm";
import sharp from "sharp";
import * as schema from "../schema/tables.ts";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from "vitest";

import { type AdminIo, adminMain } from "../server/admin-cli.ts";
import { registerUser, type TestUser } from "./accounts-helpers.ts";
import { type Network, startNetwork } from "./federation-harness.ts";
import { createTestDatabase, request, startTestServer, type TestDatabase, type TestServer } from "./harness.ts";

// Each test stops and restarts a server on an on-disk embedded database (the CLI needs it to
// itself): 16–20 s in CI, so a bound of 60 s rather than the default 30 s.
vi.setConfig({ testTimeout: 60_000 });

const onPostgres = Boolean(process.env.DATABASE_URL);
const UPLOAD = "/_matrix/media/v3/upload";
const V1 = "/_matrix/client/v1/media";

async function upload(base: string, token: string, bytes: Uint8Array | string, contentType = "application/octet-stream") {
  const res = await request(base, "POST", UPLOAD, { raw: bytes, token, headers: { "Content-Type": contentType } });
  expect(res.status, res.text).toBe(200);
  return res.json.content_uri as string;
}

async function download(base: string, token: string, mxc: string) {
  const res = await fetch(`${base}${V1}/download/${mxc.slice("mxc://".length)}`, { headers: { Authorization: `Bearer ${token}` } });
  return { status: res.status, bytes: Buffer.from(await res.arrayBuffer()) };
}

async function contentFiles(dataDir: string): Promise<string[]> {
  try {
    const entries = await readdir(path.join(dataDir, "media", "content"), { recursive: true, withFileTypes: true });
    return entries.filter((e) => e.isFile()).map((e) => path.join(e.parentPath, e.name));
  } catch {
    return [];
  }
}

/** Content files younger than a minute are never deleted (an identical upload may be landing): age them. */
async function ageContentFiles(dataDir: string): Promise<void> {
  const past = new Date(Date.now() - 5 * 60_000);
  for (const file of await contentFiles(dataDir)) await utimes(file, past, past);
}

describe("remote media cache sweep", () => {
  let net: Network;
  let alice: TestUser;
  let bob: TestUser;
  beforeAll(async () => {
    net = await startNetwork(2, { config: (i) => (i === 1 ? { remote_media_cache_max_age_ms: 1500 } : {}) });
    const [hs1, hs2] = net.servers as [TestServer, TestServer];
    [alice, bob] = await Promise.all([registerUser(hs1.url, "alice"), registerUser(hs2.url, "bob")]);
  });
  afterAll(() => net.destroy());

  it("deletes cached remote media and its thumbnails once older than the max age, keeping bytes still referenced", async () => {
    const [hs1, hs2] = net.servers as [TestServer, TestServer];
    const image = await sharp({ create: { width: 200, height: 100, channels: 3, background: { r: 1, g: 2, b: 3 } } }).png().toBuffer();
    const shared = "the same bytes on both servers";
    const remoteShared = await upload(hs1.url, alice.accessToken, shared, "text/plain");
    const remoteImage = await upload(hs1.url, alice.accessToken, image, "image/png");
    const localShared = await upload(hs2.url, bob.accessToken, shared, "text/plain");
    expect((await download(hs2.url, bob.accessToken, remoteShared)).status).toBe(200);
    expect((await download(hs2.url, bob.accessToken, remoteImage)).status).toBe(200);
    const thumb = await fetch(`${hs2.url}${V1}/thumbnail/${remoteImage.slice(6)}?width=20&height=20&method=crop`, {
      headers: { Authorization: `Bearer ${bob.accessToken}` },
    });
    expect(thumb.status).toBe(200);
    await thumb.arrayBuffer();
    // shared text, image, thumbnail
    expect(await contentFiles(hs2.dataDir)).toHaveLength(3);

    expect(await hs2.services.media.sweepRemoteCache()).toMatchObject({ media: 0 });
    await new Promise((resolve) => setTimeout(resolve, 1600));
    // Files younger than a minute are kept even when unreferenced.
    const young = await hs2.services.media.sweepRemoteCache();
    expect(young).toMatchObject({ media: 2, thumbnails: 1, files: 0 });
    expect(await contentFiles(hs2.dataDir)).toHaveLength(3);

    // Cached again, aged past the grace period, swept again: now the unreferenced files go.
    expect((await download(hs2.url, bob.accessToken, remoteImage)).status).toBe(200);
    expect((await download(hs2.url, bob.accessToken, remoteShared)).status).toBe(200);
    await new Promise((resolve) => setTimeout(resolve, 1600));
    await ageContentFiles(hs2.dataDir);
    const swept = await hs2.services.media.sweepRemoteCache();
    expect(swept).toMatchObject({ media: 2, thumbnails: 0, files: 2 });
    // The image's bytes and the thumbnail's (left young by the first sweep, looked at again) go;
    // the shared bytes stay for bob's upload.
    expect(await contentFiles(hs2.dataDir)).toHaveLength(1);
    const local = await download(hs2.url, bob.accessToken, localShared);
    expect(local.status).toBe(200);
    expect(local.bytes.toString()).toBe(shared);
    // The origin still has it: a client asking again gets it fetched and cached anew.
    const again = await download(hs2.url, bob.accessToken, remoteImage);
    expect(again.status).toBe(200);
    expect(again.bytes.equals(image)).toBe(true);

    // The sweep goes by last access: media fetched long ago but downloaded lately stays.
    const [origin, id] = remoteImage.slice(6).split("/") as [string, string];
    const row = () => hs2.services.db.select().from(schema.media).where(and(eq(schema.media.serverName, origin), eq(schema.media.mediaId, id)));
    expect((await row())[0]?.lastAccessTs).toBeNull(); // fetched, not yet read from the cache
    const started = Date.now();
    expect((await download(hs2.url, bob.accessToken, remoteImage)).status).toBe(200);
    let accessed: number | null | undefined;
    for (let i = 0; i < 100 && !accessed; i++) {
      accessed = (await row())[0]?.lastAccessTs;
      if (!accessed) await new Promise((resolve) => setTimeout(resolve, 20));
    }
    expect(accessed).toBeGreaterThanOrEqual(started);
    const longAgo = Date.now() - 60_000;
    await hs2.services.db.update(schema.media).set({ fetchedTs: longAgo, lastAccessTs: Date.now() }).where(eq(schema.media.mediaId, id));
    expect(await hs2.services.media.sweepRemoteCache()).toMatchObject({ media: 0 });
    await hs2.services.db.update(schema.media).set({ lastAccessTs: longAgo }).where(eq(schema.media.mediaId, id));
    expect(await hs2.services.media.sweepRemoteCache()).toMatchObject({ media: 1 });
  });
});

function capture(): AdminIo & { stdout: string; stderr: string } {
  const io = {
    stdout: "",
    stderr: "",
    out(text: string) {
      io.stdout += text;
    },
    err(text: string) {
      io.stderr += text;
    },
  };
  return io;
}

describe("parley admin media", () => {
  let database: TestDatabase;
  let hs: TestServer | undefined;
  let configFile: string;
  const savedDatabaseUrl = process.env.DATABASE_URL;

  beforeEach(async () => {
    database = await createTestDatabase();
    hs = await startTestServer({ database, embedded: "disk" });
    configFile = path.join(hs.dataDir, "parley.yaml");
    await writeFile(configFile, `server_name: test.local\ndata_dir: ${JSON.stringify(hs.dataDir)}\n`);
    if (database.url) process.env.DATABASE_URL = database.url;
  });
  afterEach(async () => {
    if (savedDatabaseUrl === undefined) delete process.env.DATABASE_URL;
    else process.env.DATABASE_URL = savedDatabaseUrl;
    await hs?.destroy();
  });

  /** On PGlite the server must be stopped while the CLI runs; on PostgreSQL it keeps running. */
  async function admin(...argv: string[]) {
    const run = async () => {
      const io = capture();
      const code = await adminMain(["--config", configFile, "media", ...argv], io);
      return { code, ...io };
    };
    if (onPostgres) return run();
    const dataDir = hs!.dataDir;
    await hs!.stop();
    hs = undefined;
    try {
      return await run();
    } finally {
      hs = await startTestServer({ database, dataDir });
    }
  }

  it("reports usage, purges a room's local media and a user's uploads, which then answer 404", async () => {
    const alice = await registerUser(hs!.url, "alice");
    const bob = await registerUser(hs!.url, "bob");
    const image = await upload(hs!.url, alice.accessToken, "image bytes", "image/png");
    const thumbnail = await upload(hs!.url, alice.accessToken, "thumbnail bytes", "image/png");
    const encrypted = await upload(hs!.url, alice.accessToken, "ciphertext", "application/octet-stream");
    const avatar = await upload(hs!.url, bob.accessToken, "avatar bytes", "image/png");
    const elsewhere = await upload(hs!.url, alice.accessToken, "not in the room, a bit longer", "text/plain");
    const bobsOwn = await upload(hs!.url, bob.accessToken, "bob keeps this", "text/plain");

    const room = await request(hs!.url, "POST", "/_matrix/client/v3/createRoom", { token: alice.accessToken, body: {} });
    expect(room.status).toBe(200);
    const roomId = room.json.room_id as string;
    const send = (type: string, content: unknown, txn: string) =>
      request(hs!.url, "PUT", `/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/send/${type}/${txn}`, { token: alice.accessToken, body: content });
    expect((await send("m.room.message", { msgtype: "m.image", body: "a.png", url: image, info: { thumbnail_url: thumbnail } }, "t1")).status).toBe(200);
    const file = { url: encrypted, v: "v2", key: { kty: "oct", alg: "A256CTR", ext: true, k: "x", key_ops: ["encrypt", "decrypt"] }, iv: "x", hashes: { sha256: "x" } };
    expect((await send("m.room.message", { msgtype: "m.file", body: "secret", file }, "t2")).status).toBe(200);
    expect((await send("m.room.message", { msgtype: "m.image", body: "remote", url: "mxc://other.example/abc" }, "t3")).status).toBe(200);
    const state = await request(hs!.url, "PUT", `/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/state/m.room.avatar/`, {
      token: alice.accessToken,
      body: { url: avatar },
    });
    expect(state.status, state.text).toBe(200);

    const usage = await admin("usage");
    expect(usage.code, usage.stderr).toBe(0);
    expect(usage.stdout).toContain("local\t6 media\t");
    expect(usage.stdout).toContain("remote\t0 media\t0 bytes");
    expect(usage.stdout).toMatch(/^@alice:test\.local\t4 media\t\d+ bytes$/m);
    expect(usage.stdout.indexOf("@alice:test.local")).toBeLessThan(usage.stdout.indexOf("@bob:test.local"));

    const purgedRoom = await admin("purge-room", roomId);
    expect(purgedRoom.code, purgedRoom.stderr).toBe(0);
    expect(purgedRoom.stdout).toContain("deleted 4 media");
    for (const gone of [image, thumbnail, encrypted, avatar]) expect((await download(hs!.url, alice.accessToken, gone)).status).toBe(404);
    expect((await download(hs!.url, alice.accessToken, elsewhere)).status).toBe(200);

    const purgedUser = await admin("purge-user", "@alice:test.local");
    expect(purgedUser.code, purgedUser.stderr).toBe(0);
    expect(purgedUser.stdout).toContain("deleted 1 media");
    expect((await download(hs!.url, alice.accessToken, elsewhere)).status).toBe(404);
    const kept = await download(hs!.url, alice.accessToken, bobsOwn);
    expect(kept.status).toBe(200);
    expect(kept.bytes.toString()).toBe("bob keeps this");
  });

  it("purges remote media by age (none on a lone server), and refuses bad arguments", async () => {
    const remote = await admin("purge-remote", "--older-than", "30");
    expect(remote.code, remote.stderr).toBe(0);
    expect(remote.stdout).toContain("deleted 0 media");
    const missing = await admin("purge-remote");
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain("--older-than");
    const room = await admin("purge-room", "not-a-room");
    expect(room.code).toBe(1);
    expect(room.stderr).toContain("ROOM_ID");
  });
});

describe("identical uploads at the same moment", () => {
  let hs: TestServer;
  afterAll(() => hs.destroy());

  it("never lose the stored file when one of them is refused by the quota", async () => {
    hs = await startTestServer({ config: { media_quota_bytes: 1000 } });
    const [carol, dave] = await Promise.all([registerUser(hs.url, "carol"), registerUser(hs.url, "dave")]);
    await upload(hs.url, carol.accessToken, new Uint8Array(900).fill(1));
    for (let round = 0; round < 10; round++) {
      const bytes = new Uint8Array(500).fill(10 + round);
      const [refused, kept] = await Promise.all([
        request(hs.url, "POST", UPLOAD, { raw: bytes, token: carol.accessToken }),
        request(hs.url, "POST", UPLOAD, { raw: bytes, token: dave.accessToken }),
      ]);
      expect(refused.status).toBe(403);
      expect(kept.status).toBe(200);
      const got = await download(hs.url, dave.accessToken, kept.json.content_uri as string);
      expect(got.status, `round ${round}`).toBe(200);
      expect(got.bytes.equals(Buffer.from(bytes))).toBe(true);
      // Dave's quota is his own: make room for the next round.
      expect((await hs.services.media.purgeUser(dave.userId)).media).toBe(1);
    }
  });
});

describe("the orphan sweep", () => {
  let hs: TestServer;
  afterAll(() => hs.destroy());

  it("deletes the files a crash left behind: content no row references and stale temporary files", async () => {
    hs = await startTestServer();
    const carol = await registerUser(hs.url, "carol");
    const kept = await upload(hs.url, carol.accessToken, "referenced bytes", "text/plain");
    const { createHash } = await import("node:crypto");
    const orphan = Buffer.from("stored, then the server crashed before the row");
    const sha = createHash("sha256").update(orphan).digest("hex");
    const orphanFile = path.join(hs.dataDir, "media", "content", sha.slice(0, 2), sha.slice(2, 4), sha);
    await mkdir(path.dirname(orphanFile), { recursive: true });
    await writeFile(orphanFile, orphan);
    const staleTemp = path.join(hs.dataDir, "media", "tmp", "crashed-mid-write");
    await writeFile(staleTemp, "half an upload");
    const freshTemp = path.join(hs.dataDir, "media", "tmp", "being-written");
    await writeFile(freshTemp, "an upload in progress");

    // Everything young: nothing goes.
    expect(await hs.services.media.sweepOrphans()).toEqual({ files: 0, temporary: 0 });
    const past = new Date(Date.now() - 2 * 24 * 60 * 60 * 1000);
    for (const file of [...(await contentFiles(hs.dataDir)), staleTemp]) await utimes(file, past, past);
    expect(await hs.services.media.sweepOrphans()).toEqual({ files: 1, temporary: 1 });
    expect(await contentFiles(hs.dataDir)).not.toContain(orphanFile);
    await expect(readFile(freshTemp, "utf8")).resolves.toBe("an upload in progress");
    const got = await download(hs.url, carol.accessToken, kept);
    expect(got.status).toBe(200);
    expect(got.bytes.toString()).toBe("referenced bytes");
  });
});
