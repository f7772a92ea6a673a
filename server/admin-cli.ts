// `parley admin ...`: account administration on the configured database, without HTTP. It uses the
// same services as the server, so the rules (username checks, hashing, audit log, token revocation)
// are the same. On PostgreSQL it runs while the server runs (revoked tokens reach the server through
// NOTIFY); the embedded PGlite database can only be opened by one process, so there the server must
// be stopped first, and the command says so.
import { randomBytes } from "node:crypto";
import { parseArgs } from "node:util";
import pino from "pino";
import { DatabaseNotInitializedError, type OpenedDatabase, openDatabase } from "../schema/db.ts";
import { ExportFileError, exportDatabase, importDatabase } from "../schema/export.ts";
import { listDestinations } from "../federation/transport/sender.ts";
import { committedStreamPosition, listQueues } from "./appservices/delivery.ts";
import { EventStore } from "./rooms/event-store.ts";
import { OwnOldKeys } from "../federation/transport/own-old-keys.ts";
import { readSigningKey, writeNewSigningKey } from "./signing-key.ts";
import { DatabaseInUseError } from "../schema/embedded-lock.ts";
import { type Config, ConfigError, loadConfig } from "./config.ts";
import { bindServerName, describeDatabase } from "./homeserver.ts";
import { parseUserId } from "./accounts/user-id.ts";
import { MatrixError } from "./http/errors.ts";
import { MediaRepository, type PurgeResult } from "./media/media.ts";
import { localMediaIdsInRoom } from "./media/room-media.ts";
import { FileMediaStore } from "./media/store.ts";
import path from "node:path";
import { type AccountServices, createAccountServices } from "./services.ts";

const USAGE = `Usage: parley admin [--config FILE] [--init] <command> [options]

The data directory and database come from the configuration (as for \`parley serve\`; without
--config, ./data). A database that does not exist yet is created only with --init.

Commands:
  create-user NAME [--admin] [--password PW] [--display-name NAME]
                                 Create an account; without --password one is generated and printed
  reset-password NAME [--password PW]
                                 Set a new password and log out all of the user's devices
  deactivate NAME [--erase]      Deactivate an account (its name stays taken); --erase also hides
                                 its messages from later joiners and other servers
  list-users                     List accounts
  set-admin NAME [--revoke]      Make a user a server admin (the admin API, /_synapse/admin/...);
                                 --revoke takes it away (at once, also from a running server)
  audit [--user NAME] [--limit N]
                                 Show the security audit log, newest first
  federation                     List federation destinations: queued items, failures, last
                                 success, backoff and last error
  appservices                    List application services: URL, bot, namespaces, events waiting
                                 to be delivered, failures, last error and next retry
  rotate-signing-key             Sign with a new server key from now on; the old one stays
                                 published as an old verify key (restart the server after)
  media usage [--top N]          Storage used by media: local uploads, cached remote media,
                                 thumbnails, and the local users using the most
  media purge-user NAME          Delete a local user's uploads and their thumbnails
  media purge-room ROOM_ID       Delete the local media the room's messages, stickers and avatar
                                 refer to (mxc URIs of this server only)
  media purge-remote --older-than DAYS
                                 Delete cached remote media not downloaded for DAYS days
  export FILE                    Write the whole database to FILE (gzipped; the server stopped)
  import FILE                    Load an export into a new, empty database (with --init): how an
                                 embedded database moves to PostgreSQL (set DATABASE_URL) or back

NAME is a localpart (alice) or a full user ID (@alice:example.org).
`;

export interface AdminIo {
  out(text: string): void;
  err(text: string): void;
}

const processIo: AdminIo = {
  out: (text) => process.stdout.write(text),
  err: (text) => process.stderr.write(text),
};

/** What a command may use beyond the account services. */
interface AdminContext {
  config: Config;
  database: OpenedDatabase;
  now(): number;
}

type Subcommand = (args: string[], services: AccountServices, io: AdminIo, context: AdminContext) => Promise<number>;

