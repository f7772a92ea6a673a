// Opening the database: embedded PGlite by default, PostgreSQL through postgres.js when a
// DATABASE_URL is given. One drizzle schema and one set of queries serve both.
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir } from "node:fs/promises";
import { setFlagsFromString } from "node:v8";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { type SQL, sql } from "drizzle-orm";
import { PgDatabase as PgDatabaseClass, PgDialect } from "drizzle-orm/pg-core";
import type { PgDatabase, PgQueryResultHKT } from "drizzle-orm/pg-core";
import { readMigrationFiles } from "drizzle-orm/migrator";
import { lockEmbeddedDatabase } from "./embedded-lock.ts";
import * as schema from "./tables.ts";

export { schema };
export type Schema = typeof schema;
export type Database = PgDatabase<PgQueryResultHKT, Schema>;
/** A transaction handle: the same query surface as the database. */
export type Tx = Parameters<Parameters<Database["transaction"]>[0]>[0];

export interface OpenDatabaseOptions {
  /** postgres:// URL; when absent, PGlite stores the database under `dataDir/db`. */
  databaseUrl?: string;
  dataDir: string;
  /** "memory" keeps an embedded database in memory (tests that need no files). */
  embedded?: "disk" | "memory";
  /** Connection pool size for PostgreSQL. */
  poolSize?: number;
}

export interface OpenedDatabase {
  db: Database;
  kind: "pglite" | "postgres";
  close(): Promise<void>;
  /** Sends NOTIFY on a channel (a no-op wake-up within one process for PGlite). */
  notify(channel: string, payload: string): Promise<void>;
  /** Subscribes to NOTIFY on a channel; resolves once listening. */
  listen(channel: string, onPayload: (payload: string) => void): Promise<() => Promise<void>>;
  /**
   * PostgreSQL only: one connection of the pool, held until `release()`, for a caller that runs its
   * own transaction and pipelines statements (its COMMIT sent with its last statement, say).
   */
  reserve?(): Promise<ReservedConnection>;
}

/** A connection held by one caller (see OpenedDatabase.reserve). */
export interface ReservedConnection {
  /** Queries on this connection. */
  db: Database;
  /**
   * Sends the statements back to back and answers each one's rows, in order: one round trip, BEGIN
   * or COMMIT included. Their values are inlined as escaped literals, so each goes as a simple-protocol
   * query: a parameterised statement not prepared yet would wait for a describe round trip first,
   * and hold back the statements queued behind it.
   */
  pipeline(statements: SQL[]): Promise<unknown[][]>;
  /**
   * Sends the statements as one simple-protocol query string (values inlined, as `pipeline`): one
   * write, one round trip. Answers the rows of all of them together, so at most one should return
   * rows (the driver does not say which statement a row came from).
   */
  script(statements: SQL[]): Promise<unknown[]>;
  release(): void;
}

export class MigrationError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "MigrationError";
  }
}

// Relative to this file in the sources and to dist/parley.js in the bundle: both are one level deep.
const migrationsFolder = fileURLToPath(new URL("../schema/migrations/", import.meta.url));

export async function openDatabase(options: OpenDatabaseOptions): Promise<OpenedDatabase> {
  const opened = options.databaseUrl
    ? await openPostgres(options.databaseUrl, options.poolSize ?? 10)
    : await openPglite(options);
  try {
    await migrate(opened.db);
  } catch (err) {
    await opened.close().catch(() => {});
    throw err;
  }
  return opened;
}

/**
 * PGlite runs PostgreSQL compiled to WebAssembly inside this process, so its memory is ours. Small
 * buffers suit an embedded database; Liftoff-only compilation keeps V8 from holding optimised code
 * for the whole of PostgreSQL (idle RSS about 40 MB lower, query speed measured the same here).
 */
const PGLITE_CONF = ["shared_buffers = 16MB", "work_mem = 4MB", "maintenance_work_mem = 16MB"];

