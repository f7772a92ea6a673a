// The embedded database's files (issue 20, findings 5 and 6): only Parley's user can read or write
// them, and a commit is on disk before the request that made it is answered. PGlite only: with
// PostgreSQL, Parley neither holds the database's files nor syncs them (PostgreSQL does both itself).
import fs from "node:fs";
import { chmod, lstat, readdir } from "node:fs/promises";
import path from "node:path";
import { sql } from "drizzle-orm";
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from "vitest";
import { SIGNING_KEY_FILE } from "../server/signing-key.ts";
import { loginUser } from "./accounts-helpers.ts";
import { request, startTestServer, type TestServer } from "./harness.ts";
import { registerRoomUser, roomPath } from "./rooms-helpers.ts";

/** Every file and directory under `root` (root included), with its permission bits. */
async function modes(root: string): Promise<Map<string, { mode: number; directory: boolean }>> {
  const found = new Map<string, { mode: number; directory: boolean }>();
  const visit = async (file: string) => {
    const st = await lstat(file);
    if (st.isSymbolicLink()) return;
    found.set(path.relative(root, file) || ".", { mode: st.mode & 0o7777, directory: st.isDirectory() });
    if (st.isDirectory()) for (const entry of await readdir(file)) await visit(path.join(file, entry));
  };
  await visit(root);
  return found;
}

/** The entries whose mode is not 0700 (directories) or 0600 (files), as "path mode". */
function notPrivate(found: Map<string, { mode: number; directory: boolean }>): string[] {
  return [...found]
    .filter(([, { mode, directory }]) => mode !== (directory ? 0o700 : 0o600))
    .map(([file, { mode }]) => `${file} ${mode.toString(8)}`);
}

const onPostgres = Boolean(process.env.DATABASE_URL);

describe.skipIf(onPostgres)("the embedded database on disk (PGlite only: PostgreSQL keeps and syncs its own files)", () => {
  let server: TestServer;
  let dataDir: string;
  beforeAll(async () => {
    server = await startTestServer({ embedded: "disk" });
    dataDir = server.dataDir;
  });
  afterAll(async () => {
    await server?.destroy();
  });
  afterEach(() => {
    vi.restoreAllMocks();
  });

  it("is created private: directories 0700 and files 0600, those PostgreSQL adds later included", async () => {
    const atStart = await modes(dataDir);
    expect(atStart.size).toBeGreaterThan(500);
    expect(atStart.has(SIGNING_KEY_FILE)).toBe(true);
    expect(notPrivate(atStart)).toEqual([]);

    // A new WAL segment, pages written to relation files, a checkpoint: files PostgreSQL creates
    // and rewrites while the server runs.
    const alice = await registerRoomUser(server.url, "alice");
    const roomId = await alice.createRoom({ name: "files" });
    await server.services.db.execute(sql`select pg_switch_wal()`);
    for (let i = 0; i < 5; i++) await alice.send(roomId, { msgtype: "m.text", body: `message ${i}` });
    await server.services.db.execute(sql`checkpoint`);

    const later = await modes(dataDir);
    const added = [...later.keys()].filter((f) => !atStart.has(f));
    expect(added.some((f) => f.startsWith(path.join("db", "pg_wal")))).toBe(true);
    expect(notPrivate(later)).toEqual([]);
  });

  // Which file a descriptor is comes from /proc/self/fd.
  it.skipIf(process.platform !== "linux")("syncs the WAL to disk after a send's commit, before answering it", async () => {
    const bob = await registerRoomUser(server.url, "bob");
    const roomId = await bob.createRoom({ name: "durable" });

    // Every write to a WAL segment and every sync of one, in order, as PGlite's file layer does them.
    const walFile = (fd: number) => {
      try {
        const file = fs.readlinkSync(`/proc/self/fd/${fd}`);
        return file.startsWith(path.join(fs.realpathSync(dataDir), "db", "pg_wal") + path.sep) ? file : undefined;
      } catch {
        return undefined;
      }
    };
    const log: { op: "write" | "sync"; file: string }[] = [];
    const record = (op: "write" | "sync", fd: unknown) => {
      const file = typeof fd === "number" ? walFile(fd) : undefined;
      if (file) log.push({ op, file });
    };
    for (const name of ["writeSync", "fsyncSync", "fdatasyncSync"] as const) {
      const original = fs[name] as (...args: unknown[]) => unknown;
      vi.spyOn(fs, name).mockImplementation(((...args: unknown[]) => {
        const result = original(...args);
        record(name === "writeSync" ? "write" : "sync", args[0]);
        return result;
      }) as never);
    }

    const res = await request(server.url, "PUT", roomPath(roomId, "/send/m.room.message/durable1"), {
      token: bob.accessToken,
      body: { msgtype: "m.text", body: "on disk before the 200" },
    });
    const beforeAnswer = log.slice();
    expect(res.status).toBe(200);

    const lastWrite = beforeAnswer.findLastIndex((e) => e.op === "write");
    expect(lastWrite, "the send's commit wrote the WAL").toBeGreaterThanOrEqual(0);
    const syncedAfter = beforeAnswer
      .slice(lastWrite + 1)
      .some((e) => e.op === "sync" && e.file === beforeAnswer[lastWrite]!.file);
    expect(syncedAfter, `WAL operations before the answer: ${JSON.stringify(beforeAnswer)}`).toBe(true);
  });

  it("makes the files of an older data directory private when it starts", async () => {
    await server.stop();
    // As versions before this fix left them: PGlite's own 0666 and 0755, and worse.
    for (const [file, { directory }] of await modes(dataDir)) {
      await chmod(path.join(dataDir, file), directory ? 0o777 : 0o666);
    }
    server = await startTestServer({ dataDir });
    expect(notPrivate(await modes(dataDir))).toEqual([]);
    // The same database, working: alice (registered by the first test) logs in.
    const res = await loginUser(server.url, "alice", "pw-alice-secret");
    expect(res.status, JSON.stringify(res.json)).toBe(200);
  });
});