const subcommands: Record<string, Subcommand> = {
  "create-user": createUser,
  "reset-password": resetPassword,
  deactivate,
  "list-users": listUsers,
  "set-admin": setAdmin,
  audit,
  federation,
  appservices,
  "rotate-signing-key": rotateSigningKey,
  media: mediaCommand,
  export: exportCommand,
  import: importCommand,
};

export async function adminMain(argv: string[], io: AdminIo = processIo): Promise<number> {
  const { configFile, init, rest } = takeConfigOption(argv);
  if (rest[0] === "--help" || rest[0] === "-h" || rest[0] === "help") {
    io.out(USAGE);
    return 0;
  }
  const [name, ...args] = rest;
  const command = name ? subcommands[name] : undefined;
  if (!command) {
    io.err(name ? `parley admin: unknown command "${name}"\n${USAGE}` : USAGE);
    return 2;
  }

  let database;
  try {
    const config = await loadConfig(configFile);
    // On standard error, so that what a command prints stays parseable.
    io.err(`parley admin: data directory ${config.data_dir}, ${databaseDescription(config)}\n`);
    try {
      database = await openDatabase({
        databaseUrl: config.database_url,
        dataDir: config.data_dir,
        poolSize: 2,
        mustExist: !init,
      });
    } catch (err) {
      if (!(err instanceof DatabaseNotInitializedError)) throw err;
      io.err(
        `parley admin: ${err.message}. Is this the right folder or configuration (--config FILE)? ` +
          "To create a new database there, run the command again with --init\n",
      );
      return 1;
    }
    await bindServerName(database, config.server_name, Date.now());
    const logger = pino({ level: "silent" });
    const services = createAccountServices(database, config, logger, Date.now);
    return await command(args, services, io, { config, database, now: Date.now });
  } catch (err) {
    if (err instanceof DatabaseInUseError || err instanceof ConfigError || err instanceof ExportFileError) {
      io.err(`parley admin: ${err.message}\n`);
      return 1;
    }
    if (err instanceof MatrixError) {
      io.err(`parley admin: ${err.message} (${err.errcode})\n`);
      return 1;
    }
    if ((err as { code?: string }).code?.startsWith("ERR_PARSE_ARGS")) {
      io.err(`parley admin: ${(err as Error).message}\n`);
      return 2;
    }
    const cause = (err as { cause?: unknown }).cause;
    if (cause instanceof DatabaseInUseError) {
      io.err(`parley admin: ${cause.message}\n`);
      return 1;
    }
    throw err;
  } finally {
    await database?.close().catch(() => {});
  }
}

async function exportCommand(args: string[], _services: AccountServices, io: AdminIo, context: AdminContext): Promise<number> {
  const { positionals } = parseArgs({ args, allowPositionals: true, options: {} });
  const file = positionals[0];
  if (!file) throw new MatrixError(400, "M_MISSING_PARAM", "export needs a FILE to write");
  try {
    const count = await exportDatabase(context.database.db, context.config.server_name, file);
    io.out(`exported ${count.rows} row(s) of ${count.tables} table(s) to ${file}\n`);
    io.out("Keep the data directory too: it holds the signing key and the media files.\n");
    return 0;
  } catch (err) {
    if ((err as { code?: string }).code === "EEXIST") {
      io.err(`parley admin: ${file} exists already; export never overwrites a file\n`);
      return 1;
    }
    throw err;
  }
}

async function importCommand(args: string[], _services: AccountServices, io: AdminIo, context: AdminContext): Promise<number> {
  const { positionals } = parseArgs({ args, allowPositionals: true, options: {} });
  const file = positionals[0];
  if (!file) throw new MatrixError(400, "M_MISSING_PARAM", "import needs the FILE an export wrote");
  try {
    const count = await importDatabase(context.database.db, context.config.server_name, file);
    io.out(`imported ${count.rows} row(s) of ${count.tables} table(s) from ${file}\n`);
    return 0;
  } catch (err) {
    if ((err as { code?: string }).code === "ENOENT") {
      io.err(`parley admin: there is no file ${file}\n`);
      return 1;
    }
    throw err;
  }
}

