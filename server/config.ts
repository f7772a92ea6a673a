// Parley's configuration: one YAML file, every key documented here once, every key also settable
// by an environment variable that overrides the file. `parley generate-config` and the README's
// configuration table are both generated from the table below.
import { DEFAULT_ROOM_VERSION, isSupportedRoomVersion, SUPPORTED_ROOM_VERSIONS } from "../federation/protocol/room-versions.ts";
import { readFile } from "node:fs/promises";
import path from "node:path";
import YAML from "yaml";
import { z } from "zod";
import { rateLimitSchema } from "./ratelimit.ts";

const bool = z.union([z.boolean(), z.enum(["true", "false", "1", "0", "yes", "no"])]).transform(
  (v) => v === true || v === "true" || v === "1" || v === "yes",
);
const int = (min: number, max: number) => z.coerce.number().int().min(min).max(max);

interface KeySpec<S extends z.ZodType> {
  env: string;
  schema: S;
  /** The default, or a function of the keys already resolved. */
  default: z.input<S> | undefined | ((c: Partial<Record<string, unknown>>) => z.input<S> | undefined);
  doc: string;
  /** Example value written (commented out) into a generated file when there is no default. */
  example?: string;
  secret?: boolean;
}
const key = <S extends z.ZodType>(spec: KeySpec<S>) => spec;

/**
 * Every configuration key. The order is the order of resolution (a default may use keys above it)
 * and the order in the generated file.
 */
