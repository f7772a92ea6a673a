// One homeserver process: open the database (and migrate it), load the signing key, build the
// services, listen, and shut down gracefully.
import { readFile } from "node:fs/promises";
import type { AddressInfo } from "node:net";
import { createServer, type Server } from "node:http";
import { type Server as TlsServer, createServer as createTlsServer } from "node:https";
import { createSecureContext } from "node:tls";
import { getRequestListener } from "@hono/node-server";
import { eq } from "drizzle-orm";
import type { Logger } from "pino";
import { type OpenedDatabase, openDatabase, schema } from "../schema/db.ts";
import { type Config, ConfigError, isLoopbackHost, redactedConfig } from "./config.ts";
import { createParleyLogger } from "./logging.ts";
import { SERVER_VERSION } from "./version.ts";
import { createApp } from "./http/app.ts";
import { InFlightRequests } from "./http/in-flight.ts";
import { answerClientErrors, answerRequestError } from "./http/client-errors.ts";
import { routes } from "./api/routes.ts";
import type { AnyRoute } from "./http/route.ts";
import { type Services, createAccountServices } from "./services.ts";
import { createRoomServices } from "./rooms/room-services.ts";
import type { PersistFaults } from "./rooms/persister.ts";
import { createSyncServices, startSyncServices, stopSyncServices } from "./sync/sync-services.ts";
import { loadOrCreateSigningKey } from "./signing-key.ts";
import { ensureAppServiceBots } from "./appservices/auth.ts";
import { AppServiceQueries } from "./appservices/queries.ts";
import { ThirdPartyLookups } from "./appservices/thirdparty.ts";
import { type Federation, createFederation } from "../federation/transport/federation.ts";
import { wireE2eeFederation } from "../federation/transport/e2ee.ts";
import { SyncReads } from "./rooms/sync-reads.ts";
import { connectRoomEdus } from "../federation/transport/room-edus.ts";
import { connectRoomFederation } from "../federation/transport/room-federation.ts";
import { UserDirectory } from "./userdirectory/user-directory.ts";
import { RemoteHierarchies } from "../federation/transport/remote-hierarchy.ts";
import { AppServiceDelivery } from "./appservices/delivery.ts";
import { connectAppServiceEphemeral, connectAppServiceToDevice } from "./appservices/ephemeral.ts";
import { ThirdPartyInvites } from "./rooms/third-party-invites.ts";
import { ThreepidBindings } from "./accounts/threepid-bindings.ts";
import { IdentityServerClient } from "../federation/transport/identity-servers.ts";
import { connectThirdPartyInvites } from "../federation/transport/third-party-invites.ts";
import { remoteMediaFetcher } from "../federation/transport/remote-media.ts";
import { MediaRepository } from "./media/media.ts";
import { FileMediaStore } from "./media/store.ts";
import { UrlPreviewer } from "./media/url-preview.ts";
import path from "node:path";
import { isAllowedFederationAddress } from "../federation/transport/address-policy.ts";
import { PushGatewayClient } from "./push/gateway-client.ts";
import { PushSender } from "./push/push-sender.ts";
import { NotificationsList } from "./push/notifications.ts";
import { Metrics, UNMATCHED_ROUTE } from "./metrics/metrics.ts";
import { listenForMetrics } from "./metrics/listener.ts";

export interface Homeserver {
  services: Services;
  /** The base URL the server listens on, e.g. http://127.0.0.1:8008 */
  url: string;
  port: number;
  /** The TLS port (`tls_port`), when Parley also listens with TLS itself. */
  tlsPort?: number;
  /** https://… on `tlsPort`, when set. */
  tlsUrl?: string;
  /** http://…/metrics on `metrics_port`, when metrics are on. */
  metricsUrl?: string;
  /** Stops accepting, lets in-flight requests finish (within the grace period), closes the database. */
  close(): Promise<void>;
}

