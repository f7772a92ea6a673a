// `parley dev-network`: several homeservers on loopback in one process, federating with each other,
// for trying clients, bridges and the conformance suite against a real federation on one machine
// (issue 14). Each server has its own embedded database under one directory, its name
// (`localhost:<port>`) pinned to its port in every other server's `federation_hosts`, and one user
// with a password. Nothing here is reachable from other machines: every server binds 127.0.0.1.
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { cp, mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import pino, { type Logger } from "pino";
import { openDatabase } from "../schema/db.ts";
import { type Config, ConfigError, configKeys, resolveConfig } from "./config.ts";
import { type Homeserver, SHUTDOWN_BOUND_MS, startHomeserver } from "./homeserver.ts";
import { MatrixError } from "./http/errors.ts";

export const MAX_DEV_SERVERS = 10;

/** The user created on server i, in order. */
export const DEV_USERS = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy"] as const;

export interface DevNetworkOptions {
  /** How many servers, 1 to 10 (default 3). */
  servers?: number;
  /** Server i listens on basePort + i (default 8008). */
  basePort?: number;
  /** The ports, one per server, instead of `basePort` (tests pass free ports). */
  ports?: number[];
  /**
   * Where the servers keep their data, one subdirectory each. Given: kept after stop(), and a new
   * network on the same directory and ports reuses the databases and the passwords. Not given: a
   * fresh temporary directory, removed by stop().
   */
  dir?: string;
  /** Log level of the servers (default "warn"); logs go to standard error, as JSON lines. */
  logLevel?: Config["log_level"];
  /** A logger instead of the one on standard error (each server logs through a child of it). */
  logger?: Logger;
  /** Extra configuration for server i (e.g. `default_room_version`), over the dev network's. */
  config?: (i: number) => Record<string, unknown>;
}

export interface DevServer {
  serverName: string;
  /** The client (and federation) base URL, e.g. http://127.0.0.1:8008 */
  url: string;
  userId: string;
  password: string;
  homeserver: Homeserver;
}

export interface DevNetwork {
  servers: DevServer[];
  /** The registration token every server accepts, to register more users. */
  registrationToken: string;
  /** The directory holding the servers' data. */
  dir: string;
  /** Whether stop() removes `dir` (it was a temporary directory). */
  temporary: boolean;
  /** Stops every server gracefully (all at once), then removes a temporary directory. */
  stop(): Promise<void>;
}

/** A problem the operator can fix (a taken port, a bad option): shown as one line, exit code 1. */
export class DevNetworkError extends Error {
  override name = "DevNetworkError";
}

/** What a directory given with --dir remembers between runs, so the printed passwords stay the same. */
interface Remembered {
  registrationToken?: string;
  passwords?: Record<string, string>;
}

const STATE_FILE = "dev-network.json";
const newSecret = () => randomBytes(18).toString("base64url");

export async function startDevNetwork(options: DevNetworkOptions = {}): Promise<DevNetwork> {
  const count = options.servers ?? 3;
  if (!Number.isInteger(count) || count < 1 || count > MAX_DEV_SERVERS) {
    throw new DevNetworkError(`--servers must be a whole number from 1 to ${MAX_DEV_SERVERS} (got ${count})`);
  }
  const ports = options.ports ?? Array.from({ length: count }, (_, i) => (options.basePort ?? 8008) + i);
  if (ports.length !== count) throw new DevNetworkError(`${count} servers need ${count} ports, not ${ports.length}`);
  for (const port of ports) {
    if (!Number.isInteger(port) || port < 1 || port > 65535) {
      throw new DevNetworkError(`port ${port} is out of range: the ${count} servers need ports 1 to 65535`);
    }
  }
  // Checked before anything starts, so a taken port costs no half-started network; a port taken
  // between this check and the listen still fails the start below, with the same message.
  for (const [i, port] of ports.entries()) {
    if (!(await canListen(port))) throw portTaken(port, i, count);
  }

  const temporary = options.dir === undefined;
  const dir = temporary ? await mkdtemp(path.join(tmpdir(), "parley-dev-network-")) : path.resolve(options.dir!);
  try {
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const remembered = temporary ? {} : await readRemembered(dir);
    const registrationToken = remembered.registrationToken ?? newSecret();
    const passwords = { ...remembered.passwords };

    const names = ports.map((port) => `localhost:${port}`);
    const federationHosts = Object.fromEntries(names.map((name, i) => [name, `127.0.0.1:${ports[i]}`]));
    const baseLogger = options.logger ?? pino({ level: options.logLevel ?? "warn", base: { name: "parley" }, timestamp: pino.stdTimeFunctions.isoTime }, pino.destination(2));
    const configs = names.map((name, i) =>
      resolveConfig(
        {
          server_name: name,
          bind: "127.0.0.1",
          port: ports[i],
          public_baseurl: `http://127.0.0.1:${ports[i]}/`,
          // Each server under its own subdirectory: a database belongs to one server name for
          // ever, so the directory is named after it (a re-run on other ports gets new ones).
          data_dir: path.join(dir, name.replace(":", "-")),
          federation_hosts: federationHosts,
          // Plain HTTP for the network's own names only: anything else is still reached with
          // TLS and the address policy, as in production.
          federation_insecure: names,
          // Anyone on this machine could register on an open server; a token keeps the accounts
          // to whoever was shown it.
          registration: "token",
          registration_tokens: [registrationToken],
          // Clients, bots and test suites on a dev network log in and send in bursts.
          rate_limits: false,
          // A temporary network is deleted at exit anyway: durability against a power loss is
          // not worth a disk flush per commit there. A kept one (--dir) keeps the default.
          embedded_fsync: !temporary,
          log_level: options.logLevel ?? "warn",
          ...options.config?.(i),
        },
        // The process's PARLEY_* and DATABASE_URL variables are meant for `parley serve`: one
        // DATABASE_URL shared by all the servers would give them one database.
        {},
        dir,
      ),
    );

    await createDatabases(configs).catch((err: unknown) => {
      throw new DevNetworkError(`cannot create the embedded databases in ${dir}: ${(err as Error).message}`);
    });
    const started = await Promise.allSettled(
      configs.map((config) => startHomeserver(config, { logger: baseLogger.child({ server: config.server_name }) })),
    );
    const homeservers = started.flatMap((r) => (r.status === "fulfilled" ? [r.value] : []));
    const failed = started.findIndex((r) => r.status === "rejected");
    if (failed >= 0) {
      await Promise.allSettled(homeservers.map((h) => h.close()));
      const err = (started[failed] as PromiseRejectedResult).reason as NodeJS.ErrnoException;
      if (err.code === "EADDRINUSE") throw portTaken(ports[failed]!, failed, count);
      throw new DevNetworkError(`${names[failed]} cannot start: ${err.message}`);
    }

    const servers: DevServer[] = [];
    try {
      for (const [i, homeserver] of homeservers.entries()) {
        const localpart = DEV_USERS[i]!;
        const serverName = names[i]!;
        const password = (passwords[serverName] ??= newSecret());
        const userId = await ensureUser(homeserver, localpart, password);
        servers.push({ serverName, url: homeserver.url, userId, password, homeserver });
      }
      if (!temporary) await writeRemembered(dir, { registrationToken, passwords });
    } catch (err) {
      await Promise.allSettled(homeservers.map((h) => h.close()));
      throw err;
    }

    let stopping: Promise<void> | undefined;
    const stop = () =>
      (stopping ??= (async () => {
        const results = await Promise.allSettled(homeservers.map((h) => h.close()));
        if (temporary) await rm(dir, { recursive: true, force: true });
        const failure = results.find((r) => r.status === "rejected");
        if (failure) throw (failure as PromiseRejectedResult).reason;
      })());
    return { servers, registrationToken, dir, temporary, stop };
  } catch (err) {
    if (temporary) await rm(dir, { recursive: true, force: true });
    throw err;
  }
}

/**
 * Creates the embedded databases the network lacks: one is created (initdb and the migrations) and
 * the others are copies of it. Creating a cluster is by far the slowest part of a start (measured
 * on a 2-core machine at load average 14-17: 48-63 s, against 2 s to copy its 41 MB and 3 s to
 * open the copy), and a cleanly closed cluster's files are a consistent cold copy. The copy binds no server name:
 * each server binds its own at its first start.
 */
async function createDatabases(configs: Config[]): Promise<void> {
  const missing = configs.filter((c) => !c.database_url && !existsSync(path.join(c.data_dir, "db", "PG_VERSION")));
  const [first, ...others] = missing;
  if (!first) return;
  const database = await openDatabase({ dataDir: first.data_dir, embeddedFsync: first.embedded_fsync });
  await database.close();
  for (const config of others) {
    await mkdir(config.data_dir, { recursive: true, mode: 0o700 });
    // Modes are copied with the files; opening the copy makes its whole tree private again.
    await cp(path.join(first.data_dir, "db"), path.join(config.data_dir, "db"), { recursive: true, errorOnExist: true, force: false });
  }
}

/**
 * Creates the user, or on a re-run of a kept directory sets the remembered password again (no
 * device is logged out), so the password printed is always one that logs in.
 */
async function ensureUser(homeserver: Homeserver, localpart: string, password: string): Promise<string> {
  const { accounts } = homeserver.services;
  try {
    return await accounts.createUser({ localpart, password, displayName: localpart[0]!.toUpperCase() + localpart.slice(1) }, "cli");
  } catch (err) {
    if (!(err instanceof MatrixError) || err.errcode !== "M_USER_IN_USE") throw err;
    const userId = `@${localpart}:${homeserver.services.config.server_name}`;
    await accounts.setPassword(userId, password, { logoutDevices: false }, "cli");
    return userId;
  }
}

function portTaken(port: number, i: number, count: number): DevNetworkError {
  return new DevNetworkError(
    `port ${port} (server ${i + 1} of ${count}) is already in use on 127.0.0.1; ` +
      "stop what uses it or choose other ports with --base-port",
  );
}

function canListen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once("error", () => resolve(false));
    server.listen({ port, host: "127.0.0.1", exclusive: true }, () => server.close(() => resolve(true)));
  });
}

