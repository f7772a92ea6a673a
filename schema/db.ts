// Opening the database: embedded PGlite by default, PostgreSQL through postgres.js when a
// DATABASE_URL is given. One drizzle schema and one set of queries serve both.
import { spawn } from "node:child_process";
import fs, { existsSync } from "node:fs";
import { chmod, lstat, mkdir, open, readdir } from "node:fs/promises";
import net from "node:net";
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
  /**
   * Embedded database on disk: each commit reaches the disk before it is acknowledged (fsync), so it
   * survives an OS crash or a power loss (default true; see `embedded_fsync` in server/config.ts).
   */
  embeddedFsync?: boolean;
  /**
   * Refuse, with DatabaseNotInitializedError, a database Parley never set up (no embedded cluster in
   * the data directory, or a PostgreSQL database without Parley's tables) instead of creating it:
   * `parley admin` run from the wrong folder must not report success on a new empty database.
   */
  mustExist?: boolean;
  /**
   * A new embedded database (in memory, or on disk when its directory has none yet) starts from
   * this data directory (a `migratedEmbeddedSnapshot()`) instead of initdb and the migrations: test
   * suites start hundreds of servers, and initdb is most of each start.
   */
  embeddedSnapshot?: Blob;
  /** Told of each migration applied, by its name (0003_media...), for the log. */
  onMigrationApplied?: (name: string) => void;
  /**
   * Told of every query and transaction asked of the pool (metrics): how long it took from the ask
   * to its answer, waiting for a connection included. Unset: nothing is counted or timed.
   */
  onQuery?: QueryObserver;
}

/** `seconds` from the ask to the answer; `kind` "transaction" for a whole transaction. */
export type QueryObserver = (kind: "query" | "transaction", seconds: number) => void;

/** The connections in use and the work waiting for one (counted only with `onQuery`). */
export interface PoolUse {
  size: number;
  inUse: number;
  waiting: number;
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
  /** What the pool is doing now (zeros unless opened with `onQuery`). */
  poolUse(): PoolUse;
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

/** A database that `mustExist` but was never set up (see OpenDatabaseOptions.mustExist). */
export class DatabaseNotInitializedError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "DatabaseNotInitializedError";
  }
}

/** The database was migrated by a newer Parley than this one: refuse rather than misread it. */
export class SchemaNewerThanCodeError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "SchemaNewerThanCodeError";
  }
}

export class MigrationError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "MigrationError";
  }
}

/**
 * Work asked of a database that has begun to close (the server is shutting down): refused at once,
 * before it can queue behind a closing pool or open a connection.
 */
export class DatabaseClosedError extends Error {
  readonly code = "PARLEY_DATABASE_CLOSED";
  constructor() {
    super("the database is closed: the server is shutting down");
    this.name = "DatabaseClosedError";
  }
}

/** Whether `err`, or an error it wraps (drizzle wraps driver errors), is a DatabaseClosedError. */
export function isDatabaseClosed(err: unknown): boolean {
  for (let e = err, depth = 0; e instanceof Error && depth < 5; e = e.cause, depth++) {
    if (e instanceof DatabaseClosedError) return true;
  }
  return false;
}

/**
 * The driver client as drizzle sees it, with `entryPoints` refused once `isClosed()`: queries and
 * transactions already running finish on their connection, new ones fail fast. Every method runs on
 * the client itself (PGlite keeps its state in private fields, which a proxy receiver cannot reach).
 */
function refusingWhenClosed<T extends object>(
  client: T,
  entryPoints: readonly string[],
  isClosed: () => boolean,
  queue?: OneAtATime,
  meter?: QueryMeter,
): T {
  return new Proxy(client, {
    get(target, property) {
      const value: unknown = Reflect.get(target, property, target);
      if (typeof value !== "function") return value;
      if (typeof property === "string" && entryPoints.includes(property)) {
        const call = (args: unknown[]) => {
          if (isClosed()) {
            // postgres.js's `unsafe` answers a query object that drizzle calls methods on (`values()`),
            // so it throws (drizzle calls it inside an async function); the others answer promises.
            if (property === "unsafe") throw new DatabaseClosedError();
            return Promise.reject(new DatabaseClosedError());
          }
          return (value as (...a: unknown[]) => unknown).apply(target, args);
        };
        const run = (...args: unknown[]) => (queue ? queue.run(() => call(args)) : call(args));
        if (!meter || !METERED.has(property)) return run;
        return (...args: unknown[]) => meter.track(property, run(...args));
      }
      return (value as (...a: unknown[]) => unknown).bind(target);
    },
  });
}