export interface StartOptions {
  logger?: Logger;
  /** Embedded database in memory instead of on disk (tests). */
  embedded?: "disk" | "memory";
  /** Tests only: an in-memory embedded database starts from this snapshot (see OpenDatabaseOptions). */
  embeddedSnapshot?: Blob;
  now?: () => number;
  /** Extra routes (tests use them to observe request handling). */
  extraRoutes?: AnyRoute[];
  /** Tests only: faults injected into the persist path (see PersistFaults). */
  persisterFaults?: PersistFaults;
  /** Tests only: how long a checked access token is trusted without a database lookup (default 2 s). */
  tokenCacheMs?: number;
}

export function createLogger(config: Pick<Config, "log_level">): Logger {
  return createParleyLogger(config.log_level);
}

/**
 * Open registration lets anyone who reaches the port create an account in one request: on loopback
 * that is the developer alone, anywhere else it is the whole network. As Synapse
 * (`enable_registration_without_verification`) and continuwuity do, starting so needs the operator
 * to say it in as many words.
 */
export function checkRegistrationExposure(config: Pick<Config, "registration" | "bind" | "allow_public_open_registration">): void {
  if (config.registration !== "open" || config.allow_public_open_registration || isLoopbackHost(config.bind)) return;
  throw new ConfigError(
    `registration is open and the server listens on ${config.bind}, not only on loopback: anyone who reaches it could create accounts. ` +
      "Use registration: token (with registration_tokens) or closed (create accounts with `parley admin create-user`), " +
      "or set allow_public_open_registration: true (PARLEY_ALLOW_PUBLIC_OPEN_REGISTRATION=true) if that is really what you want",
  );
}