export const configKeys = {
  server_name: key({
    env: "PARLEY_SERVER_NAME",
    schema: z.string().regex(/^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?$/, "not a valid server name"),
    default: "localhost:8008",
    doc: "The server name: the part after the colon in user IDs (@alice:example.org). It cannot change once the database exists.",
  }),
  bind: key({
    env: "PARLEY_BIND",
    schema: z.string().min(1),
    default: "127.0.0.1",
    doc: "The address to listen on. Use 0.0.0.0 (or ::) to accept connections from other machines.",
  }),
  port: key({
    env: "PARLEY_PORT",
    schema: int(0, 65535),
    default: 8008,
    doc: "The TCP port for the Client-Server and Server-Server APIs (0 picks a free port).",
  }),
  public_baseurl: key({
    env: "PARLEY_PUBLIC_BASEURL",
    schema: z.string().url(),
    default: (c) => defaultPublicBaseurl(String(c.server_name ?? "localhost"), Number(c.port ?? 8008)),
    doc: "The URL clients use to reach this server; published in /.well-known/matrix/client. Unset: `https://<server_name>/`, or `http://localhost:<port>/` when the server name is localhost or a loopback address.",
  }),
  federation_server: key({
    env: "PARLEY_FEDERATION_SERVER",
    schema: z.string().optional(),
    default: undefined,
    example: "matrix.example.org:443",
    doc: "The host[:port] that other servers should use to reach this one, published in /.well-known/matrix/server. Leave unset to publish nothing (peers then use the server name itself).",
  }),
  federation_hosts: key({
    env: "PARLEY_FEDERATION_HOSTS",
    schema: z
      .union([z.record(z.string(), z.string()), z.string()])
      .transform((v, ctx) => {
        const entries =
          typeof v === "string"
            ? v.split(",").map((s) => s.trim()).filter(Boolean).map((pair) => {
                const eq = pair.indexOf("=");
                return eq < 0 ? [pair, ""] : [pair.slice(0, eq).trim(), pair.slice(eq + 1).trim()];
              })
            : Object.entries(v);
        const out: { name: string; host: string; port: number }[] = [];
        for (const [name, address] of entries) {
          const m = /^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/.exec(address ?? "");
          if (!name || !m) {
            ctx.addIssue({ code: "custom", message: `"${name}=${address}" is not name=host:port` });
            return z.NEVER;
          }
          out.push({ name: name as string, host: (m[1] as string).replace(/^\[|\]$/g, ""), port: Number(m[2]) });
        }
        return out;
      }),
    default: {},
    example: '{ "hs2.test": "127.0.0.1:8009" }',
    doc: "Server names pinned to addresses (in the environment: `hs2.test=127.0.0.1:8009,hs3.test=127.0.0.1:8010`). Federation connects to a pinned name there, skipping discovery and the private-address check. For tests and private networks.",
  }),
  federation_insecure: key({
    env: "PARLEY_FEDERATION_INSECURE",
    schema: z
      .union([z.array(z.string().min(1)), z.string()])
      .transform((v) => (Array.isArray(v) ? v : v.split(",").map((s) => s.trim()).filter(Boolean))),
    default: [],
    example: '["hs2.test"]',
    doc: "Servers reached over plain HTTP, without TLS (in the environment: comma-separated). `*` means every server and also lets federation reach loopback and private addresses: only for a closed test network. Logged loudly at start.",
  }),
  identity_servers_insecure: key({
    env: "PARLEY_IDENTITY_SERVERS_INSECURE",
    schema: z
      .union([z.array(z.string().min(1)), z.string()])
      .transform((v) => (Array.isArray(v) ? v : v.split(",").map((s) => s.trim()).filter(Boolean))),
    default: [],
    example: '["127.0.0.1:8090"]',
    doc: "Identity servers (`host[:port]`, as clients name them in `id_server`, and the hosts of `key_validity_url`s) reached for third-party invites without certificate checks, and allowed on loopback and private addresses (in the environment: comma-separated). `*` means every identity server: only for a closed test network. Others are reached over HTTPS with certificate checks, never on private addresses.",
  }),
  push_gateways_insecure: key({
    env: "PARLEY_PUSH_GATEWAYS_INSECURE",
    schema: z
      .union([z.array(z.string().min(1)), z.string()])
      .transform((v) => (Array.isArray(v) ? v : v.split(",").map((s) => s.trim()).filter(Boolean))),
    default: [],
    example: '["127.0.0.1:5000"]',
    doc: "Push gateways (`host[:port]` of a pusher's `data.url`) reached without certificate checks, and allowed on loopback and private addresses (in the environment: comma-separated). `*` means every gateway: only for a closed test network. Others are reached with certificate checks, never on private addresses.",
  }),
  trusted_key_servers: key({
    env: "PARLEY_TRUSTED_KEY_SERVERS",
    schema: z
      .union([z.array(z.string().min(1)), z.string()])
      .transform((v) => (Array.isArray(v) ? v : v.split(",").map((s) => s.trim()).filter(Boolean))),
    default: [],
    example: '["matrix.org"]',
    doc: "Notary servers asked for another server's signing keys when that server cannot be reached itself (in the environment: comma-separated). Their answers are trusted only when signed by them. Empty: keys are only fetched from each server directly.",
  }),
  tls_port: key({
    env: "PARLEY_TLS_PORT",
    schema: int(0, 65535).optional(),
    default: undefined,
    example: "8448",
    doc: "Also listen with TLS on this port (same APIs), with `tls_certificate` and `tls_private_key`, so a small deployment needs no reverse proxy. Leave unset behind a proxy that terminates TLS.",
  }),
  tls_certificate: key({
    env: "PARLEY_TLS_CERTIFICATE",
    schema: z.string().min(1).optional(),
    default: undefined,
    example: "/etc/parley/fullchain.pem",
    doc: "The PEM certificate chain for `tls_port`.",
  }),
  tls_private_key: key({
    env: "PARLEY_TLS_PRIVATE_KEY",
    schema: z.string().min(1).optional(),
    default: undefined,
    example: "/etc/parley/privkey.pem",
    doc: "The PEM private key for `tls_port`.",
  }),
  metrics_port: key({
    env: "PARLEY_METRICS_PORT",
    schema: int(0, 65535).optional(),
    default: undefined,
    example: "9092",
    doc: "Serve Prometheus metrics at /metrics on this port, a listener of its own (nothing else is served there). Unset: no metrics are collected at all.",
  }),
  metrics_bind: key({
    env: "PARLEY_METRICS_BIND",
    schema: z.string().min(1),
    default: "127.0.0.1",
    doc: "The address the metrics listener binds. Loopback by default: the metrics name endpoints and destination servers, so expose them to the scraper only.",
  }),
  data_dir: key({
    env: "PARLEY_DATA_DIR",
    schema: z.string().min(1),
    default: "./data",
    doc: "Where Parley keeps its signing key, the embedded database (db/) and media.",
  }),
  database_url: key({
    env: "DATABASE_URL",
    schema: z.string().regex(/^postgres(ql)?:\/\//, "must be a postgres:// URL").optional(),
    default: undefined,
    example: "postgres://parley:secret@localhost:5432/parley",
    doc: "A PostgreSQL server to use instead of the embedded database.",
    secret: true,
  }),
  database_pool_size: key({
    env: "PARLEY_DATABASE_POOL_SIZE",
    schema: int(1, 1000),
    default: 10,
    doc: "Connections to keep open to PostgreSQL.",
  }),
  embedded_fsync: key({
    env: "PARLEY_EMBEDDED_FSYNC",
    schema: bool,
    default: true,
    doc: "Embedded database only: each commit reaches the disk (fsync) before the request is answered, so acknowledged events survive an OS crash or a power loss. Turning it off makes sends faster (figures in the README's note on durability) but a crash of the machine, not just of Parley, can then lose acknowledged events or corrupt the database.",
  }),
  registration: key({
    env: "PARLEY_REGISTRATION",
    schema: z.enum(["closed", "open", "token"]),
    default: "open",
    doc: "Who may register: `open` (anyone who can reach the server; only loopback by default), `token` (with a registration token), `closed` (only admins, through the CLI or shared-secret registration). `open` on an address other than loopback refuses to start without `allow_public_open_registration`.",
  }),
  allow_public_open_registration: key({
    env: "PARLEY_ALLOW_PUBLIC_OPEN_REGISTRATION",
    schema: bool,
    default: false,
    doc: "Lets `registration: open` start on an address other than loopback (`bind`), where anyone who reaches the port can create accounts without any check: spammers find such servers within days. Prefer `token` registration.",
  }),
  password_min_length: key({
    env: "PARLEY_PASSWORD_MIN_LENGTH",
    schema: int(0, 512),
    default: 8,
    doc: "The fewest characters a password chosen at registration or changed by its user may have; shorter ones get 400 M_WEAK_PASSWORD. Logins with older, shorter passwords still work.",
  }),
  registration_tokens: key({
    env: "PARLEY_REGISTRATION_TOKENS",
    schema: z
      .union([z.array(z.string().min(1)), z.string()])
      .transform((v) => (Array.isArray(v) ? v : v.split(",").map((s) => s.trim()).filter(Boolean))),
    default: [],
    example: "[\"let-me-in\"]",
    doc: "Registration tokens accepted when `registration` is `token` (in the environment: comma-separated).",
    secret: true,
  }),
  registration_shared_secret: key({
    env: "PARLEY_REGISTRATION_SHARED_SECRET",
    schema: z.string().min(1).optional(),
    default: undefined,
    example: "a long random string",
    doc: "Enables Synapse-compatible shared-secret registration (/_synapse/admin/v1/register) with this secret.",
    secret: true,
  }),
  allow_guest_access: key({
    env: "PARLEY_ALLOW_GUEST_ACCESS",
    schema: bool,
    default: false,
    doc: "Allow guest accounts (/register?kind=guest).",
  }),
  app_service_config_files: key({
    env: "PARLEY_APP_SERVICE_CONFIG_FILES",
    schema: z
      .union([z.array(z.string().min(1)), z.string()])
      .transform((v) => (Array.isArray(v) ? v : v.split(",").map((s) => s.trim()).filter(Boolean))),
    default: [],
    example: '["/etc/parley/whatsapp-registration.yaml"]',
    doc: "Application-service registration files (YAML, as bridges generate them; in the environment: comma-separated). Read and checked at start: a bad file, a repeated `id` or token, an invalid regex, or exclusive namespaces of two services that overlap (the message names a user or alias both claim) stops the server with a message naming the file.",
  }),
  user_directory_search_all_users: key({
    env: "PARLEY_USER_DIRECTORY_SEARCH_ALL_USERS",
    schema: bool,
    default: false,
    doc: "User directory search (/user_directory/search) also finds every local user (not guests), not only those sharing a room with the searcher or joined to a public room.",
  }),
  turn_uris: key({
    env: "PARLEY_TURN_URIS",
    schema: z
      .union([z.array(z.string().regex(/^turns?:/, "a TURN URI starts with turn: or turns:")), z.string()])
      .transform((v) => (Array.isArray(v) ? v : v.split(",").map((s) => s.trim()).filter(Boolean)))
      .pipe(z.array(z.string().regex(/^turns?:/, "a TURN URI starts with turn: or turns:"))),
    default: [],
    example: "[\"turn:turn.example.org:3478?transport=udp\", \"turns:turn.example.org:5349?transport=tcp\"]",
    doc: "TURN server URIs handed to clients for VoIP calls (GET /voip/turnServer; in the environment: comma-separated). With none, clients get `{}`: no TURN server.",
  }),
  turn_shared_secret: key({
    env: "PARLEY_TURN_SHARED_SECRET",
    schema: z.string().min(1).optional(),
    default: undefined,
    example: "the static-auth-secret of coturn",
    doc: "The secret shared with the TURN server (coturn's `use-auth-secret` / `static-auth-secret`): each user gets a username `<expiry>:<user id>` and its HMAC-SHA1 as password, valid for `turn_user_lifetime_ms`.",
    secret: true,
  }),
  turn_username: key({
    env: "PARLEY_TURN_USERNAME",
    schema: z.string().min(1).optional(),
    default: undefined,
    doc: "A static TURN username handed to every user, when there is no `turn_shared_secret` (with `turn_password`).",
  }),
  turn_password: key({
    env: "PARLEY_TURN_PASSWORD",
    schema: z.string().min(1).optional(),
    default: undefined,
    doc: "The static TURN password that goes with `turn_username`.",
    secret: true,
  }),
  turn_user_lifetime_ms: key({
    env: "PARLEY_TURN_USER_LIFETIME_MS",
    schema: int(1000, 365 * 86_400_000),
    default: 86_400_000,
    doc: "How long TURN credentials stay valid (the `ttl` clients get, in seconds; the expiry in shared-secret usernames).",
  }),
  turn_allow_guests: key({
    env: "PARLEY_TURN_ALLOW_GUESTS",
    schema: bool,
    default: true,
    doc: "Guest accounts may get TURN credentials too (as Synapse's default), so they can take part in calls.",
  }),
  rate_limits: key({
    env: "PARLEY_RATE_LIMITS",
    schema: bool,
    default: true,
    doc: "Enforce rate limits on login, registration and general requests. Turn off only for test networks.",
  }),
  x_forwarded_for: key({
    env: "PARLEY_X_FORWARDED_FOR",
    schema: bool,
    default: false,
    doc: "Behind a reverse proxy: take the client's address from the last X-Forwarded-For entry (the one the proxy added) for rate limits, device last-seen addresses and the audit log. Only turn on when every request comes through the proxy.",
  }),
  rate_limit_login: key({
    env: "PARLEY_RATE_LIMIT_LOGIN",
    schema: rateLimitSchema,
    default: "5/3s",
    doc: 'Login attempts allowed per client IP address and, separately, per account: a burst, then one more per period ("5/3s": five at once, then one every 3 seconds).',
  }),
  rate_limit_registration: key({
    env: "PARLEY_RATE_LIMIT_REGISTRATION",
    schema: rateLimitSchema,
    default: "10/6s",
    doc: "Registration requests (each step of the flow counts, and so do availability checks) allowed per client IP address.",
  }),
  rate_limit_requests: key({
    env: "PARLEY_RATE_LIMIT_REQUESTS",
    schema: rateLimitSchema,
    default: "300/50ms",
    doc: "Authenticated requests allowed per user, all endpoints together: a generous guard against runaway clients.",
  }),
  default_room_version: key({
    env: "PARLEY_DEFAULT_ROOM_VERSION",
    schema: z.string().refine(isSupportedRoomVersion, `not a supported room version (${SUPPORTED_ROOM_VERSIONS.join(", ")})`),
    default: DEFAULT_ROOM_VERSION,
    doc: "The room version of rooms created without one, and the default the capabilities advertise. The spec recommends 12; older servers in a federation may need an older one (Synapse 1.67 defaults to 9).",
  }),
  access_token_lifetime_ms: key({
    env: "PARLEY_ACCESS_TOKEN_LIFETIME_MS",
    schema: int(1000, 365 * 24 * 3600 * 1000),
    default: 5 * 60 * 1000,
    doc: "How long an access token lives when the client asked for a refresh token (`refresh_token: true` at login). Tokens of clients that did not ask never expire.",
  }),
  to_device_mailbox_limit: key({
    env: "PARLEY_TO_DEVICE_MAILBOX_LIMIT",
    schema: int(1, 10_000_000),
    default: 10_000,
    doc: "The most undelivered to-device messages (encryption keys, verification requests) one device's mailbox holds. A send that would overfill a mailbox is refused with 429 M_LIMIT_EXCEEDED, never dropped. Key-sharing messages (encrypted ones, key requests, verification) from users who share a room with the recipient may go on up to twice this, so strangers cannot keep them out.",
  }),
  to_device_per_sender_limit: key({
    env: "PARLEY_TO_DEVICE_PER_SENDER_LIMIT",
    schema: int(1, 10_000_000),
    default: 1_000,
    doc: "The most undelivered to-device messages one user may have waiting in one device's mailbox, so no single sender can fill it. Beyond it the send is refused with 429 M_LIMIT_EXCEEDED until the device syncs.",
  }),
  to_device_stranger_limit: key({
    env: "PARLEY_TO_DEVICE_STRANGER_LIMIT",
    schema: int(1, 10_000_000),
    default: 100,
    doc: "The same for a sender who shares no room with the recipient (a user's own devices always count as sharing one): plenty for a key verification, too little to fill a mailbox. 429 M_LIMIT_EXCEEDED beyond it.",
  }),
  user_data_quota_bytes: key({
    env: "PARLEY_USER_DATA_QUOTA_BYTES",
    schema: int(1024, 1 << 30),
    default: 10 * 1024 * 1024,
    doc: "The most a user may store as account data (global, per room, tags, push rules) and filters together, in bytes (room IDs, types and JSON text). A write that would go over it gets 413 M_TOO_LARGE; shrinking or deleting is always allowed.",
  }),
  user_data_item_max_bytes: key({
    env: "PARLEY_USER_DATA_ITEM_MAX_BYTES",
    schema: int(1024, 1 << 30),
    default: 1024 * 1024,
    doc: "The largest single piece of account data or filter, in bytes of JSON; larger ones get 413 M_TOO_LARGE. Large enough for the biggest real ones (m.direct and m.ignored_user_list of accounts with thousands of contacts).",
  }),
  user_filters_max: key({
    env: "PARLEY_USER_FILTERS_MAX",
    schema: int(1, 10_000_000),
    default: 1000,
    doc: "The most filters one user may store. Uploading a filter identical to one already stored returns its ID and stores nothing, so clients that upload their filter on every start stay far below it.",
  }),
  max_long_polls: key({
    env: "PARLEY_MAX_LONG_POLLS",
    schema: int(1, 10_000_000),
    default: 2_000,
    doc: "The most /sync long-polls (requests that may wait for news) one process holds at once; beyond it a long-poll is refused with 429 M_LIMIT_EXCEEDED and `retry_after_ms` (2–4 s), so the process stays responsive to the requests it holds. The default suits 2 cores on the embedded database (bench/longpoll.bench.ts); raise it with more cores or on PostgreSQL.",
  }),
  max_long_polls_per_user: key({
    env: "PARLEY_MAX_LONG_POLLS_PER_USER",
    schema: int(1, 10_000_000),
    default: 50,
    doc: "The most long-polls one user holds at once (every device syncing, with room to spare), so one account cannot take the whole of `max_long_polls`.",
  }),
  max_in_flight_requests: key({
    env: "PARLEY_MAX_IN_FLIGHT_REQUESTS",
    schema: int(1, 10_000_000),
    default: 500,
    doc: "The most other requests (everything but long-polls and the exempt /versions, /health and well-known files) one process works on at once; beyond it, 429 M_LIMIT_EXCEEDED with `retry_after_ms` (0.5–1 s).",
  }),
  max_in_flight_requests_per_user: key({
    env: "PARLEY_MAX_IN_FLIGHT_REQUESTS_PER_USER",
    schema: int(1, 10_000_000),
    default: 50,
    doc: "The most requests (long-polls aside) one user has in flight at once, so one account cannot take the whole of `max_in_flight_requests`.",
  }),
  log_level: key({
    env: "PARLEY_LOG_LEVEL",
    schema: z.enum(["fatal", "error", "warn", "info", "debug", "trace", "silent"]),
    default: "info",
    doc: "How much to log (JSON lines on standard output).",
  }),
  max_request_bytes: key({
    env: "PARLEY_MAX_REQUEST_BYTES",
    schema: int(1024, 1 << 30),
    default: 8 * 1024 * 1024,
    doc: "The largest request body accepted for JSON endpoints, in bytes; larger ones get 413 M_TOO_LARGE.",
  }),
  max_upload_size: key({
    env: "PARLEY_MAX_UPLOAD_SIZE",
    schema: int(1024, 2 ** 40),
    default: 50 * 1024 * 1024,
    doc: "The largest media upload accepted, in bytes (`m.upload.size`); larger ones get 413 M_TOO_LARGE and nothing is stored. Remote media larger than this is not fetched.",
  }),
  media_quota_bytes: key({
    env: "PARLEY_MEDIA_QUOTA_BYTES",
    schema: int(0, 2 ** 50),
    default: 0,
    doc: "The total size of the media each local user may upload, in bytes; an upload past it gets 403 M_FORBIDDEN and is not kept. 0: no quota.",
  }),
  max_image_pixels: key({
    env: "PARLEY_MAX_IMAGE_PIXELS",
    schema: int(1, 2 ** 40),
    default: 32 * 1000 * 1000,
    doc: "Images with more pixels than this (all frames counted, for an animated thumbnail) are not thumbnailed: a bound on what a decompression bomb can cost.",
  }),
  remote_media_cache_max_age_ms: key({
    env: "PARLEY_REMOTE_MEDIA_CACHE_MAX_AGE_MS",
    schema: int(0, 2 ** 50),
    default: 0,
    doc: "Remote media cached here and not downloaded (nor thumbnailed) for longer than this (in ms; never downloaded: since it was fetched) is deleted by an hourly sweep, with its thumbnails; a later request fetches it again from its origin. 0 (the default, as in Synapse): kept forever, since an origin that has gone or deleted the media cannot give it back. `parley admin media purge-remote --older-than DAYS` does the same once.",
  }),
  url_preview_enabled: key({
    env: "PARLEY_URL_PREVIEW_ENABLED",
    schema: bool,
    default: false,
    doc: "Answer `/_matrix/client/v1/media/preview_url`: the server fetches the page (http/https, at most 3 redirects, 1 MiB, 10 s; never loopback or private addresses unless `url_preview_insecure` names the host) and answers its Open Graph tags. Off: 403 M_FORBIDDEN.",
  }),
  url_preview_insecure: key({
    env: "PARLEY_URL_PREVIEW_INSECURE",
    schema: z
      .union([z.array(z.string().min(1)), z.string()])
      .transform((v) => (Array.isArray(v) ? v : v.split(",").map((s) => s.trim()).filter(Boolean))),
    default: [],
    example: '["127.0.0.1"]',
    doc: "Hosts (as written in the URL) that URL previews may fetch even when they resolve to loopback or private addresses, and without checking their TLS certificates (in the environment: comma-separated); `*`: every host. For tests and private networks.",
  }),
  enable_authenticated_media: key({
    env: "PARLEY_ENABLE_AUTHENTICATED_MEDIA",
    schema: bool,
    default: true,
    doc: "The spec's media \"freeze\": media uploaded (or remote media cached) while this is on is served only through the authenticated `/_matrix/client/v1/media/*` endpoints, not the deprecated `/_matrix/media/v3/download|thumbnail`. Media stored while it was off stays reachable through both.",
  }),
  request_timeout_ms: key({
    env: "PARLEY_REQUEST_TIMEOUT_MS",
    schema: int(1000, 3_600_000),
    default: 120_000,
    doc: "How long a client may take to send a whole request, headers and body (the headers alone: at most 20 s); slower ones get 408. Waiting for the answer, as a /sync long-poll does, does not count.",
  }),
  shutdown_grace_ms: key({
    env: "PARLEY_SHUTDOWN_GRACE_MS",
    schema: int(0, 600_000),
    default: 10_000,
    doc: "On SIGTERM/SIGINT, how long in-flight requests (those whose clients went away included) may take to finish before their connections are closed and the database refuses them. The process exits at most 5 seconds after that.",
  }),
} as const;

/** The host part of a server name or `bind` address: no port, no IPv6 brackets, lower case. */
export function hostOf(nameOrAddress: string): string {
  const bracketed = /^\[([^\]]+)\]/.exec(nameOrAddress);
  if (bracketed) return bracketed[1]!.toLowerCase();
  // A bare IPv6 address (a `bind` value such as ::1) has several colons and no port.
  if ((nameOrAddress.match(/:/g) ?? []).length > 1) return nameOrAddress.toLowerCase();
  return nameOrAddress.replace(/:\d+$/, "").toLowerCase();
}

