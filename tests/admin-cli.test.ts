// `parley admin`, run in-process against a test server's database.
import { execFile } from "node:child_process";
import { writeFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import path from "node:path";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";

import { eq } from "drizzle-orm";
import { schema } from "../schema/db.ts";
import { type AdminIo, adminMain } from "../server/admin-cli.ts";
import { loginUser, registerUser } from "./accounts-helpers.ts";
import { createTestDatabase, request, startTestServer, type TestDatabase, type TestServer } from "./harness.ts";

// Each test stops and restarts a server on an on-disk embedded database (the CLI needs it to
// itself): 16–20 s in CI, so a bound of 60 s rather than the default 30 s.
vi.setConfig({ testTimeout: 60_000 });

const onPostgres = Boolean(process.env.DATABASE_URL);

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

describe("parley admin", () => {
  let database: TestDatabase;
  let hs: TestServer | undefined;
  let configFile: string;
  const savedDatabaseUrl = process.env.DATABASE_URL;

  beforeEach(async () => {
    database = await createTestDatabase();
    hs = await startTestServer({ database, embedded: "disk" });
    configFile = path.join(hs.dataDir, "parley.yaml");
    await writeFile(configFile, `server_name: test.local\ndata_dir: ${JSON.stringify(hs.dataDir)}\n`);
    // The environment wins over the file, as for `parley serve`: point it at this test's database.
    if (database.url) process.env.DATABASE_URL = database.url;
  });
  afterEach(async () => {
    if (savedDatabaseUrl === undefined) delete process.env.DATABASE_URL;
    else process.env.DATABASE_URL = savedDatabaseUrl;
    await hs?.destroy();
  });

  async function admin(...argv: string[]) {
    const io = capture();
    const code = await adminMain(["--config", configFile, ...argv], io);
    return { code, ...io };
  }

  /** On PGlite the server must be stopped while the CLI runs; on PostgreSQL it keeps running. */
  async function withServerStoppedIfEmbedded<T>(work: () => Promise<T>): Promise<T> {
    if (onPostgres) return work();
    const dataDir = hs!.dataDir;
    await hs!.stop();
    hs = undefined;
    try {
      return await work();
    } finally {
      hs = await startTestServer({ database, dataDir });
    }
  }

  it.skipIf(onPostgres)("refuses to open the embedded database while the server runs, and says why", async () => {
    const res = await admin("list-users");
    expect(res.code).toBe(1);
    expect(res.stderr).toMatch(/in use by another Parley process|already open in this process/);
    expect(res.stderr).toMatch(/stop the server|PostgreSQL/);
  });

  it.skipIf(onPostgres)("through the real `parley admin` command, names the process that holds the embedded database", async () => {
    const bin = fileURLToPath(new URL("../bin/parley.js", import.meta.url));
    const env: NodeJS.ProcessEnv = { ...process.env, PARLEY_LOG_LEVEL: "silent" };
    delete env.DATABASE_URL;
    const result = await new Promise<{ code: number; stderr: string }>((resolve) => {
      execFile(process.execPath, [bin, "admin", "--config", configFile, "list-users"], { env }, (err, _stdout, stderr) => {
        resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stderr });
      });
    });
    expect(result.code).toBe(1);
    expect(result.stderr).toContain(`in use by another Parley process (pid ${process.pid})`);
    expect(result.stderr).toContain("stop the server");
  });

  it("creates users (generating a password when none is given) who can then log in", async () => {
    const created = await withServerStoppedIfEmbedded(() => admin("create-user", "Admiral", "--admin"));
    expect(created.code).toBe(0);
    expect(created.stdout).toContain("created @admiral:test.local (admin)");
    const password = /password: (\S+)/.exec(created.stdout)?.[1];
    expect(password).toBeTruthy();
    const chosen = await withServerStoppedIfEmbedded(() => admin("create-user", "@sailor:test.local", "--password", "ahoy"));
    expect(chosen.code).toBe(0);
    expect(chosen.stdout).not.toContain("password:");

    expect((await loginUser(hs!.url, "admiral", password!)).status).toBe(200);
    expect((await loginUser(hs!.url, "sailor", "ahoy")).status).toBe(200);
    expect((await hs!.services.accounts.getUser("@admiral:test.local"))?.isAdmin).toBe(true);

    const again = await withServerStoppedIfEmbedded(() => admin("create-user", "sailor"));
    expect(again.code).toBe(1);
    expect(again.stderr).toContain("M_USER_IN_USE");

    const list = await withServerStoppedIfEmbedded(() => admin("list-users"));
    expect(list.stdout).toMatch(/@admiral:test\.local\t\S+\tadmin/);
    expect(list.stdout).toContain("2 user(s)");
  });

  it("resets a password and logs the user's devices out; deactivates; shows the audit log", async () => {
    const user = await registerUser(hs!.url, "deckhand", "first password");
    const reset = await withServerStoppedIfEmbedded(() => admin("reset-password", "deckhand", "--password", "second password"));
    expect(reset.code).toBe(0);
    // On PostgreSQL the running server hears of the revocation at once (NOTIFY).
    const who = await request(hs!.url, "GET", "/_matrix/client/v3/account/whoami", { token: user.accessToken });
    expect(who.status).toBe(401);
    expect((await loginUser(hs!.url, "deckhand", "first password")).status).toBe(403);
    expect((await loginUser(hs!.url, "deckhand", "second password")).status).toBe(200);

    const gone = await withServerStoppedIfEmbedded(() => admin("deactivate", "@deckhand:test.local", "--erase"));
    expect(gone.code).toBe(0);
    expect(gone.stdout).toContain("erased");
    const [row] = await hs!.services.db.select().from(schema.users).where(eq(schema.users.userId, "@deckhand:test.local"));
    expect(row?.erasedTs).toBeGreaterThan(0);
    expect((await loginUser(hs!.url, "deckhand", "second password")).json.errcode).toBe("M_USER_DEACTIVATED");

    const log = await withServerStoppedIfEmbedded(() => admin("audit", "--user", "deckhand", "--limit", "20"));
    expect(log.code).toBe(0);
    const events = log.stdout.trim().split("\n").map((line) => line.split("\t")[1]);
    expect(events).toEqual(expect.arrayContaining(["registered", "password_changed", "deactivated", "login_failed"]));
    expect(log.stdout).not.toContain("second password");
    expect(log.stdout).toContain('"via":"cli"');
  });

  it("answers unknown commands with usage", async () => {
    const res = await admin("frobnicate");
    expect(res.code).toBe(2);
    expect(res.stderr).toContain("Usage: parley admin");
  });
});