function databaseDescription(config: Config): string {
  const d = describeDatabase(config);
  return d.kind === "postgres" ? `PostgreSQL database ${d.name} on ${d.host}` : `embedded database ${d.path}`;
}

/** `--config FILE` (or `-c FILE`, `--config=FILE`) and `--init` may stand anywhere; the rest is the command and its arguments. */
function takeConfigOption(argv: string[]): { configFile?: string; init: boolean; rest: string[] } {
  let configFile: string | undefined;
  let init = false;
  const rest: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === "--config" || arg === "-c") configFile = argv[++i];
    else if (arg.startsWith("--config=")) configFile = arg.slice("--config=".length);
    else if (arg === "--init") init = true;
    else rest.push(arg);
  }
  return { configFile, init, rest };
}

function userIdOrFail(services: AccountServices, name: string | undefined): string {
  if (!name) throw new MatrixError(400, "M_MISSING_PARAM", "a user NAME is required");
  const userId = services.accounts.loginUserId(name);
  if (!userId) throw new MatrixError(400, "M_INVALID_USERNAME", `${name} is not a user of this server`);
  return userId;
}

const generatePassword = () => randomBytes(18).toString("base64url");

async function createUser(args: string[], services: AccountServices, io: AdminIo): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      admin: { type: "boolean", default: false },
      password: { type: "string" },
      "display-name": { type: "string" },
    },
  });
  const { localpart } = parseUserId(userIdOrFail(services, positionals[0]))!;
  const generated = values.password === undefined;
  const password = values.password ?? generatePassword();
  const userId = await services.accounts.createUser(
    { localpart, password, admin: values.admin, displayName: values["display-name"] },
    "cli",
  );
  io.out(`created ${userId}${values.admin ? " (admin)" : ""}\n`);
  if (generated) io.out(`password: ${password}\n`);
  return 0;
}

async function resetPassword(args: string[], services: AccountServices, io: AdminIo): Promise<number> {
  const { values, positionals } = parseArgs({ args, allowPositionals: true, options: { password: { type: "string" } } });
  const userId = userIdOrFail(services, positionals[0]);
  const generated = values.password === undefined;
  const password = values.password ?? generatePassword();
  await services.accounts.setPassword(userId, password, { logoutDevices: true }, "cli");
  io.out(`password of ${userId} reset; all of its devices are logged out\n`);
  if (generated) io.out(`password: ${password}\n`);
  return 0;
}

async function deactivate(args: string[], services: AccountServices, io: AdminIo): Promise<number> {
  const { positionals, values } = parseArgs({ args, allowPositionals: true, options: { erase: { type: "boolean" } } });
  const userId = userIdOrFail(services, positionals[0]);
  await services.accounts.deactivate(userId, "cli", { erase: values.erase === true });
  io.out(`deactivated ${userId}${values.erase ? " and erased its messages" : ""}\n`);
  return 0;
}

async function setAdmin(args: string[], services: AccountServices, io: AdminIo): Promise<number> {
  const { positionals, values } = parseArgs({ args, allowPositionals: true, options: { revoke: { type: "boolean", default: false } } });
  const userId = userIdOrFail(services, positionals[0]);
  const admin = !values.revoke;
  await services.accounts.setAdmin(userId, admin);
  // Admin status is checked on every admin API request, so this needs no restart and no cache drop.
  await services.audit.record("admin_action", userId, "cli", { action: admin ? "grant_admin" : "revoke_admin", user_id: userId });
  io.out(admin ? `${userId} is now a server admin\n` : `${userId} is no longer a server admin\n`);
  return 0;
}

async function listUsers(args: string[], services: AccountServices, io: AdminIo): Promise<number> {
  parseArgs({ args, options: {} });
  const users = await services.accounts.listUsers();
  for (const u of users) {
    const flags = [u.isAdmin && "admin", u.isGuest && "guest", u.deactivatedTs !== null && "deactivated"].filter(Boolean);
    io.out(`${u.userId}\t${new Date(u.createdTs).toISOString()}${flags.length ? `\t${flags.join(",")}` : ""}\n`);
  }
  io.out(`${users.length} user(s)\n`);
  return 0;
}