/** localhost (and *.localhost, RFC 6761), 127.0.0.0/8 and ::1: reachable from this machine only. */
export function isLoopbackHost(host: string): boolean {
  const h = hostOf(host);
  return h === "localhost" || h.endsWith(".localhost") || /^127\.\d+\.\d+\.\d+$/.test(h) || h === "::1" || h === "::ffff:127.0.0.1";
}

/**
 * What clients should use when the operator said nothing: a server named example.org is reached at
 * https://example.org/ (behind the TLS proxy every public deployment has); a loopback name is a
 * development server reached directly on its port.
 */
function defaultPublicBaseurl(serverName: string, port: number): string {
  return isLoopbackHost(serverName) ? `http://localhost:${port}/` : `https://${serverName}/`;
}

type Keys = typeof configKeys;
export type Config = { [K in keyof Keys]: z.output<Keys[K]["schema"]> };

export class ConfigError extends Error {
  override name = "ConfigError";
}

/**
 * Resolves the configuration from a parsed file (may be empty) and the environment; the
 * environment wins. Relative `data_dir` paths are taken from `baseDir`.
 */
export function resolveConfig(
  file: Record<string, unknown>,
  env: Record<string, string | undefined> = process.env,
  baseDir = process.cwd(),
): Config {
  const unknown = Object.keys(file).filter((k) => !(k in configKeys));
  if (unknown.length) throw new ConfigError(`unknown configuration key(s): ${unknown.join(", ")}`);
  const out: Record<string, unknown> = {};
  for (const [name, spec] of Object.entries(configKeys) as [string, KeySpec<z.ZodType>][]) {
    const fromEnv = env[spec.env];
    let raw: unknown = fromEnv !== undefined && fromEnv !== "" ? fromEnv : file[name];
    if (raw === undefined || raw === null) {
      raw = typeof spec.default === "function" ? spec.default(out) : spec.default;
    }
    const parsed = spec.schema.safeParse(raw);
    if (!parsed.success) {
      const from = fromEnv ? `environment variable ${spec.env}` : `key ${name}`;
      throw new ConfigError(`invalid ${from}: ${parsed.error.issues[0]?.message ?? "invalid value"}`);
    }
    out[name] = parsed.data;
  }
  out.data_dir = path.resolve(baseDir, out.data_dir as string);
  return out as Config;
}