export async function startHomeserver(config: Config, options: StartOptions = {}): Promise<Homeserver> {
  const logger = options.logger ?? createLogger(config);
  checkRegistrationExposure(config);
  // Read before anything is opened, so a wrong path fails the start at once with a clear message.
  const tls = await readTlsFiles(config);
  const metrics = config.metrics_port === undefined ? undefined : new Metrics(config.server_name);
  const database = await openDatabase({
    databaseUrl: config.database_url,
    dataDir: config.data_dir,
    embedded: options.embedded,
    embeddedSnapshot: options.embeddedSnapshot,
    poolSize: config.database_pool_size,
    embeddedFsync: config.embedded_fsync,
    onQuery: metrics?.queryAnswered,
    onMigrationApplied: (migration) => logger.info({ migration }, "database migration applied"),
  });
  let services: Services;
  const servers: Listener[] = [];
  const requests = new InFlightRequests();
  let federation: Federation | undefined;
  let identityServers: IdentityServerClient | undefined;
  let pushGateways: PushGatewayClient | undefined;
  let urlPreviews: UrlPreviewer | undefined;
  let metricsServer: Server | undefined;
  try {
    await bindServerName(database, config.server_name, options.now?.() ?? Date.now());
    const signingKey = await loadOrCreateSigningKey(config.data_dir, (keyId) =>
      logger.info({ keyId }, "created a new signing key"),
    );
    const now = options.now ?? Date.now;
    const accountServices = createAccountServices(database, config, logger, now, options.tokenCacheMs);
    await accountServices.sessions.start();
    await ensureAppServiceBots(accountServices.appServices, accountServices.accounts, logger);
    const appServiceQueries = new AppServiceQueries({ registry: accountServices.appServices, logger, insecure: config.federation_insecure });
    const roomServices = createRoomServices({
      database,
      serverName: config.server_name,
      signingKey,
      now,
      logger,
      accounts: accountServices.accounts,
      userData: accountServices.userData,
      persisterFaults: options.persisterFaults,
      defaultRoomVersion: config.default_room_version,
    });
    const syncServices = createSyncServices({
      database,
      serverName: config.server_name,
      logger,
      now,
      userData: accountServices.userData,
      e2ee: accountServices.e2ee,
      rooms: roomServices,
      accounts: accountServices.accounts,
    });
    await startSyncServices(syncServices);
    if (metrics) {
      // Before anything can persist (federation, application services): every event is counted.
      roomServices.persister.onBatchPersisted(metrics.eventsPersisted);
      metrics.collectSyncWaiters(() => syncServices.notifier.waiting);
      metrics.collectPoolUse(() => database.poolUse());
    }
    federation = createFederation({
      config,
      database,
      signingKey,
      logger,
      now,
      roomVersion: (roomId) => roomServices.rooms.roomVersion(roomId),
      roomState: roomServices.rooms,
    });
    const sharing = new SyncReads(database.db, roomServices.eventStore);
    const rooms = roomServices.rooms;
    connectRoomEdus({
      serverName: config.server_name,
      federation,
      rooms: {
        currentMembership: (roomId, userId) => rooms.currentMembership(roomId, userId),
        joinedServers: (roomId) => rooms.joinedServers(roomId),
        joinedRooms: (userId) => rooms.joinedRooms(userId),
        roomsWithJoinedMember: (userId) => rooms.roomsWithJoinedMember(userId),
        joinedMembers: (roomId) => sharing.joinedMembers(roomId),
      },
      ...syncServices,
      onEventsPersisted: (listener) => roomServices.persister.onEventsPersisted(listener),
      logger,
    });
    const roomFederation = connectRoomFederation(federation, {
      serverName: config.server_name,
      signingKey,
      persister: roomServices.persister,
      rooms: roomServices.rooms,
      eventStore: roomServices.eventStore,
      serverReads: roomServices.serverReads,
      timeline: roomServices.timeline,
      accounts: accountServices.accounts,
      logger,
      now,
    });
    wireE2eeFederation({
      db: database.db,
      serverName: config.server_name,
      http: federation.http,
      sender: federation.sender,
      edus: federation.edus,
      e2ee: accountServices.e2ee,
      usersSharingRoomsWith: (userId) => sharing.usersSharingRoomsWith(userId),
      sharingRoomsWithLocalUsers: (userIds) => sharing.sharingRoomsWithLocalUsers(userIds),
      joinedMembers: (roomId) => sharing.joinedMembers(roomId),
      onEventsPersisted: (listener) => roomServices.persister.onEventsPersisted(listener),
      logger,
      now,
    });
    const thirdPartyInvites = new ThirdPartyInvites({
      rooms: roomServices.rooms,
      persister: roomServices.persister,
      accounts: accountServices.accounts,
      serverName: config.server_name,
      logger,
    });
    identityServers = new IdentityServerClient({ insecure: config.identity_servers_insecure, signer: { serverName: config.server_name, signingKey } });
    const threepidBindings = new ThreepidBindings(database.db, now, logger);
    threepidBindings.useIdentityServers(identityServers);
    connectThirdPartyInvites({ thirdPartyInvites, http: federation.http, rooms: roomFederation, identityServers, logger });
    await federation.start();
    const userDirectory = new UserDirectory({
      db: database.db,
      serverName: config.server_name,
      accounts: accountServices.accounts,
      logger,
      searchAllUsers: config.user_directory_search_all_users,
    });
    accountServices.accounts.onAccountCreated((userId) => userDirectory.localUserChanged(userId));
    accountServices.accounts.onProfileChanged((userId) => userDirectory.localUserChanged(userId));
    roomServices.persister.onBatchPersisted((events) => userDirectory.eventsPersisted(events));
    userDirectory.start();
    const queries = federation.queries;
    roomServices.directory.resolveRemoteAliasesWith((alias) => queries.roomAlias(alias));
    roomServices.directory.readRemoteDirectoriesWith((server, query) => queries.publicRooms(server, query));
    roomServices.directory.askAppServicesAboutAliasesWith((alias) => appServiceQueries.queryAlias(alias));
    roomServices.rooms.askAppServicesWith({ userExists: (u) => appServiceQueries.queryUser(u), aliasExists: (a) => appServiceQueries.queryAlias(a) });
    const hierarchies = new RemoteHierarchies(federation.http, now, logger);
    roomServices.spaceHierarchy.readRemoteHierarchiesWith((servers, roomId, suggestedOnly) => hierarchies.hierarchy(servers, roomId, suggestedOnly));
    const appServiceDelivery = new AppServiceDelivery({
      database,
      registry: accountServices.appServices,
      serverName: config.server_name,
      eventStore: roomServices.eventStore,
      currentStreamPosition: () => roomServices.persister.currentStreamPosition(),
      now,
      logger,
      insecure: config.federation_insecure,
    });
    // The persist path only wakes the queues (events committed here or, through NOTIFY, elsewhere).
    syncServices.notifier.onChange("events", (change) => appServiceDelivery.wakeAll(change.position));
    connectAppServiceEphemeral({ delivery: appServiceDelivery, registry: accountServices.appServices, sources: syncServices, db: database.db, serverName: config.server_name, logger });
    connectAppServiceToDevice({ delivery: appServiceDelivery, registry: accountServices.appServices, toDevice: accountServices.e2ee.toDevice, serverName: config.server_name, logger });
    await appServiceDelivery.start();
    // Push: notifications are copied and pushed after commit, never on the send path (server/push/).
    const pushSender = new PushSender({
      db: database.db,
      pushers: accountServices.pushers,
      gateway: (pushGateways = new PushGatewayClient({ insecure: config.push_gateways_insecure, allowAddress: isAllowedFederationAddress })),
      events: { getEvent: (id) => roomServices.eventStore.getEvent(id), currentStateContent: (r, t, k) => roomServices.rooms.currentStateContent(r, t, k) },
      now,
      logger,
    });
    syncServices.notifier.onChange("events", () => pushSender.eventsCommitted());
    syncServices.receipts.onReceipt((r) => {
      if (r.userId.endsWith(`:${config.server_name}`)) void pushSender.countsChanged(r.userId).catch((err: unknown) => logger.warn({ err }, "push: queueing a count update failed"));
    });
    await pushSender.start();
    const media = new MediaRepository({
      db: database.db,
      store: new FileMediaStore(path.join(config.data_dir, "media")),
      serverName: config.server_name,
      now,
      logger,
      maxUploadBytes: config.max_upload_size,
      quotaBytes: config.media_quota_bytes,
      maxImagePixels: config.max_image_pixels,
      authenticatedMedia: config.enable_authenticated_media,
      remoteCacheMaxAgeMs: config.remote_media_cache_max_age_ms,
    });
    media.fetchRemoteWith(remoteMediaFetcher(federation.http, logger));
    if (config.url_preview_enabled) {
      urlPreviews = new UrlPreviewer({ media, allowAddress: isAllowedFederationAddress, insecure: config.url_preview_insecure, logger, now });
    }
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
      appServiceQueries,
      thirdParty: new ThirdPartyLookups(accountServices.appServices, appServiceQueries, logger, now),
      auth: accountServices.sessions,
      federation,
      serverAuth: federation.serverAuth,
      userDirectory,
      appServiceDelivery,
      thirdPartyInvites,
      threepidBindings,
      media,
      urlPreviews,
      pushSender,
      pushNotifications: new NotificationsList(database.db, roomServices.eventStore),
    };
    if (metrics) {
      const sender = federation.sender;
      metrics.collectFederationQueues((limit) => sender.queueDepths(limit));
    }
    const observe = metrics && ((method: string, route: string | undefined, status: number, seconds: number) =>
      metrics.requestAnswered(method, route ?? UNMATCHED_ROUTE, status, seconds));
    const app = createApp(services, [...routes, ...(options.extraRoutes ?? [])], observe);
    const handle = requests.wrap(app.fetch);
    // The same app on both: federation and the client APIs alike, with or without TLS.
    servers.push(await listen(handle, config, config.port, logger));
    if (tls) servers.push(await listen(handle, config, tls.port, logger, tls));
    if (metrics && config.metrics_port !== undefined) metricsServer = await listenForMetrics(metrics, config.metrics_bind, config.metrics_port, logger);
    services.media.startSweeping();
  } catch (err) {
    await Promise.all(servers.map((s) => new Promise((resolve) => s.close(resolve))));
    await closeMetricsServer(metricsServer);
    await federation?.stop().catch(() => {});
    await identityServers?.close();
    await pushGateways?.close();
    await urlPreviews?.close();
    await database.close().catch(() => {});
    throw err;
  }
  const [server, tlsServer] = servers as [Listener, Listener?];
  const port = (server.address() as AddressInfo).port;
  const tlsPort = tlsServer ? (tlsServer.address() as AddressInfo).port : undefined;
  const bound = config.bind.includes(":") ? `[${config.bind}]` : config.bind;
  const host = bound === "0.0.0.0" || bound === "[::]" ? "127.0.0.1" : bound;
  const url = `http://${host}:${port}`;
  const tlsUrl = tlsPort === undefined ? undefined : `https://${host}:${tlsPort}`;
  const listening = [`http://${bound}:${port}`, ...(tlsPort === undefined ? [] : [`https://${bound}:${tlsPort}`])];
  logger.debug({ config: redactedConfig(config) }, "configuration");
  const baseurlWarning = publicBaseurlWarning(config);
  if (baseurlWarning) logger.warn({ public_baseurl: config.public_baseurl, server_name: config.server_name }, baseurlWarning);
  // The embedded database admits one process at a time, so there the CLI runs while the server is stopped.
  const firstAdmin = (await hasAdmin(database))
    ? undefined
    : database.kind === "postgres"
      ? "no admin yet: create one with `parley admin create-user NAME --admin` (in Docker: `docker exec -it <container> node dist/parley.js admin create-user NAME --admin`)"
      : "no admin yet: stop the server and run `parley admin create-user NAME --admin` (in Docker: `docker run --rm -v <data volume>:/data <image> admin create-user NAME --admin`), then start it again";
  logger.info(
    {
      version: SERVER_VERSION,
      listening,
      url,
      ...(tlsUrl ? { tlsUrl } : {}),
      server_name: config.server_name,
      public_baseurl: config.public_baseurl,
      database: describeDatabase(config),
      registration: config.registration,
      ...(firstAdmin ? { firstAdmin } : {}),
    },
    // Tests and scripts wait for this exact message.
    "parley is listening",
  );

  const metricsUrl = metricsServer && `http://${listenerHost(config.metrics_bind)}:${(metricsServer.address() as AddressInfo).port}/metrics`;
  if (metricsUrl) logger.info({ metricsUrl }, "metrics are served");

  let closing: Promise<void> | undefined;
  const close = () =>
    (closing ??= shutDown({ servers, requests, services, database, logger, graceMs: config.shutdown_grace_ms }).finally(() => Promise.all([identityServers?.close(), pushGateways?.close(), urlPreviews?.close(), closeMetricsServer(metricsServer)])));
  return { services, url, port, ...(tlsPort === undefined ? {} : { tlsPort, tlsUrl }), ...(metricsUrl ? { metricsUrl } : {}), close };
}

