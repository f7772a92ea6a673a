// Test servers: real homeservers on port 0, each with its own fresh database. With DATABASE_URL set
// (CI's second run) every server gets a new PostgreSQL database on that server, dropped afterwards;
// without it, an embedded PGlite database.
import { createHash, randomBytes } from "node:crypto";
import { mkdtemp, readFile, readdir, rename, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { type Config, resolveConfig } from "../server/config.ts";
import { type Homeserver, type StartOptions, startHomeserver } from "../server/homeserver.ts";
import { migratedEmbeddedSnapshot } from "../schema/db.ts";

export interface TestServer extends Homeserver {
  config: Config;
  dataDir: string;
  /** Stops the server and removes its data (and its PostgreSQL database). */
  destroy(): Promise<void>;
  /** Stops the server but keeps its data, so a new one can start on it. */
  stop(): Promise<void>;
}

export interface TestDatabase {
  url?: string;
  drop(): Promise<void>;
}

/** A fresh PostgreSQL database when DATABASE_URL is set, else nothing (PGlite is used). */
export async function createTestDatabase(): Promise<TestDatabase> {
  const admin = process.env.DATABASE_URL;
  if (!admin) return { url: undefined, drop: async () => {} };
  const { default: postgres } = await import("postgres");
  const name = `parley_test_${randomBytes(6).toString("hex")}`;
  const sql = postgres(admin, { max: 1, onnotice: () => {} });
  await sql.unsafe(`create database ${name}`);
  await sql.end();
  const url = new URL(admin);
  url.pathname = `/${name}`;
  return {
    url: url.toString(),
    async drop() {
      const sql = postgres(admin, { max: 1, onnotice: () => {} });
      await sql.unsafe(`drop database if exists ${name} with (force)`);
      await sql.end();
    },
  };
}

export interface TestServerOptions extends StartOptions {
  config?: Record<string, unknown>;
  /** Reuse a data directory and database (restart tests). */
  dataDir?: string;
  database?: TestDatabase;
}

let snapshot: Promise<Blob> | undefined;

/**
 * A migrated empty in-memory database to start test servers from (initdb and the migrations are most
 * of a start on PGlite). Shared by every test process through a file named by the migrations, so a
 * change of schema makes a new one.
 */
function embeddedSnapshot(): Promise<Blob> {
  snapshot ??= (async () => {
    const folder = new URL("../schema/migrations/", import.meta.url);
    const hash = createHash("sha256");
    for (const name of (await readdir(folder)).filter((n) => n.endsWith(".sql")).sort()) {
      hash.update(name).update(await readFile(new URL(name, folder)));
    }
    const file = path.join(tmpdir(), `parley-test-snapshot-${hash.digest("hex").slice(0, 16)}.tar`);
    try {
      return new Blob([await readFile(file)]);
    } catch {
      const blob = await migratedEmbeddedSnapshot();
      // Written aside and renamed: another test process never reads half a file.
      const partial = `${file}.${process.pid}.${randomBytes(4).toString("hex")}`;
      await writeFile(partial, new Uint8Array(await blob.arrayBuffer()));
      await rename(partial, file);
      return blob;
    }
  })();
  return snapshot;
}

export async function startTestServer(options: TestServerOptions = {}): Promise<TestServer> {
  const dataDir = options.dataDir ?? (await mkdtemp(path.join(tmpdir(), "parley-test-")));
  const database = options.database ?? (await createTestDatabase());
  const config = resolveConfig(
    {
      server_name: "test.local",
      port: 0,
      log_level: process.env.PARLEY_TEST_LOG_LEVEL ?? "silent",
      registration: "open",
      rate_limits: false,
      data_dir: dataDir,
      ...(database.url ? { database_url: database.url } : {}),
      ...options.config,
    },
    {},
  );
  const embedded = options.embedded ?? (options.dataDir ? "disk" : "memory");
  const hs = await startHomeserver(config, {
    embedded,
    // Used only for a new embedded database (a restart on a kept data directory opens its own).
    ...(!database.url ? { embeddedSnapshot: await embeddedSnapshot() } : {}),
    ...options,
  });
  return {
    ...hs,
    config,
    dataDir,
    stop: () => hs.close(),
    async destroy() {
      await hs.close();
      await database.drop();
      await rm(dataDir, { recursive: true, force: true });
    },
  };
}

/** fetch against a test server, returning status, headers and parsed JSON (when JSON). */
export async function request(
  base: string,
  method: string,
  path: string,
  options: { body?: unknown; raw?: string | Uint8Array; token?: string; headers?: Record<string, string> } = {},
) {
  const headers: Record<string, string> = { ...options.headers };
  if (options.token) headers.Authorization = `Bearer ${options.token}`;
  let body: string | Uint8Array | undefined;
  if (options.raw !== undefined) body = options.raw;
  else if (options.body !== undefined) {
    body = JSON.stringify(options.body);
    headers["Content-Type"] ??= "application/json";
  }
  const res = await fetch(base + path, { method, headers, body });
  const text = await res.text();
  let json: any;
  try {
    json = text ? JSON.parse(text) : undefined;
  } catch {
    json = undefined;
  }
  return { status: res.status, headers: res.headers, json, text };
}