async function openPglite(options: OpenDatabaseOptions): Promise<OpenedDatabase> {
  setFlagsFromString("--liftoff-only");
  const { PGlite } = await import("@electric-sql/pglite");
  const { drizzle } = await import("drizzle-orm/pglite");
  let dataDir: string | undefined;
  let unlock = async () => {};
  if (options.embedded !== "memory") {
    await mkdir(options.dataDir, { recursive: true });
    // Before PGlite touches the files: a second process must not open them (see embedded-lock.ts).
    unlock = await lockEmbeddedDatabase(options.dataDir);
    dataDir = path.join(options.dataDir, "db");
    await mkdir(dataDir, { recursive: true });
  }
  let client;
  try {
    if (dataDir && !existsSync(path.join(dataDir, "PG_VERSION"))) await initPgliteInChildProcess(dataDir);
    client = new PGlite(dataDir, { postgresqlconf: PGLITE_CONF });
    await client.waitReady;
  } catch (err) {
    await unlock();
    throw err;
  }
  const db = drizzle(client, { schema }) as unknown as Database;
  const listeners = new Map<string, Set<(payload: string) => void>>();
  return {
    db,
    kind: "pglite",
    async close() {
      try {
        await client.close();
      } finally {
        await unlock();
      }
    },
    // PGlite lives inside this one process, so NOTIFY only needs to reach our own listeners.
    async notify(channel, payload) {
      for (const fn of listeners.get(channel) ?? []) fn(payload);
    },
    async listen(channel, onPayload) {
      let set = listeners.get(channel);
      if (!set) listeners.set(channel, (set = new Set()));
      set.add(onPayload);
      return async () => {
        set.delete(onPayload);
      };
    },
  };
}

/**
 * Creating a PGlite cluster (initdb) peaks at several hundred MB that the process never returns, so
 * the first start creates it in a short-lived child process and then opens it here.
 */
async function initPgliteInChildProcess(dataDir: string): Promise<void> {
  const pglite = import.meta.resolve("@electric-sql/pglite");
  const script = `const { PGlite } = await import(${JSON.stringify(pglite)});
    const db = new PGlite(${JSON.stringify(dataDir)}); await db.waitReady; await db.close();`;
  await new Promise<void>((resolve, reject) => {
    const child = spawn(process.execPath, ["--input-type=module", "-e", script], { stdio: ["ignore", "ignore", "pipe"] });
    let stderr = "";
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    child.on("error", reject);
    child.on("close", (code) =>
      code === 0 ? resolve() : reject(new Error(`creating the embedded database failed: ${stderr.trim()}`)),
    );
  });
}

async function openPostgres(url: string, poolSize: number): Promise<OpenedDatabase> {
  const { default: postgres } = await import("postgres");
  const { drizzle, PostgresJsSession } = await import("drizzle-orm/postgres-js");
  const client = postgres(url, {
    max: poolSize,
    onnotice: () => {},
    connection: { application_name: "parley" },
  });
  // Fail fast with a clear message when the server is unreachable.
  await client`select 1`;
  const db = drizzle(client, { schema }) as unknown as Database;
  return {
    db,
    kind: "postgres",
    async close() {
      await client.end({ timeout: 5 });
    },
    async notify(channel, payload) {
      await client.notify(channel, payload);
    },
    async listen(channel, onPayload) {
      const sub = await client.listen(channel, onPayload);
      return () => sub.unlisten();
    },
    async reserve() {
      const connection = await client.reserve();
      // As drizzle builds a transaction's handle: the pool's dialect and schema, this connection.
      const base = (db as unknown as { session: { dialect: PgDialect; schema: unknown; options: unknown } }).session;
      const session = new PostgresJsSession(connection, base.dialect, base.schema as never, base.options as never);
      return {
        db: new PgDatabaseClass(base.dialect, session as never, base.schema as never) as unknown as Database,
        pipeline: (statements) =>
          Promise.all(
            statements.map(
              (s) => connection.unsafe(inliningDialect.sqlToQuery(s.inlineParams()).sql) as unknown as Promise<unknown[]>,
            ),
          ),
        async script(statements) {
          const text = statements.map((s) => inliningDialect.sqlToQuery(s.inlineParams()).sql).join(";\n");
          const result = (await connection.unsafe(text)) as unknown as unknown[];
          // One result: its rows. Several: a list of results (each a list of rows).
          return result.some((r) => Array.isArray(r)) ? (result as unknown[][]).flat() : result;
        },
        release: () => connection.release(),
      };
    },
  };
}