/** The metrics listener stops with the rest; a scraper's idle keep-alive connection does not hold it. */
function closeMetricsServer(server: Server | undefined): Promise<void> {
  if (!server) return Promise.resolve();
  return new Promise((resolve) => {
    server.close(() => resolve());
    server.closeAllConnections();
  });
}

/** A bind address as a URL host: the wildcard addresses reached through loopback. */
function listenerHost(bind: string): string {
  const bound = bind.includes(":") ? `[${bind}]` : bind;
  return bound === "0.0.0.0" || bound === "[::]" ? "127.0.0.1" : bound;
}

/** What shutdown may take beyond `shutdown_grace_ms`: closing connections and the database. */
export const SHUTDOWN_BOUND_MS = 5_000;

/**
 * Shuts down in this order, and finishes within the grace period plus SHUTDOWN_BOUND_MS whatever
 * clients and handlers do:
 * 1. stop accepting connections; a request arriving on a connection already open gets 503;
 * 2. wake the long-polls (they answer at once) and stop background work;
 * 3. wait, up to the grace period, for the handlers still running, those of clients that went away
 *    included (they may be waiting on the database); connections close as they go idle;
 * 4. close the connections left;
 * 5. close the database: from then on a query is refused at once and no connection is opened;
 *    queries already sent get what is left of the bound.
 * A step still unfinished at the deadline is logged and left behind (the CLI exits anyway).
 */