/** Reads a YAML configuration file (when given) and applies the environment over it. */
export async function loadConfig(file?: string, env = process.env): Promise<Config> {
  if (!file) return resolveConfig({}, env);
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (err) {
    throw new ConfigError(`cannot read configuration file ${file}: ${(err as Error).message}`);
  }
  let parsed: unknown;
  try {
    parsed = YAML.parse(text) ?? {};
  } catch (err) {
    throw new ConfigError(`configuration file ${file} is not valid YAML: ${(err as Error).message}`);
  }
  if (typeof parsed !== "object" || Array.isArray(parsed)) {
    throw new ConfigError(`configuration file ${file} must be a mapping of keys to values`);
  }
  return resolveConfig(parsed as Record<string, unknown>, env, path.dirname(path.resolve(file)));
}

/** The commented starting file written by `parley generate-config`. */
export function generateConfigFile(): string {
  const lines = [
    "# Parley homeserver configuration (YAML).",
    "# Every key may also be set by the environment variable named beside it, which wins over this file.",
    "# Relative paths are relative to this file's folder.",
    "",
  ];
  for (const [name, spec] of Object.entries(configKeys) as [string, KeySpec<z.ZodType>][]) {
    lines.push(`# ${spec.doc}`, `# Environment: ${spec.env}`);
    const def = typeof spec.default === "function" ? undefined : spec.default;
    if (def === undefined) {
      lines.push(`#${name}: ${spec.example ?? ""}`);
    } else {
      lines.push(`${name}: ${YAML.stringify(def, { collectionStyle: "flow" }).trim()}`);
    }
    lines.push("");
  }
  return lines.join("\n");
}

/** The configuration table of the README, as Markdown. */
export function configTableMarkdown(): string {
  const rows = ["| key | environment | default | meaning |", "| --- | --- | --- | --- |"];
  for (const [name, spec] of Object.entries(configKeys) as [string, KeySpec<z.ZodType>][]) {
    const def =
      typeof spec.default === "function"
        ? "derived"
        : spec.default === undefined
          ? "unset"
          : `\`${JSON.stringify(spec.default)}\``;
    rows.push(`| \`${name}\` | \`${spec.env}\` | ${def} | ${spec.doc.replace(/\|/g, "\\|")} |`);
  }
  return rows.join("\n");
}

/** The configuration with secrets masked, for logging. */
export function redactedConfig(config: Config): Record<string, unknown> {
  const out: Record<string, unknown> = { ...config };
  for (const [name, spec] of Object.entries(configKeys) as [string, KeySpec<z.ZodType>][]) {
    if (spec.secret && out[name] !== undefined) out[name] = "<redacted>";
  }
  return out;
}