async function audit(args: string[], services: AccountServices, io: AdminIo): Promise<number> {
  const { values } = parseArgs({ args, options: { user: { type: "string" }, limit: { type: "string" } } });
  const limit = values.limit === undefined ? 50 : Number(values.limit);
  if (!Number.isInteger(limit) || limit < 1 || limit > 10_000) {
    throw new MatrixError(400, "M_INVALID_PARAM", "--limit must be an integer from 1 to 10000");
  }
  const userId = values.user === undefined ? undefined : userIdOrFail(services, values.user);
  const entries = await services.audit.list({ userId, limit });
  for (const e of entries) {
    io.out(
      [new Date(e.ts).toISOString(), e.event, e.userId ?? "-", e.ip ?? "-", e.userAgent ?? "-", JSON.stringify(e.detail)].join("\t") + "\n",
    );
  }
  return 0;
}

const isoOrDash = (ts: string | number | null | undefined) => (ts === null || ts === undefined ? "-" : new Date(Number(ts)).toISOString());

async function federation(args: string[], _services: AccountServices, io: AdminIo, { database }: AdminContext): Promise<number> {
  parseArgs({ args, options: {} });
  const destinations = await listDestinations(database);
  io.out(["destination", "queued", "failures", "last success", "backoff until", "last error"].join("\t") + "\n");
  for (const d of destinations) {
    // The time of the next attempt, also when it has passed: the server stopped meanwhile, or is
    // about to retry.
    const backoff = isoOrDash(d.retry_at_ts);
    const error = d.last_error === null ? "-" : d.last_error.replace(/\s+/g, " ").slice(0, 300);
    io.out([d.destination, d.queued, d.failures ?? 0, isoOrDash(d.last_success_ts), backoff, error].join("\t") + "\n");
  }
  io.out(`${destinations.length} destination(s)\n`);
  return 0;
}

async function appservices(args: string[], services: AccountServices, io: AdminIo, { config, database, now }: AdminContext): Promise<number> {
  parseArgs({ args, options: {} });
  const queues = await listQueues({
    database,
    registry: services.appServices,
    serverName: config.server_name,
    eventStore: new EventStore(database.db, now),
    currentStreamPosition: () => committedStreamPosition(database),
  });
  io.out(["id", "url", "sender", "namespaces", "queued", "txn in flight", "failures", "last success", "last error at", "next retry", "last error"].join("\t") + "\n");
  for (const q of queues) {
    const error = q.lastError === null ? "-" : q.lastError.replace(/\s+/g, " ").slice(0, 300);
    io.out(
      [
        q.id,
        q.url ?? "(none: no traffic)",
        q.sender,
        q.namespaces,
        `${q.queued}${q.more ? "+" : ""}`,
        q.pendingTxnId ?? "-",
        q.failures,
        isoOrDash(q.lastSuccessTs),
        isoOrDash(q.lastErrorTs),
        // The time of the next attempt, also when it has passed (the server stopped meanwhile).
        isoOrDash(q.retryAtTs),
        error,
      ].join("\t") + "\n",
    );
  }
  io.out(`${queues.length} application service(s)\n`);
  return 0;
}

/**
 * A new signing key in the data directory; the old one's public half goes to own_old_verify_keys,
 * expired now, and is published under old_verify_keys so what it signed still verifies
 * (https://spec.matrix.org/latest/server-server-api/#publishing-keys). A running server keeps the
 * key it loaded at start: it signs with the new one once restarted.
 */