async function shutDown(d: {
  /** The plain HTTP listener, and the TLS one when there is one. */
  servers: Listener[];
  requests: InFlightRequests;
  services: Services;
  database: OpenedDatabase;
  logger: Logger;
  graceMs: number;
}): Promise<void> {
  const { servers, requests, services, database, logger, graceMs } = d;
  const started = performance.now();
  const graceEnds = started + graceMs;
  const deadline = graceEnds + SHUTDOWN_BOUND_MS;
  logger.info({ inFlight: requests.size }, "shutting down");
  requests.refuseNew();
  const serverClosed = Promise.all(servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
  const closeIdle = () => servers.forEach((s) => s.closeIdleConnections());
  closeIdle();
  const idle = setInterval(closeIdle, 50);
  const pending: string[] = [];
  const step = async (name: string, work: Promise<unknown>, until: number) => {
    let timer: NodeJS.Timeout | undefined;
    const finished = await Promise.race([
      work.then(
        () => true,
        (err: unknown) => {
          logger.warn({ err }, `shutdown: ${name} failed`);
          return true;
        },
      ),
      new Promise<false>((resolve) => (timer = setTimeout(resolve, Math.max(0, until - performance.now()), false))),
    ]);
    clearTimeout(timer);
    if (!finished) pending.push(name);
  };
  try {
    await step("waking long-polls and stopping background work", stopSyncServices(services), graceEnds);
    if (!(await requests.drained(Math.max(0, graceEnds - performance.now())))) {
      logger.warn({ inFlight: requests.size, graceMs }, "requests still running after the grace period: closing their connections");
    }
    // The answers of handlers that just returned are still being written: their connections close
    // as they go idle, until the grace period ends.
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([serverClosed, new Promise((resolve) => (timer = setTimeout(resolve, Math.max(0, graceEnds - performance.now()))))]);
    clearTimeout(timer);
  } finally {
    clearInterval(idle);
  }
  for (const s of servers) s.closeAllConnections();
  await step("closing connections", serverClosed, deadline);
  await step("stopping federation", services.federation.stop(), deadline);
  await step("stopping application-service delivery", services.appServiceDelivery.stop(), deadline);
  await step("stopping push", services.pushSender.stop(), deadline);
  await step("stopping the media cache sweep", services.media.stop(), deadline);
  await step("closing connections to application services", services.appServiceQueries.close(), deadline);
  await step("stopping sessions", services.sessions.stop(), deadline);
  await step("closing the database", database.close(), deadline);
  if (pending.length) logger.warn({ pending, inFlight: requests.size }, "shutdown did not finish in time; exiting anyway");
  // Handlers still running here were cut off from the database: they end with DatabaseClosedError.
  logger.info({ ms: Math.round(performance.now() - started), inFlight: requests.size }, "shut down");
}

/** A listening socket: plain HTTP, or HTTPS with `tls_port`. */
type Listener = Server | TlsServer;

interface TlsFiles {
  port: number;
  cert: Buffer;
  key: Buffer;
}

/** `tls_port` with its certificate and key, read from their files; undefined when TLS is off. */
async function readTlsFiles(
  config: Pick<Config, "tls_port" | "tls_certificate" | "tls_private_key">,
): Promise<TlsFiles | undefined> {
  const { tls_port: port, tls_certificate: certFile, tls_private_key: keyFile } = config;
  if (port === undefined && certFile === undefined && keyFile === undefined) return undefined;
  const missing = [
    ...(port === undefined ? ["tls_port"] : []),
    ...(certFile === undefined ? ["tls_certificate"] : []),
    ...(keyFile === undefined ? ["tls_private_key"] : []),
  ];
  if (port === undefined || certFile === undefined || keyFile === undefined) {
    throw new ConfigError(
      `listening with TLS needs tls_port, tls_certificate and tls_private_key together; ${missing.join(" and ")} ${missing.length > 1 ? "are" : "is"} not set`,
    );
  }
  const read = async (key: string, file: string) => {
    try {
      return await readFile(file);
    } catch (err) {
      throw new ConfigError(`cannot read ${key} ${file}: ${(err as Error).message}`);
    }
  };
  const tls = { port, cert: await read("tls_certificate", certFile), key: await read("tls_private_key", keyFile) };
  try {
    createSecureContext({ cert: tls.cert, key: tls.key });
  } catch (err) {
    throw new ConfigError(`tls_certificate and tls_private_key are not a usable PEM certificate and key: ${(err as Error).message}`);
  }
  return tls;
}

function listen(
  fetch: (req: Request, env: unknown) => Response | Promise<Response>,
  config: Pick<Config, "bind" | "request_timeout_ms">,
  port: number,
  logger: Logger,
  tls?: TlsFiles,
) {
  const requestTimeout = config.request_timeout_ms;
  const options = {
    // Time to receive a request (headers and body), not to answer it: a /sync long-poll is
    // received whole at once and then may wait as long as it likes. The headers come first and
    // are small, so they get less (a client trickling header bytes holds a connection for free).
    requestTimeout,
    headersTimeout: Math.min(requestTimeout, 20_000),
    // How often Node looks for requests past those limits (its default, 30 s, would let a
    // timeout run up to 30 s late).
    connectionsCheckingInterval: Math.min(5_000, Math.max(250, Math.floor(requestTimeout / 4))),
  };
  const listener = getRequestListener(fetch, { hostname: config.bind, errorHandler: answerRequestError });
  let server: Listener;
  if (tls) {
    // node:https's server is node:http's behind a TLS handshake: the same options, events
    // (clientError) and connection tracking (closeIdleConnections) apply, so shutdown treats
    // both alike.
    server = createTlsServer({ ...options, cert: tls.cert, key: tls.key }, listener);
    server.on("tlsClientError", (err: NodeJS.ErrnoException) =>
      logger.debug({ code: err.code, reason: err.message }, "a TLS handshake failed"),
    );
  } else {
    server = createServer(options, listener);
  }
  server.on("clientError", answerClientErrors(logger));
  return new Promise<Listener>((resolve, reject) => {
    server.once("listening", () => resolve(server));
    server.once("error", reject);
    server.listen(port, config.bind);
  });
}

/** A warning for the start, when clients would be sent to localhost while the server is not local. */
export function publicBaseurlWarning(config: Pick<Config, "public_baseurl" | "server_name">): string | undefined {
  if (!isLoopbackHost(new URL(config.public_baseurl).hostname) || isLoopbackHost(config.server_name)) return undefined;
  return "public_baseurl points at localhost but the server name does not: clients told to use it (/.well-known/matrix/client, login) will not reach this server; set public_baseurl";
}

/** Where the data is, for the start line and `parley admin`: never the password. */
export function describeDatabase(config: Pick<Config, "database_url" | "data_dir">): Record<string, string> {
  if (!config.database_url) return { kind: "embedded", path: path.join(config.data_dir, "db") };
  const url = new URL(config.database_url);
  return { kind: "postgres", host: url.port ? `${url.hostname}:${url.port}` : url.hostname, name: decodeURIComponent(url.pathname.replace(/^\//, "")) || "(user's default)" };
}

async function hasAdmin(database: OpenedDatabase): Promise<boolean> {
  const u = schema.users;
  const [row] = await database.db.select({ userId: u.userId }).from(u).where(eq(u.isAdmin, true)).limit(1);
  return row !== undefined;
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