/**
 * Counts the queries and transactions in flight and times each from its ask to its answer, for the
 * metrics. A listener is added to the driver's promise without starting it: postgres.js runs a query
 * when `then` is first called on it, and drizzle configures it (`.values()`) after the call.
 */
const METERED = new Set(["query", "exec", "transaction", "unsafe", "begin"]);

class QueryMeter {
  inFlight = 0;
  constructor(private readonly onQuery: QueryObserver) {}

  track<R>(entryPoint: string, result: R): R {
    if (!(result instanceof Promise)) return result;
    const kind = entryPoint === "begin" || entryPoint === "transaction" ? "transaction" : "query";
    this.inFlight++;
    const started = performance.now();
    const done = () => {
      this.inFlight--;
      this.onQuery(kind, (performance.now() - started) / 1000);
    };
    Promise.prototype.then.call(result, done, done);
    return result;
  }
}

/**
 * PGlite runs one query (or transaction) at a time, synchronously, inside this process, and hands
 * over to the next one waiting in a promise callback: a backlog (hundreds of requests at once) ran
 * as one chain of microtasks, serving no timer, socket or signal until it drained (SIGTERM went
 * unanswered for seconds). So they wait here instead, in the same order and one at a time as PGlite
 * would run them, and once the work has gone on for `turnEveryMs` the next one waits for a turn of
 * the event loop first. Whether the database is closed is checked when a query's turn comes, so a
 * backlog left at shutdown is refused rather than run.
 */
class OneAtATime {
  private tail: Promise<unknown> = Promise.resolve();
  private turned = performance.now();

  constructor(private readonly turnEveryMs: number) {}

  run<R>(work: () => R | PromiseLike<R>): Promise<R> {
    const result = this.tail.then(() => this.turn()).then(work);
    this.tail = result.then(
      () => {},
      () => {},
    );
    return result;
  }

  private turn(): Promise<void> | undefined {
    if (performance.now() - this.turned < this.turnEveryMs) return undefined;
    return new Promise((resolve) =>
      setImmediate(() => {
        this.turned = performance.now();
        resolve();
      }),
    );
  }
}

// Relative to this file in the sources and to dist/parley.js in the bundle: both are one level deep.
const migrationsFolder = fileURLToPath(new URL("../schema/migrations/", import.meta.url));

export async function openDatabase(options: OpenDatabaseOptions): Promise<OpenedDatabase> {
  if (options.mustExist && !options.databaseUrl && options.embedded !== "memory" && !existsSync(path.join(options.dataDir, "db", "PG_VERSION"))) {
    throw new DatabaseNotInitializedError(`there is no embedded database in ${path.join(options.dataDir, "db")}`);
  }
  // The data directory holds the signing key and, embedded, the whole database: Parley's user only.
  await makePrivateDirectory(options.dataDir);
  const opened = options.databaseUrl
    ? await openPostgres(options.databaseUrl, options.poolSize ?? 10, options.onQuery)
    : await openPglite(options);
  try {
    if (options.mustExist && options.databaseUrl) {
      const [row] = rowsOf<{ t: string | null }>(await opened.db.execute(sql`select to_regclass('drizzle.__drizzle_migrations')::text as t`));
      if (!row?.t) throw new DatabaseNotInitializedError("the PostgreSQL database has no Parley tables");
    }
    await migrate(opened.db, migrationsFolder, options.onMigrationApplied);
  } catch (err) {
    await opened.close().catch(() => {});
    throw err;
  }
  return opened;
}

