// The server-to-server side of one homeserver process, put together: discovery, the outbound
// HTTP client, remote keys, inbound request authentication and the outbound queue. Built in
// server/homeserver.ts; it calls the services, and the services never import it.

import { resolveSrv } from "node:dns/promises";
import type { Logger } from "pino";
import type { OpenedDatabase } from "../../schema/db.ts";
import type { SigningKey } from "../protocol/signing.ts";
import { ServerResolver, type SrvRecord } from "./discovery.ts";
import { FederationHttpClient } from "./http-client.ts";
import { ServerRequestAuthenticator } from "./inbound-auth.ts";
import { FederationSender } from "./sender.ts";
import { ServerKeyStore } from "./server-keys.ts";
import { EduHandlers } from "./edu-handlers.ts";
import { InboundTransactions } from "./inbound-transactions.ts";
import { OwnOldKeys } from "./own-old-keys.ts";
import { PduChecker } from "./pdu-checks.ts";
import { RemoteQueries } from "./remote-queries.ts";
import type { RoomFederation } from "./room-federation.ts";
import { RoomHistoryClient } from "./room-history.ts";
import { type RoomStateReader, ServerAcls } from "./server-acl-check.ts";

export interface FederationConfig {
  server_name: string;
  federation_hosts: { name: string; host: string; port: number }[];
  federation_insecure: string[];
  trusted_key_servers?: string[];
}

export interface Federation {
  http: FederationHttpClient;
  resolver: ServerResolver;
  keys: ServerKeyStore;
  /** Our retired signing keys, published under old_verify_keys. */
  ownOldKeys: OwnOldKeys;
  /** Profile, alias and OpenID queries made of other servers for our clients. */
  queries: RemoteQueries;
  /** Room events, state, auth chains and history read from other servers (answers unchecked). */
  history: RoomHistoryClient;
  sender: FederationSender;
  serverAuth: ServerRequestAuthenticator;
  /** Handlers for inbound EDUs by type; registered where the homeserver is put together. */
  edus: EduHandlers;
  /** `PUT /send/{txnId}`: idempotent transactions, their PDUs and EDUs. */
  inbound: InboundTransactions;
  /**
   * Steps 1–3 of the checks on receipt for every PDU another server gives us (transactions, joins,
   * missing events, backfill); large batches are verified on worker threads.
   */
  pduChecker: PduChecker;
  /** Rooms' server ACLs, for requests and EDUs that name a room. */
  acl: ServerAcls;
  /** Rooms across servers (joins, invites, received PDUs, fan-out); set by `connectRoomFederation`. */
  rooms?: RoomFederation;
  start(): Promise<void>;
  stop(): Promise<void>;
}

export interface FederationDeps {
  config: FederationConfig;
  database: OpenedDatabase;
  signingKey: SigningKey;
  logger: Logger;
  now(): number;
  /** The version of a room this server knows (inbound PDUs are checked by it). */
  roomVersion(roomId: string): Promise<string | undefined>;
  /** Rooms' current state (server ACLs are read from it). */
  roomState: RoomStateReader;
  /** Test networks: faster retries. */
  backoffInitialMs?: number;
  backoffMaxMs?: number;
}

export function createFederation(deps: FederationDeps): Federation {
  const { config, database, signingKey, logger, now } = deps;
  const insecure = config.federation_insecure.includes("*") ? ("*" as const) : new Set(config.federation_insecure);
  if (insecure === "*") {
    logger.warn(
      "FEDERATION IS INSECURE: federation_insecure is '*': no certificate checks for any server, and federation may reach loopback and private addresses. Only for a closed test network.",
    );
  } else if (insecure.size > 0) {
    logger.warn({ servers: [...insecure] }, "federation reaches these servers without certificate checks (federation_insecure)");
  }
  let http!: FederationHttpClient;
  const resolver = new ServerResolver({
    fetchWellKnown: (hostname) => http.fetchWellKnown(hostname),
    resolveSrv: async (name): Promise<SrvRecord[]> => {
      try {
        return await resolveSrv(name);
      } catch {
        return [];
      }
    },
    now,
  });
  http = new FederationHttpClient({
    serverName: config.server_name,
    signingKey,
    resolve: (name) => resolver.resolve(name),
    pinnedHosts: new Map(config.federation_hosts.map((h) => [h.name, { host: h.host, port: h.port }])),
    insecure,
  });
  const ownOldKeys = new OwnOldKeys(database.db);
  const keys = new ServerKeyStore({
    db: database.db,
    ownOldKeys: () => ownOldKeys.list(),
    http,
    serverName: config.server_name,
    signingKey,
    notaries: config.trusted_key_servers ?? [],
    now,
    logger,
  });
  const sender = new FederationSender({
    database,
    http,
    serverName: config.server_name,
    now,
    logger,
    ...(deps.backoffInitialMs === undefined ? {} : { backoffInitialMs: deps.backoffInitialMs }),
    ...(deps.backoffMaxMs === undefined ? {} : { backoffMaxMs: deps.backoffMaxMs }),
  });
  const serverAuth = new ServerRequestAuthenticator(keys, config.server_name, (origin) => {
    sender.markReachable(origin).catch((err) => logger.debug({ err, origin }, "could not reset a destination's backoff"));
  });
  const edus = new EduHandlers();
  const pduChecker = new PduChecker({ keys, logger });
  const inbound = new InboundTransactions({ db: database.db, edus, pduChecker, roomVersion: deps.roomVersion, logger, now });
  return {
    http,
    resolver,
    keys,
    ownOldKeys,
    queries: new RemoteQueries(http, now),
    history: new RoomHistoryClient(http),
    sender,
    serverAuth,
    edus,
    inbound,
    pduChecker,
    acl: new ServerAcls(deps.roomState),
    async start() {
      inbound.start();
      await sender.start();
    },
    async stop() {
      inbound.stop();
      await sender.stop();
      await pduChecker.close();
      await http.close();
    },
  };
}