async function rotateSigningKey(args: string[], _services: AccountServices, io: AdminIo, { config, database, now }: AdminContext): Promise<number> {
  parseArgs({ args, options: {} });
  const previous = await readSigningKey(config.data_dir);
  if (!previous) {
    io.err(`parley admin: there is no signing key in ${config.data_dir} yet; the server creates one when it first starts\n`);
    return 1;
  }
  // Retired first: should writing the new key fail, the old one is still current (a current key
  // is never listed as old), and a retry retires it again harmlessly.
  await new OwnOldKeys(database.db).retire(previous.keyId, previous.publicKey, now());
  const current = await writeNewSigningKey(config.data_dir);
  io.out(`new signing key ${current.keyId}; ${previous.keyId} is now an old verify key\n`);
  io.out("restart the server to sign with the new key (a running server keeps the key it loaded at start)\n");
  return 0;
}

const mediaSubcommands = ["usage", "purge-user", "purge-room", "purge-remote"] as const;

/** `parley admin media …`: storage used, and purges of a user's, a room's or old remote media. */
async function mediaCommand(args: string[], services: AccountServices, io: AdminIo, { config, database, now }: AdminContext): Promise<number> {
  const [sub, ...rest] = args;
  if (!sub || !(mediaSubcommands as readonly string[]).includes(sub)) {
    io.err(`parley admin: media needs one of ${mediaSubcommands.join(", ")}\n${USAGE}`);
    return 2;
  }
  const repo = new MediaRepository({
    db: database.db,
    store: new FileMediaStore(path.join(config.data_dir, "media")),
    serverName: config.server_name,
    now,
    logger: pino({ level: "silent" }),
    maxUploadBytes: config.max_upload_size,
    maxImagePixels: config.max_image_pixels,
    authenticatedMedia: config.enable_authenticated_media,
  });
  const purged = (what: string, r: PurgeResult) =>
    io.out(`deleted ${r.media} media (${r.bytes} bytes) and ${r.thumbnails} thumbnail(s) ${what}; ${r.files} file(s) removed from disk\n`);
  if (sub === "usage") {
    const { values } = parseArgs({ args: rest, options: { top: { type: "string" } } });
    const top = values.top === undefined ? 10 : Number(values.top);
    if (!Number.isInteger(top) || top < 0 || top > 10_000) throw new MatrixError(400, "M_INVALID_PARAM", "--top must be an integer from 0 to 10000");
    const u = await repo.usage(top);
    io.out(`local\t${u.local.count} media\t${u.local.bytes} bytes\n`);
    io.out(`remote\t${u.remote.count} media\t${u.remote.bytes} bytes\n`);
    io.out(`thumbnails\t${u.thumbnails.count}\t${u.thumbnails.bytes} bytes\n`);
    for (const user of u.topUsers) io.out(`${user.userId}\t${user.count} media\t${user.bytes} bytes\n`);
    return 0;
  }
  if (sub === "purge-user") {
    const { positionals } = parseArgs({ args: rest, allowPositionals: true, options: {} });
    const userId = userIdOrFail(services, positionals[0]);
    purged(`uploaded by ${userId}`, await repo.purgeUser(userId));
    return 0;
  }
  if (sub === "purge-room") {
    const { positionals } = parseArgs({ args: rest, allowPositionals: true, options: {} });
    const roomId = positionals[0];
    if (!roomId || !/^!\S+$/.test(roomId)) throw new MatrixError(400, "M_INVALID_PARAM", "a ROOM_ID (!room:server, or !room in room version 12) is required");
    const ids = await localMediaIdsInRoom(new EventStore(database.db, now), roomId, config.server_name);
    purged(`referred to in ${roomId} (${ids.length} local mxc URI(s) found)`, await repo.purgeLocal(ids));
    return 0;
  }
  const { values } = parseArgs({ args: rest, options: { "older-than": { type: "string" } } });
  const days = Number(values["older-than"]);
  if (values["older-than"] === undefined || !Number.isFinite(days) || days < 0) {
    throw new MatrixError(400, "M_INVALID_PARAM", "--older-than DAYS (a number, 0 or more) is required");
  }
  purged(`cached from other servers and not downloaded for ${days} day(s)`, await repo.purgeRemote(now() - days * 24 * 60 * 60 * 1000));
  return 0;
}