/**
 * Inlines values as E'' string literals (backslashes and quotes escaped), which read the same
 * whatever `standard_conforming_strings` says. Numbers, booleans and null are written as such.
 */
class InliningDialect extends PgDialect {
  override escapeString(str: string): string {
    // The query text ends at a NUL on the wire; refuse as PostgreSQL would refuse the value (22021).
    if (str.includes("\u0000")) throw Object.assign(new Error("a string value contains NUL"), { code: "22021" });
    return `E'${str.replace(/\\/g, "\\\\").replace(/'/g, "''")}'`;
  }
}
const inliningDialect = new InliningDialect();

/**
 * A value as an SQL literal, as InliningDialect writes it: for statements built as text on a hot
 * path (where assembling drizzle SQL objects costs more than the query).
 */
export function sqlLiteral(value: string | number | boolean | null): string {
  if (value === null) return "null";
  if (typeof value === "number") {
    if (!Number.isSafeInteger(value)) throw new Error(`not a safe integer: ${value}`);
    return String(value);
  }
  if (typeof value === "boolean") return value ? "true" : "false";
  return inliningDialect.escapeString(value);
}

/** The text of a drizzle statement with its values inlined as literals. */
export function inlineSql(statement: SQL): string {
  return inliningDialect.sqlToQuery(statement.inlineParams()).sql;
}

/** Arbitrary constant: the advisory lock that serialises migrations across processes. */
const MIGRATION_LOCK = 7_201_604_117;

/**
 * Applies the SQL migrations generated by drizzle-kit, all in one transaction that holds an
 * advisory lock, so two processes starting at once do not race and a failing migration leaves
 * the database exactly as it was.
 */
export async function migrate(db: Database, folder = migrationsFolder): Promise<{ applied: number }> {
  const migrations = readMigrationFiles({ migrationsFolder: folder });
  try {
    return await db.transaction(async (tx) => {
      await tx.execute(sql`select pg_advisory_xact_lock(${MIGRATION_LOCK})`);
      await tx.execute(sql`create schema if not exists drizzle`);
      await tx.execute(sql`create table if not exists drizzle.__drizzle_migrations (
        id serial primary key, hash text not null, created_at bigint)`);
      const rows = await tx.execute(
        sql`select created_at from drizzle.__drizzle_migrations order by created_at desc limit 1`,
      );
      const last = Number(rowsOf<{ created_at: string | number | null }>(rows)[0]?.created_at ?? 0);
      let applied = 0;
      for (const migration of migrations) {
        if (migration.folderMillis <= last) continue;
        for (const statement of migration.sql) {
          if (statement.trim()) await tx.execute(sql.raw(statement));
        }
        await tx.execute(sql`insert into drizzle.__drizzle_migrations (hash, created_at)
          values (${migration.hash}, ${migration.folderMillis})`);
        applied++;
      }
      return { applied };
    });
  } catch (err) {
    throw new MigrationError(
      `database migration failed, nothing was changed: ${(err as Error).message}`,
      { cause: err },
    );
  }
}

/** postgres.js returns rows as an array; PGlite returns `{ rows }`. */
export function rowsOf<T>(result: unknown): T[] {
  if (Array.isArray(result)) return result as T[];
  return ((result as { rows?: T[] }).rows ?? []) as T[];
}
