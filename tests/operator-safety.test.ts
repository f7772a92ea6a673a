// Issue 18: what an operator gets without configuring anything must be safe, and what the server
// logs must tell the operator what it is doing without ever carrying a secret.
import { randomBytes } from "node:crypto";
import { mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { sql } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { z } from "zod";
import { adminMain, type AdminIo } from "../server/admin-cli.ts";
import { migrate, openDatabase, SchemaNewerThanCodeError } from "../schema/db.ts";
import { resolveConfig } from "../server/config.ts";
import { checkRegistrationExposure, publicBaseurlWarning } from "../server/homeserver.ts";
import { route } from "../server/http/route.ts";
import { createParleyLogger } from "../server/logging.ts";
import { SERVER_VERSION } from "../server/version.ts";
import { loginUser, registerUser, type TestUser } from "./accounts-helpers.ts";
import { createTestDatabase, request, startTestServer, type TestServer } from "./harness.ts";

const onPostgres = Boolean(process.env.DATABASE_URL);

/** A logger whose JSON lines land in `lines`. */
function capturingLogger(level = "info") {
  const lines: Record<string, any>[] = [];
  const text: string[] = [];
  const logger = createParleyLogger(level, {
    write(line: string) {
      text.push(line);
      lines.push(JSON.parse(line));
    },
  });
  return { logger, lines, text: () => text.join("") };
}

const migrationCount = async () =>
  (JSON.parse(await readFile(new URL("../schema/migrations/meta/_journal.json", import.meta.url), "utf8")) as { entries: unknown[] }).entries.length;

describe("open registration", () => {
  it("refuses to start open on an address other than loopback, naming the switch", async () => {
    // Refused before any database is opened.
    const noDatabase = { url: undefined, drop: async () => {} };
    await expect(startTestServer({ database: noDatabase, config: { bind: "0.0.0.0", registration: "open" } })).rejects.toThrow(
      /allow_public_open_registration/,
    );
  });

  it("allows loopback, token or closed registration, or the explicit switch", async () => {
    const check = (c: Record<string, unknown>) => () => checkRegistrationExposure(resolveConfig(c, {}));
    expect(check({ bind: "0.0.0.0", registration: "token" })).not.toThrow();
    expect(check({ bind: "0.0.0.0", registration: "closed" })).not.toThrow();
    expect(check({ bind: "::", registration: "open", allow_public_open_registration: true })).not.toThrow();
    expect(check({ bind: "127.0.0.1", registration: "open" })).not.toThrow();
    expect(check({ bind: "::1", registration: "open" })).not.toThrow();
    expect(check({ bind: "::", registration: "open" })).toThrow(/allow_public_open_registration/);
    expect(check({ bind: "192.168.1.5", registration: "open" })).toThrow(/registration: token/);
  });

  it("is not what the Docker image defaults to", async () => {
    const dockerfile = await readFile(new URL("../docker/Dockerfile", import.meta.url), "utf8");
    expect(dockerfile).toMatch(/PARLEY_REGISTRATION=token/);
    expect(dockerfile).toMatch(/PARLEY_BIND=0\.0\.0\.0/);
  });
});

describe("the start line", () => {
  it("gives version, listening address, database, server name, registration mode and how to create the first admin", async () => {
    const { logger, lines } = capturingLogger();
    const hs = await startTestServer({ logger, config: { bind: "0.0.0.0", registration: "token", server_name: "chat.example.org" } });
    try {
      const start = lines.find((l) => l.msg === "parley is listening")!;
      expect(start.version).toBe(SERVER_VERSION);
      expect(start.listening).toEqual([`http://0.0.0.0:${hs.port}`]);
      expect(start.server_name).toBe("chat.example.org");
      expect(start.public_baseurl).toBe("https://chat.example.org/");
      expect(start.registration).toBe("token");
      expect(start.firstAdmin).toMatch(/parley admin create-user NAME --admin/);
      if (onPostgres) {
        const url = new URL(hs.config.database_url!);
        expect(start.database).toEqual({ kind: "postgres", host: `${url.hostname}:${url.port}`, name: url.pathname.slice(1) });
      } else {
        expect(start.database).toEqual({ kind: "embedded", path: path.join(hs.dataDir, "db") });
      }
      // The well-known document follows the server name, not localhost.
      const wk = await request(hs.url, "GET", "/.well-known/matrix/client");
      expect(wk.json["m.homeserver"].base_url).toBe("https://chat.example.org");
    } finally {
      await hs.destroy();
    }
  }, 60_000);

  it("warns when public_baseurl still points at localhost while the server name does not", () => {
    const warning = (c: Record<string, unknown>) => publicBaseurlWarning(resolveConfig(c, {}));
    expect(warning({ server_name: "chat.example.org", public_baseurl: "http://localhost:8008/" })).toMatch(/public_baseurl points at localhost/);
    expect(warning({ server_name: "chat.example.org" })).toBeUndefined();
    expect(warning({ server_name: "localhost:8008" })).toBeUndefined();
  });
});

describe("database schema", () => {
  it("logs each migration applied, and refuses to start on a schema newer than the code", async () => {
    const database = await createTestDatabase();
    const dataDir = await mkdtemp(path.join(tmpdir(), "parley-test-"));
    const options = { databaseUrl: database.url, dataDir, embedded: "memory" as const };
    try {
      const applied: string[] = [];
      const opened = await openDatabase({ ...options, onMigrationApplied: (name) => applied.push(name) });
      try {
        expect(applied).toHaveLength(await migrationCount());
        expect(applied[0]).toMatch(/^0000_/);
        // What a newer Parley leaves behind: a migration this code does not know.
        await opened.db.execute(
          sql`insert into drizzle.__drizzle_migrations (hash, created_at) values ('from-the-future', ${Date.now() + 365 * 86_400_000})`,
        );
        await expect(migrate(opened.db)).rejects.toThrow(SchemaNewerThanCodeError);
        await expect(migrate(opened.db)).rejects.toThrow(/schema is newer than this version of Parley/);
      } finally {
        await opened.close();
      }
    } finally {
      await database.drop();
      await rm(dataDir, { recursive: true, force: true });
    }
  }, 60_000);
});

describe("parley admin", () => {
  function capture(): AdminIo & { stdout: string; stderr: string } {
    const io = { stdout: "", stderr: "", out: (t: string) => void (io.stdout += t), err: (t: string) => void (io.stderr += t) };
    return io;
  }

  it("refuses to create a database that does not exist unless told to (--init), and says which it uses", async () => {
    const database = await createTestDatabase();
    const dir = await mkdtemp(path.join(tmpdir(), "parley-test-"));
    const saved = process.env.DATABASE_URL;
    try {
      const configFile = path.join(dir, "parley.yaml");
      const dataDir = path.join(dir, "data");
      await writeFile(configFile, `server_name: test.local\ndata_dir: ${JSON.stringify(dataDir)}\n`);
      if (database.url) process.env.DATABASE_URL = database.url;
      const refused = capture();
      expect(await adminMain(["--config", configFile, "create-user", "alice", "--admin"], refused)).toBe(1);
      expect(refused.stdout).toBe("");
      expect(refused.stderr).toContain(`data directory ${dataDir}`);
      expect(refused.stderr).toContain(onPostgres ? "PostgreSQL database" : `embedded database ${path.join(dataDir, "db")}`);
      expect(refused.stderr).toContain("--init");
      // Nothing was created.
      if (!onPostgres) await expect(stat(dataDir)).rejects.toThrow(/ENOENT/);

      const created = capture();
      expect(await adminMain(["--config", configFile, "--init", "create-user", "alice", "--admin"], created)).toBe(0);
      expect(created.stdout).toContain("created @alice:test.local (admin)");
      if (!onPostgres) expect((await stat(path.join(dataDir, "db", "PG_VERSION"))).isFile()).toBe(true);
    } finally {
      if (saved === undefined) delete process.env.DATABASE_URL;
      else process.env.DATABASE_URL = saved;
      await database.drop();
      await rm(dir, { recursive: true, force: true });
    }
    // Creates an embedded database (initdb in a child process, then opened): seconds, but a minute
    // was seen on a machine loaded by other test runs.
  }, 120_000);
});

describe("requests", () => {
  let hs: TestServer;
  let alice: TestUser;
  let log: ReturnType<typeof capturingLogger>;
  const secret = `hunter2-${randomBytes(8).toString("hex")}`;
  // A handler whose query fails inside the database, with the request's secret among its values:
  // what any database error on a write path looks like.
  const failingWrite = route({
    method: "PUT",
    path: "/_test/failing-write",
    auth: "user",
    body: z.object({ note: z.object({ password: z.string() }) }),
    async handler({ body }, services) {
      await services.db.execute(sql`select ${body.note.password}::bigint`);
      return {};
    },
  });

  beforeAll(async () => {
    log = capturingLogger("debug");
    hs = await startTestServer({ logger: log.logger, extraRoutes: [failingWrite] });
    alice = await registerUser(hs.url, "alice");
  }, 60_000);
  afterAll(() => hs.destroy(), 60_000);

  it("logs a database error without the request's content or the query's values", async () => {
    const res = await request(hs.url, "PUT", "/_test/failing-write", { token: alice.accessToken, body: { note: { password: secret } } });
    expect(res.status).toBe(500);
    const error = log.lines.find((l) => l.msg === "unhandled error");
    expect(error?.err?.message).toMatch(/Failed query: select \$1::bigint/);
    expect(error?.err?.cause?.code).toBe("22P02");
    expect(log.text()).not.toContain("hunter2");
  });

  it("scrubs secrets nested anywhere in a logged object", () => {
    const { logger, text } = capturingLogger();
    logger.info({ a: { b: [{ access_token: "tok-1" }], registration_shared_secret: "sec-2" }, auth: { password: "pw-3" }, body: "body-4" }, "x");
    for (const s of ["tok-1", "sec-2", "pw-3", "body-4"]) expect(text()).not.toContain(s);
  });

  it("logs each request with its user and client address", async () => {
    await request(hs.url, "GET", "/_matrix/client/v3/account/whoami", { token: alice.accessToken });
    const line = log.lines.find((l) => l.msg === "request" && l.path === "/_matrix/client/v3/account/whoami");
    expect(line).toMatchObject({ user: alice.userId, ip: "127.0.0.1", status: 200 });
  });

  it("refuses overlong path parameters with 400 rather than a database error", async () => {
    const long = randomBytes(3000).toString("base64url");
    const toDevice = await request(hs.url, "PUT", `/_matrix/client/v3/sendToDevice/m.test/${long}`, { token: alice.accessToken, body: { messages: {} } });
    expect(toDevice.status).toBe(400);
    expect(toDevice.json.errcode).toBe("M_INVALID_PARAM");
    const u = encodeURIComponent(alice.userId);
    const accountData = await request(hs.url, "PUT", `/_matrix/client/v3/user/${u}/account_data/${"a".repeat(6000)}`, {
      token: alice.accessToken,
      body: { secret },
    });
    expect(accountData.status).toBe(400);
  });

  it("refuses passwords shorter than password_min_length at registration and password change", async () => {
    const weak = await request(hs.url, "POST", "/_matrix/client/v3/register", { body: { username: "weakling", password: "x" } });
    expect(weak.status).toBe(400);
    expect(weak.json.errcode).toBe("M_WEAK_PASSWORD");
    const change = await request(hs.url, "POST", "/_matrix/client/v3/account/password", {
      token: alice.accessToken,
      body: { new_password: "1234567" },
    });
    expect(change.status).toBe(400);
    expect(change.json.errcode).toBe("M_WEAK_PASSWORD");
    expect((await loginUser(hs.url, "alice", alice.password)).status).toBe(200);
    expect(resolveConfig({}, {}).password_min_length).toBe(8);
  });
});
