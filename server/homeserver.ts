// One homeserver process: open the database (and migrate it), load the signing key, build the
// services, listen, and shut down gracefully.
import type { AddressInfo } from "node:net";
import { createServer, type Server } from "node:http";
import { getRequestListener } from "@hono/node-server";
import { eq } from "drizzle-orm";
import pino, { type Logger } from "pino";
import { type OpenedDatabase, openDatabase, schema } from "../schema/db.ts";
import { type Config, redactedConfig } from "./config.ts";
import { createApp } from "./http/app.ts";
import { answerClientErrors, answerRequestError } from "./http/client-errors.ts";
import { routes } from "./api/routes.ts";
import type { AnyRoute } from "./http/route.ts";
import { type Services, createAccountServices } from "./services.ts";
import { createRoomServices } from "./rooms/room-services.ts";
import type { PersistFaults } from "./rooms/persister.ts";
import { createSyncServices, startSyncServices, stopSyncServices } from "./sync/sync-services.ts";
import { loadOrCreateSigningKey } from "./signing-key.ts";

export interface Homeserver {
  services: Services;
  /** The base URL the server listens on, e.g. http://127.0.0.1:8008 */
  url: string;
  port: number;
  /** Stops accepting, lets in-flight requests finish (within the grace period), closes the database. */
  close(): Promise<void>;
}

export interface StartOptions {
  logger?: Logger;
  /** Embedded database in memory instead of on disk (tests). */
  embedded?: "disk" | "memory";
  now?: () => number;
  /** Extra routes (tests use them to observe request handling). */
  extraRoutes?: AnyRoute[];
  /** Tests only: faults injected into the persist path (see PersistFaults). */
  persisterFaults?: PersistFaults;
}

export function createLogger(config: Pick<Config, "log_level">): Logger {
  return pino({
    level: config.log_level,
    base: { name: "parley" },
    timestamp: pino.stdTimeFunctions.isoTime,
    redact: { paths: ["*.password", "*.access_token", "*.refresh_token", "*.authorization"], censor: "<redacted>" },
  });
}

export async function startHomeserver(config: Config, options: StartOptions = {}): Promise<Homeserver> {
  const logger = options.logger ?? createLogger(config);
  const database = await openDatabase({
    databaseUrl: config.database_url,
    dataDir: config.data_dir,
    embedded: options.embedded,
    poolSize: config.database_pool_size,
    embeddedFsync: config.embedded_fsync,
  });
  let services: Services;
  let server: Server;
  try {
    await bindServerName(database, config.server_name, options.now?.() ?? Date.now());
    const signingKey = await loadOrCreateSigningKey(config.data_dir, (keyId) =>
      logger.info({ keyId }, "created a new signing key"),
    );
    const now = options.now ?? Date.now;
    const accountServices = createAccountServices(database, config, logger, now);
    await accountServices.sessions.start();
    const roomServices = createRoomServices({
      database,
      serverName: config.server_name,
      signingKey,
      now,
      logger,
      accounts: accountServices.accounts,
      userData: accountServices.userData,
      persisterFaults: options.persisterFaults,
    });
    const syncServices = createSyncServices({
      database,
      serverName: config.server_name,
      logger,
      now,
      userData: accountServices.userData,
      e2ee: accountServices.e2ee,
      rooms: roomServices,
    });
    await startSyncServices(syncServices);
    services = {
      config,
      database,
      db: database.db,
      logger,
      signingKey,
      now,
      ...accountServices,
      ...roomServices,
      ...syncServices,
      auth: accountServices.sessions,
    };
    const app = createApp(services, [...routes, ...(options.extraRoutes ?? [])]);
    server = await listen(app.fetch, config, logger);
  } catch (err) {
    await database.close().catch(() => {});
    throw err;
  }
  const port = (server.address() as AddressInfo).port;
  const host = config.bind.includes(":") ? `[${config.bind}]` : config.bind;
  const url = `http://${host === "0.0.0.0" || host === "[::]" ? "127.0.0.1" : host}:${port}`;
  logger.info({ config: redactedConfig(config), url, database: database.kind }, "parley is listening");

  let closing: Promise<void> | undefined;
  const close = () =>
    (closing ??= (async () => {
      logger.info("shutting down");
      // Long-polls waiting in /sync answer at once, so the server can close without waiting for them.
      await stopSyncServices(services);
      await closeServer(server, config.shutdown_grace_ms);
      await services.sessions.stop();
      await database.close();
      logger.info("shut down");
    })());
  return { services, url, port, close };
}

function listen(
  fetch: (req: Request, env: unknown) => Response | Promise<Response>,
  config: Pick<Config, "bind" | "port" | "request_timeout_ms">,
  logger: Logger,
) {
  const requestTimeout = config.request_timeout_ms;
  return new Promise<Server>((resolve, reject) => {
    const server = createServer(
      {
        // Time to receive a request (headers and body), not to answer it: a /sync long-poll is
        // received whole at once and then may wait as long as it likes. The headers come first and
        // are small, so they get less (a client trickling header bytes holds a connection for free).
        requestTimeout,
        headersTimeout: Math.min(requestTimeout, 20_000),
        // How often Node looks for requests past those limits (its default, 30 s, would let a
        // timeout run up to 30 s late).
        connectionsCheckingInterval: Math.min(5_000, Math.max(250, Math.floor(requestTimeout / 4))),
      },
      getRequestListener(fetch, { hostname: config.bind, errorHandler: answerRequestError }),
    );
    server.on("clientError", answerClientErrors(logger));
    server.once("listening", () => resolve(server));
    server.once("error", reject);
    server.listen(config.port, config.bind);
  });
}

/**
 * Stops accepting connections, closes idle keep-alive connections as they become idle, and after
 * the grace period closes whatever is left. Requests accepted before that finish normally.
 */
function closeServer(server: Server, graceMs: number): Promise<void> {
  return new Promise((resolve) => {
    const idle = setInterval(() => server.closeIdleConnections(), 50);
    const force = setTimeout(() => server.closeAllConnections(), graceMs);
    server.close(() => {
      clearInterval(idle);
      clearTimeout(force);
      resolve();
    });
    server.closeIdleConnections();
  });
}

/**
 * A database belongs to one server name for ever: user IDs, room IDs and signed events carry it.
 * Starting with a different name would corrupt the data, so refuse.
 */
export async function bindServerName(database: OpenedDatabase, serverName: string, now: number) {
  const { db } = database;
  const t = schema.serverSettings;
  await db.insert(t).values({ key: "server_name", value: serverName, updatedTs: now }).onConflictDoNothing();
  const [row] = await db.select().from(t).where(eq(t.key, "server_name"));
  if (row && row.value !== serverName) {
    throw new Error(
      `this database belongs to server name "${row.value}", but the configuration says "${serverName}"; ` +
        "the server name cannot change once the database exists",
    );
  }
}