async function readRemembered(dir: string): Promise<Remembered> {
  let text: string;
  try {
    text = await readFile(path.join(dir, STATE_FILE), "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return {};
    throw err;
  }
  try {
    const parsed = JSON.parse(text) as Remembered;
    return {
      registrationToken: typeof parsed.registrationToken === "string" ? parsed.registrationToken : undefined,
      passwords: typeof parsed.passwords === "object" && parsed.passwords ? parsed.passwords : {},
    };
  } catch {
    throw new ConfigError(`${path.join(dir, STATE_FILE)} is not valid JSON; remove it to get new passwords`);
  }
}

async function writeRemembered(dir: string, state: Remembered): Promise<void> {
  // The passwords in clear: mode 0600, in a directory that is 0700 like every data directory.
  await writeFile(path.join(dir, STATE_FILE), JSON.stringify(state, null, 2) + "\n", { mode: 0o600 });
}

/** The table `parley dev-network` prints: one server a line, columns separated by spaces. */
export function formatDevNetwork(network: DevNetwork): string {
  const header = ["SERVER NAME", "CLIENT URL", "USER ID", "PASSWORD"];
  const rows = network.servers.map((s) => [s.serverName, s.url, s.userId, s.password]);
  const widths = header.map((h, c) => Math.max(h.length, ...rows.map((r) => r[c]!.length)));
  const line = (cells: string[]) => cells.map((cell, c) => cell.padEnd(widths[c]!)).join("  ").trimEnd();
  return [
    line(header),
    ...rows.map(line),
    "",
    `Registration token (every server): ${network.registrationToken}`,
    `Data: ${network.dir}${network.temporary ? " (removed on exit)" : " (kept)"}`,
    "Ctrl-C stops all servers.",
    "",
  ].join("\n");
}

/** `parley dev-network [--servers N] [--base-port P] [--dir D] [--log-level L]`: runs until SIGINT or SIGTERM. */
export async function devNetworkMain(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      servers: { type: "string", short: "n", default: "3" },
      "base-port": { type: "string", short: "p", default: "8008" },
      dir: { type: "string", short: "d" },
      "log-level": { type: "string", default: "warn" },
    },
  });
  const number = (name: string, text: string) => {
    if (!/^\d+$/.test(text)) throw new ConfigError(`--${name} must be a number (got "${text}")`);
    return Number(text);
  };
  const logLevel = configKeys.log_level.schema.safeParse(values["log-level"]);
  if (!logLevel.success) throw new ConfigError(`--log-level must be one of ${configKeys.log_level.schema.options.join(", ")}`);
  const servers = number("servers", values.servers);
  // A usage error (exit code 2), as the other options' are; startDevNetwork checks it again for callers.
  if (servers < 1 || servers > MAX_DEV_SERVERS) throw new ConfigError(`--servers must be a whole number from 1 to ${MAX_DEV_SERVERS} (got ${servers})`);
  // Signals are taken from the start: a start creating databases takes a while, and Ctrl-C in the
  // middle must not leave a temporary directory (or a half-written database) behind. The network
  // is then stopped as soon as it is up.
  let signalled!: () => void;
  const signal = new Promise<void>((resolve) => (signalled = resolve));
  const onSignal = () => {
    // A second signal takes Node's default action: a stuck start or shutdown can always be killed.
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
    // Requests cut short by the shutdown may leave rejections nobody waits for: they must not
    // crash the process before the databases are closed.
    process.on("unhandledRejection", () => {});
    signalled();
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  process.stdout.write(`starting ${servers} homeserver${servers > 1 ? "s" : ""} (creating a database takes a while the first time)…\n`);
  let network: DevNetwork;
  try {
    network = await startDevNetwork({
      servers,
      basePort: number("base-port", values["base-port"]),
      dir: values.dir,
      logLevel: logLevel.data,
    });
  } catch (err) {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
    if (err instanceof DevNetworkError) {
      process.stderr.write(`parley dev-network: ${err.message}\n`);
      return 1;
    }
    throw err;
  }
  process.stdout.write(formatDevNetwork(network));
  await signal;
  const config = network.servers[0]!.homeserver.services.config;
  setTimeout(() => {
    process.stderr.write("parley dev-network: shutdown not finished in time; exiting\n");
    process.exit(1);
  }, config.shutdown_grace_ms + SHUTDOWN_BOUND_MS + 2_000).unref();
  process.stdout.write("stopping…\n");
  const code = await network.stop().then(
    () => 0,
    (err: unknown) => {
      process.stderr.write(`parley dev-network: error during shutdown: ${(err as Error).message}\n`);
      return 1;
    },
  );
  // As `parley serve`: whatever still holds the event loop must not keep a stopped network alive.
  setTimeout(() => process.exit(code), 1_000).unref();
  return code;
}