/**
 * A migrated, empty embedded database as a data-directory tarball, for `embeddedSnapshot`: what a
 * new in-memory database would be once initdb and the migrations had run.
 */
export async function migratedEmbeddedSnapshot(): Promise<Blob> {
  const { PGlite } = await import("@electric-sql/pglite");
  const { drizzle } = await import("drizzle-orm/pglite");
  const client = new PGlite({ postgresqlconf: PGLITE_CONF });
  try {
    await migrate(drizzle(client, { schema }) as unknown as Database);
    return await client.dumpDataDir("none");
  } finally {
    await client.close();
  }
}

/**
 * PGlite runs PostgreSQL compiled to WebAssembly inside this process, so its memory is ours. Small
 * buffers suit an embedded database; Liftoff-only compilation keeps V8 from holding optimised code
 * for the whole of PostgreSQL (idle RSS about 40 MB lower, query speed measured the same here).
 * WAL is synced with fsync() because that is the call that reaches the file layer (see
 * `privateDurableNodeFs`); whether it is synced at all is the -F start parameter.
 */
const PGLITE_CONF = [
  "shared_buffers = 16MB",
  "work_mem = 4MB",
  "maintenance_work_mem = 16MB",
  "wal_sync_method = fsync",
];

async function openPglite(options: OpenDatabaseOptions): Promise<OpenedDatabase> {
  setFlagsFromString("--liftoff-only");
  const { PGlite } = await import("@electric-sql/pglite");
  const { drizzle } = await import("drizzle-orm/pglite");
  let dataDir: string | undefined;
  let unlock = async () => {};
  if (options.embedded !== "memory") {
    // Before PGlite touches the files: a second process must not open them (see embedded-lock.ts).
    unlock = await lockEmbeddedDatabase(options.dataDir);
    dataDir = path.join(options.dataDir, "db");
  }
  let client;
  let fromSnapshot = false;
  try {
    if (dataDir) {
      await makePrivateDirectory(dataDir);
      const created = !existsSync(path.join(dataDir, "PG_VERSION"));
      // A new cluster from the snapshot (tests) is unpacked by PGlite itself as it opens, below.
      fromSnapshot = created && options.embeddedSnapshot !== undefined;
      if (created && !fromSnapshot) await initPgliteInChildProcess(dataDir);
      // Files created by the child, and by versions of Parley before private modes: made private
      // here, while no one else can reach them (db/ is already 0700). A new cluster also goes to disk
      // now: crash recovery later starts from its files.
      if (!fromSnapshot) await makeTreePrivate(dataDir, { sync: created && options.embeddedFsync !== false });
    }
    const durable = dataDir !== undefined && options.embeddedFsync !== false;
    client = dataDir
      ? new PGlite({
          fs: await privateDurableNodeFs(dataDir, durable),
          postgresqlconf: PGLITE_CONF,
          // PGlite starts PostgreSQL with -F (fsync off) by default.
          startParams: durable ? PGlite.defaultStartParams.filter((p) => p !== "-F") : PGlite.defaultStartParams,
          ...(fromSnapshot ? { loadDataDir: options.embeddedSnapshot } : {}),
        })
      : new PGlite({ postgresqlconf: PGLITE_CONF, ...(options.embeddedSnapshot ? { loadDataDir: options.embeddedSnapshot } : {}) });
    await client.waitReady;
    if (dataDir && fromSnapshot) await makeTreePrivate(dataDir, { sync: options.embeddedFsync !== false });
  } catch (err) {
    await unlock();
    throw err;
  }
  // Once closing, new queries are refused; PGlite's close waits for those already queued.
  let closing = false;
  const meter = options.onQuery && new QueryMeter(options.onQuery);
  const guarded = refusingWhenClosed(client, ["query", "exec", "transaction"], () => closing, new OneAtATime(10), meter);
  const db = drizzle(guarded, { schema }) as unknown as Database;
  const listeners = new Map<string, Set<(payload: string) => void>>();
  return {
    db,
    kind: "pglite",
    // One connection: the query running, and those queued behind it (OneAtATime).
    poolUse: () => ({ size: 1, inUse: Math.min(1, meter?.inFlight ?? 0), waiting: Math.max(0, (meter?.inFlight ?? 0) - 1) }),
    async close() {
      closing = true;
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

const S_IFMT = 0o170000;
const S_IFDIR = 0o040000;

/**
 * A mode without group and other bits (and, for a file, without execute bits): directories 0700,
 * files 0600 from what PostgreSQL and emscripten ask for (0777, 0666, 0600).
 */
export function privateMode(mode: number, isDirectory: boolean): number {
  return isDirectory ? mode & ~0o077 : mode & ~0o177;
}

/** Creates `dir` (and its parents) if missing, and takes group and other access away from it. */
async function makePrivateDirectory(dir: string): Promise<void> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await makePrivate(dir, (await lstat(dir)).mode, true);
}

async function makePrivate(file: string, mode: number, isDirectory: boolean): Promise<void> {
  if (process.platform === "win32") return;
  const wanted = privateMode(mode, isDirectory) & 0o7777;
  if ((mode & 0o7777) === wanted) return;
  try {
    await chmod(file, wanted);
  } catch (err) {
    throw new Error(
      `cannot make ${file} private (mode ${wanted.toString(8)}): ${(err as Error).message}. ` +
        "The data directory must belong to the user that runs Parley.",
      { cause: err },
    );
  }
}

/**
 * Takes group and other access away from everything under `dir` (symbolic links left alone: chmod
 * would follow them); with `sync`, also fsyncs every file and directory, children before parents.
 */
async function makeTreePrivate(dir: string, options: { sync: boolean }): Promise<void> {
  const visit = async (file: string): Promise<void> => {
    const st = await lstat(file);
    if (st.isSymbolicLink()) return;
    await makePrivate(file, st.mode, st.isDirectory());
    if (st.isDirectory()) {
      const entries = await readdir(file);
      await Promise.all(entries.map((entry) => visit(path.join(file, entry))));
    }
    if (options.sync) {
      const handle = await open(file, "r");
      try {
        await handle.sync();
      } finally {
        await handle.close();
      }
    }
  };
  await visit(dir);
}

/** The part of emscripten's NODEFS (PGlite's file layer on Node) that privateDurableNodeFs changes. */
interface EmscriptenNodeFs {
  node_ops: {
    mknod(parent: unknown, name: string, mode: number, dev: number): unknown;
    setattr(node: EmscriptenNode, attr: { mode?: number }): void;
  };
  stream_ops: {
    setattr(stream: EmscriptenStream, attr: { mode?: number }): void;
    fsync?(stream: EmscriptenStream): number;
  };
  tryFSOperation<T>(operation: () => T): T;
}
interface EmscriptenNode {
  mode: number;
}
interface EmscriptenStream {
  node: EmscriptenNode;
  /** The file's path inside PGlite's file system (the data directory is mounted at /pglite/data). */
  path: string;
  /** Node's file descriptor. */
  nfd: number;
}

/**
 * PGlite's Node file system, with two things a database needs that emscripten's NODEFS lacks:
 * - Private modes by construction. Emscripten creates each file and then chmods it to the mode asked
 *   for, so the umask plays no part; PGlite's initdb cluster is written through a tar extraction that
 *   asks for 0666, and mkdir gets 0777 less the umask. Here every mode that passes through the layer
 *   (create, chmod) loses its group and other bits: directories 0700, files 0600, WAL segments and
 *   relation files created later included.
 * - fsync. NODEFS has no fsync operation, so PostgreSQL's fsync() answered success without reaching
 *   the disk (emscripten's fdatasync() never reaches the file system at all, hence wal_sync_method =
 *   fsync). With `durable`, fsync() is the real one: fdatasync(2) for WAL segments (preallocated and
 *   zero-filled, so a commit changes no metadata that matters), fsync(2) for everything else
 *   (relation files at a checkpoint, directories after a file is created or renamed). PostgreSQL
 *   fsyncs the WAL at every commit before it answers (synchronous_commit = on), so a transaction
 *   Parley has seen committed is on disk, whichever code path ran it.
 */
async function privateDurableNodeFs(dataDir: string, durable: boolean) {
  const { NodeFS } = await import("@electric-sql/pglite/nodefs");
  type Emscripten = { NODEFS: EmscriptenNodeFs };
  class PrivateDurableNodeFS extends NodeFS {
    override async init(...args: Parameters<InstanceType<typeof NodeFS>["init"]>) {
      const { emscriptenOpts } = await super.init(...args);
      const preRun = [...((emscriptenOpts.preRun ?? []) as ((mod: Emscripten) => void)[])];
      preRun.push((mod) => hardenNodeFs(mod.NODEFS, durable));
      return { emscriptenOpts: { ...emscriptenOpts, preRun } as typeof emscriptenOpts };
    }
  }
  return new PrivateDurableNodeFS(dataDir);
}

function hardenNodeFs(nodefs: EmscriptenNodeFs, durable: boolean): void {
  const { node_ops: nodeOps, stream_ops: streamOps } = nodefs;
  const isDirectory = (mode: number) => (mode & S_IFMT) === S_IFDIR;
  const mknod = nodeOps.mknod;
  nodeOps.mknod = (parent, name, mode, dev) =>
    mknod.call(nodeOps, parent, name, privateMode(mode, isDirectory(mode)), dev);
  const setNodeAttr = nodeOps.setattr;
  nodeOps.setattr = (node, attr) =>
    setNodeAttr.call(nodeOps, node, attr.mode === undefined ? attr : { ...attr, mode: privateMode(attr.mode, isDirectory(node.mode)) });
  const setStreamAttr = streamOps.setattr;
  streamOps.setattr = (stream, attr) =>
    setStreamAttr.call(streamOps, stream, attr.mode === undefined ? attr : { ...attr, mode: privateMode(attr.mode, isDirectory(stream.node.mode)) });
  if (durable) {
    streamOps.fsync = (stream) => {
      // Through the module object, not a named import: tests observe these calls.
      nodefs.tryFSOperation(() =>
        stream.path.includes("/pg_wal/") ? fs.fdatasyncSync(stream.nfd) : fs.fsyncSync(stream.nfd),
      );
      return 0;
    };
  }
}

async function openPostgres(url: string, poolSize: number, onQuery?: QueryObserver): Promise<OpenedDatabase> {
  const { default: postgres } = await import("postgres");
  const { drizzle, PostgresJsSession } = await import("drizzle-orm/postgres-js");
  // Once closing: no new query, transaction, reservation or NOTIFY, and no new connection. postgres.js
  // alone would reconnect after end() to run queries still queued in its pool (and reserve() ignores
  // end() altogether): connections opened after shutdown, which then kept the process alive.
  let closing = false;
  const options = {
    max: poolSize,
    onnotice: () => {},
    connection: { application_name: "parley" },
    // Documented (README, "Custom socket") but missing from postgres.js's types.
    socket: connectUnlessClosing(() => closing),
  };
  const client = postgres(url, options);
  // Fail fast with a clear message when the server is unreachable.
  await client`select 1`;
  const meter = onQuery && new QueryMeter(onQuery);
  const guarded = refusingWhenClosed(client, ["unsafe", "begin", "reserve", "notify", "listen"], () => closing, undefined, meter);
  let reserved = 0;
  const db = drizzle(guarded, { schema }) as unknown as Database;
  return {
    db,
    kind: "postgres",
    // A query outside a transaction holds a connection while it runs, a transaction or a reservation
    // for its whole length; what asks beyond the pool waits in postgres.js's queue.
    poolUse() {
      const wanted = (meter?.inFlight ?? 0) + reserved;
      return { size: poolSize, inUse: Math.min(poolSize, wanted), waiting: Math.max(0, wanted - poolSize) };
    },
    async close() {
      closing = true;
      // Queries already sent get up to 5 s to finish, then their connections are closed.
      await client.end({ timeout: 5 });
    },
    async notify(channel, payload) {
      await guarded.notify(channel, payload);
    },
    async listen(channel, onPayload) {
      const sub = await guarded.listen(channel, onPayload);
      return () => sub.unlisten();
    },
    async reserve() {
      const connection = await guarded.reserve();
      reserved++;
      let released = false;
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
        release() {
          if (!released) reserved--;
          released = true;
          connection.release();
        },
      };
    },
  };
}

/**
 * postgres.js's `socket` option: the connection to the server (TCP or a Unix socket, hosts taken in
 * turn when several are given), refused once the database is closing, so that no connection is ever
 * opened after shutdown begins. The driver's connect timeout, keep-alive and TLS apply as usual.
 */
function connectUnlessClosing(isClosing: () => boolean) {
  let next = 0;
  return (options: { path?: string; host: string[]; port: number[] }) => {
    if (isClosing()) throw new DatabaseClosedError();
    if (options.path) return net.connect(options.path);
    const i = next++ % options.host.length;
    return net.connect(options.port[i] ?? options.port[0] ?? 5432, options.host[i]);
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
export async function migrate(
  db: Database,
  folder = migrationsFolder,
  onApplied?: (name: string) => void,
): Promise<{ applied: number }> {
  const migrations = readMigrationFiles({ migrationsFolder: folder });
  const names = migrationNames(folder);
  const newest = Math.max(0, ...migrations.map((m) => m.folderMillis));
  try {
    const result = await db.transaction(async (tx) => {
      await tx.execute(sql`select pg_advisory_xact_lock(${MIGRATION_LOCK})`);
      await tx.execute(sql`create schema if not exists drizzle`);
      await tx.execute(sql`create table if not exists drizzle.__drizzle_migrations (
        id serial primary key, hash text not null, created_at bigint)`);
      const rows = await tx.execute(
        sql`select created_at from drizzle.__drizzle_migrations order by created_at desc limit 1`,
      );
      const last = Number(rowsOf<{ created_at: string | number | null }>(rows)[0]?.created_at ?? 0);
      // A downgrade: the tables are a newer Parley's, which this code would misread or damage.
      if (last > newest) {
        throw new SchemaNewerThanCodeError(
          `the database schema is newer than this version of Parley (its last migration dates from ${new Date(last).toISOString()}, ` +
            `this version knows migrations up to ${new Date(newest).toISOString()}): it was used by a newer Parley. ` +
            "Run that version (or newer) again; downgrading is not supported",
        );
      }
      let applied = 0;
      for (const migration of migrations) {
        if (migration.folderMillis <= last) continue;
        for (const statement of migration.sql) {
          if (statement.trim()) await tx.execute(sql.raw(statement));
        }
        await tx.execute(sql`insert into drizzle.__drizzle_migrations (hash, created_at)
          values (${migration.hash}, ${migration.folderMillis})`);
        applied++;
        names.pending.push(names.byMillis.get(migration.folderMillis) ?? String(migration.folderMillis));
      }
      return { applied };
    });
    // Told once committed: a migration rolled back was not applied.
    for (const name of names.pending) onApplied?.(name);
    return result;
  } catch (err) {
    if (err instanceof SchemaNewerThanCodeError) throw err;
    throw new MigrationError(
      `database migration failed, nothing was changed: ${(err as Error).message}`,
      { cause: err },
    );
  }
}

/** drizzle-kit's journal: each migration's name (its file name) by its timestamp. */
function migrationNames(folder: string): { byMillis: Map<number, string>; pending: string[] } {
  const byMillis = new Map<number, string>();
  try {
    const journal = JSON.parse(fs.readFileSync(path.join(folder, "meta", "_journal.json"), "utf8")) as { entries?: { when: number; tag: string }[] };
    for (const e of journal.entries ?? []) byMillis.set(e.when, e.tag);
  } catch {
    // readMigrationFiles has read the same journal already; names are only for the log.
  }
  return { byMillis, pending: [] };
}

/** postgres.js returns rows as an array; PGlite returns `{ rows }`. */
export function rowsOf<T>(result: unknown): T[] {
  if (Array.isArray(result)) return result as T[];
  return ((result as { rows?: T[] }).rows ?? []) as T[];
}
