// The suite's own homeserver identity: a server name on loopback, an Ed25519 signing key served at
// /_matrix/key/v2/server, signed (X-Matrix) requests to the servers under test, and rooms joined
// over federation whose state it tracks so that it can build, hash and sign PDUs on it.
//
// It is deliberately not a homeserver: it answers what a target calls back while being tested
// (our key, transactions for rooms we joined, invites of our users, events we sent) and records
// every request, so checks can wait for what the target sent us (`waitFor`).
//
// The targets reach it over plain HTTP on loopback, so they must be told to: for a Parley target,
// `federation_hosts: {"<peer name>": "127.0.0.1:<peer port>"}` and `federation_insecure: ["<peer name>"]`
// (README, "Checking a server's federation").
//
// It uses the pure protocol core (federation/protocol, and the pure X-Matrix signer of
// federation/transport/request-auth.ts), never the server's services.
import { randomBytes } from "node:crypto";
import { type IncomingMessage, type Server, type ServerResponse, createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { selectAuthEvents } from "../federation/protocol/auth-events-selection.ts";
import { computeEventId, referenceHashes } from "../federation/protocol/event-hashes.ts";
import { signEvent } from "../federation/protocol/event-signing.ts";
import { eventReferences, referencedIds } from "../federation/protocol/pdu.ts";
import { stateMapKey, type StateMapKey } from "../federation/protocol/room-state.ts";
import { roomVersionRules, SUPPORTED_ROOM_VERSIONS } from "../federation/protocol/room-versions.ts";
import { type SigningKey, signJson, signingKeyFromSeed } from "../federation/protocol/signing.ts";
import { encodeUnpaddedBase64 } from "../federation/protocol/base64.ts";
import { xMatrixAuthorization } from "../federation/transport/request-auth.ts";
import { type HttpAnswer, type Target, expectStatus, fail, show } from "./check.ts";
import { httpCall } from "./client.ts";

export type Json = Record<string, any>;

/** A request a target sent to the peer. */
export interface ReceivedRequest {
  method: string;
  /** Path and query, as sent. */
  path: string;
  /** The origin named in the X-Matrix Authorization header, if any (not verified). */
  origin?: string;
  body: any;
  at: number;
}

export interface ReceivedTransaction {
  origin: string;
  txnId: string;
  pdus: Json[];
  edus: Json[];
  at: number;
}

export interface PeerRequest {
  method: string;
  /** From `/_matrix/…`, with the query string if any. */
  path: string;
  /** JSON body (signed as content). */
  body?: unknown;
  /** Raw bytes sent instead of `body` (not JSON-encoded); sign `signedContent` then, if anything. */
  raw?: string | Uint8Array;
  /**
   * Authorization: by default an X-Matrix header signed by the peer. `null` sends none; a string
   * is sent as the header verbatim; an object changes what is signed (to craft a wrong signature).
   */
  authorization?: null | string | { origin?: string; destination?: string; key?: SigningKey; method?: string; uri?: string; content?: unknown };
  headers?: Record<string, string>;
  signal?: AbortSignal;
}

export interface PeerOptions {
  /** The peer's server name; default `127.0.0.1:<port>`. */
  serverName?: string;
  /** Port to listen on (0: any free port; the server name must then be derived from it). */
  port?: number;
  bind?: string;
}

type Handler = (req: ReceivedRequest) => Promise<[number, unknown]> | [number, unknown] | undefined;

/** One PDU the peer built: the PDU as sent and its event ID. */
export interface BuiltEvent {
  pdu: Json;
  eventId: string;
}

export interface EventDraft {
  type: string;
  sender: string;
  content: Json;
  state_key?: string;
  /** Default: the room's forward extremities as the peer knows them. */
  prev_events?: string[];
  /** Default: selected from the room's state as the peer knows it (auth events selection). */
  auth_events?: string[];
  origin_server_ts?: number;
  depth?: number;
  /** Extra top-level fields (e.g. `redacts` for room versions before 11). */
  extra?: Json;
}

/** A room the peer joined (or created state for): its version, the events it holds, its state. */
export class PeerRoom {
  readonly events = new Map<string, Json>();
  readonly state = new Map<StateMapKey, string>();
  extremities: string[] = [];
  depth = 0;

  constructor(
    readonly peer: Peer,
    readonly roomId: string,
    readonly version: string,
  ) {}

  /** Records an event: its state entry, and it becomes the (single) forward extremity. */
  add(pdu: Json, options: { state?: boolean; extremity?: boolean } = {}): string {
    const eventId = computeEventId(this.version, pdu);
    this.events.set(eventId, pdu);
    this.peer.events.set(eventId, { pdu, roomId: this.roomId, version: this.version });
    if ((options.state ?? true) && typeof pdu.state_key === "string") this.state.set(stateMapKey(pdu.type, pdu.state_key), eventId);
    if (options.extremity ?? true) this.extremities = [eventId];
    if (typeof pdu.depth === "number") this.depth = Math.max(this.depth, pdu.depth);
    return eventId;
  }

  /** The current state event of (type, stateKey) as the peer knows it. */
  stateEvent(type: string, stateKey = ""): Json | undefined {
    const id = this.state.get(stateMapKey(type, stateKey));
    return id === undefined ? undefined : this.events.get(id);
  }

  stateId(type: string, stateKey = ""): string | undefined {
    return this.state.get(stateMapKey(type, stateKey));
  }

  /**
   * A PDU of this room built on the peer's view of it, hashed and signed by the peer (unless
   * `sign: false`). Not recorded: call `add` once the target accepted it, or use `buildAndAdd`.
   */
  build(draft: EventDraft, options: { sign?: boolean; key?: SigningKey } = {}): BuiltEvent {
    const rules = roomVersionRules(this.version);
    const prevIds = draft.prev_events ?? this.extremities;
    const authIds = draft.auth_events ?? selectAuthEvents(rules, draft, this.state);
    const refs = (ids: string[]) => eventReferences(rules, ids, (id) => {
      const pdu = this.events.get(id);
      return pdu ? referenceHashes(rules, pdu).sha256 : undefined;
    });
    let pdu: Json = {
      room_id: this.roomId,
      type: draft.type,
      sender: draft.sender,
      content: draft.content,
      ...(draft.state_key !== undefined ? { state_key: draft.state_key } : {}),
      origin: this.peer.serverName,
      origin_server_ts: draft.origin_server_ts ?? Date.now(),
      depth: draft.depth ?? this.depth + 1,
      prev_events: refs(prevIds),
      auth_events: refs(authIds),
      ...draft.extra,
    };
    if (rules.eventFormat === "v1") pdu.event_id = `$${randomBytes(12).toString("hex")}:${this.peer.serverName}`;
    if (options.sign !== false) pdu = signEvent(rules, pdu, this.peer.serverName, options.key ?? this.peer.key);
    return { pdu, eventId: computeEventId(rules, pdu) };
  }
}

/** The suite's homeserver identity. Start with `Peer.start()`, stop with `close()`. */
export class Peer {
  readonly key: SigningKey;
  readonly received: ReceivedRequest[] = [];
  readonly transactions: ReceivedTransaction[] = [];
  /** Every event the peer holds, by ID (served at /_matrix/federation/v1/event/{id}). */
  readonly events = new Map<string, { pdu: Json; roomId: string; version: string }>();
  readonly rooms = new Map<string, PeerRoom>();
  private readonly handlers: Array<{ method: string; path: RegExp; handler: Handler }> = [];
  private readonly waiters = new Set<() => void>();

  private constructor(
    private readonly server: Server,
    readonly serverName: string,
    readonly port: number,
  ) {
    this.key = signingKeyFromSeed(randomBytes(32), `ed25519:conf${randomBytes(3).toString("hex")}`);
  }

  static async start(options: PeerOptions = {}): Promise<Peer> {
    const server = createServer();
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(options.port ?? 0, options.bind ?? "127.0.0.1", () => resolve());
    });
    const port = (server.address() as AddressInfo).port;
    const peer = new Peer(server, options.serverName ?? `127.0.0.1:${port}`, port);
    // A target that hangs up mid-request must not take the suite down with an unhandled rejection.
    server.on("request", (req, res) => peer.serve(req, res).catch(() => res.destroy()));
    return peer;
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  /** A user ID on the peer. */
  userId(localpart: string): string {
    return `@${localpart}:${this.serverName}`;
  }

  /** The peer's key document, as served at /_matrix/key/v2/server. */
  keyDocument(): Json {
    return signJson(
      {
        server_name: this.serverName,
        verify_keys: { [this.key.keyId]: { key: encodeUnpaddedBase64(this.key.publicKey) } },
        old_verify_keys: {},
        valid_until_ts: Date.now() + 24 * 3600_000,
      },
      this.serverName,
      this.key,
    );
  }

  /**
   * Answers requests matching `method` and `path` (tested on the path without the query) with
   * `handler` before the built-in answers; the handler returns undefined to pass. Returns a remover.
   */
  route(method: string, path: RegExp, handler: Handler): () => void {
    const entry = { method, path, handler };
    this.handlers.unshift(entry);
    return () => {
      const i = this.handlers.indexOf(entry);
      if (i >= 0) this.handlers.splice(i, 1);
    };
  }

  /**
   * Resolves with the first value `pick` returns for a request the targets sent us (those already
   * received included), or fails after `timeoutMs`.
   */
  waitFor<T>(what: string, pick: (req: ReceivedRequest) => T | undefined, timeoutMs = 10_000): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      let seen = 0;
      const probe = () => {
        for (; seen < this.received.length; seen++) {
          const value = pick(this.received[seen]!);
          if (value !== undefined) {
            done();
            resolve(value);
            return;
          }
        }
      };
      const timer = setTimeout(() => {
        done();
        try {
          fail(`timed out after ${timeoutMs} ms waiting for ${what} from the server under test`);
        } catch (err) {
          reject(err);
        }
      }, timeoutMs);
      const done = () => {
        clearTimeout(timer);
        this.waiters.delete(probe);
      };
      this.waiters.add(probe);
      probe();
    });
  }

  /** Waits for a PDU (in a transaction) matching `pred`. */
  waitForPdu(what: string, pred: (pdu: Json) => boolean, timeoutMs = 10_000): Promise<Json> {
    return this.waitFor(what, (req) => {
      if (req.method !== "PUT" || !req.path.startsWith("/_matrix/federation/v1/send/")) return undefined;
      return (Array.isArray(req.body?.pdus) ? (req.body.pdus as Json[]) : []).find((p) => typeof p === "object" && p !== null && pred(p));
    }, timeoutMs);
  }

  /** Waits for an EDU (in a transaction) matching `pred`. */
  waitForEdu(what: string, pred: (edu: Json) => boolean, timeoutMs = 10_000): Promise<Json> {
    return this.waitFor(what, (req) => {
      if (req.method !== "PUT" || !req.path.startsWith("/_matrix/federation/v1/send/")) return undefined;
      return (Array.isArray(req.body?.edus) ? (req.body.edus as Json[]) : []).find((e) => typeof e === "object" && e !== null && pred(e));
    }, timeoutMs);
  }

  /** The X-Matrix Authorization header for a request to `destination`. */
  authorization(destination: string, method: string, uri: string, content?: unknown, key: SigningKey = this.key, origin = this.serverName): string {
    return xMatrixAuthorization({ method, uri, origin, destination, ...(content !== undefined ? { content } : {}) }, key);
  }

  /** A signed (by default) request to a target's Server-Server API. Never throws on an HTTP status. */
  async request(target: Target, req: PeerRequest): Promise<HttpAnswer> {
    const headers: Record<string, string> = { ...req.headers };
    const a = req.authorization;
    if (typeof a === "string") headers.Authorization = a;
    else if (a !== null) {
      const content = a && "content" in a ? a.content : req.body;
      headers.Authorization = this.authorization(a?.destination ?? target.serverName, a?.method ?? req.method, a?.uri ?? req.path, content, a?.key, a?.origin);
    }
    if (req.raw !== undefined) headers["Content-Type"] ??= "application/json";
    return httpCall(target.url + req.path, req.method, { body: req.body, raw: req.raw, headers, signal: req.signal });
  }

  /** Sends a transaction of PDUs (and EDUs); returns the answer (`pdus`: per-PDU results). */
  async sendTransaction(target: Target, pdus: unknown[], edus: unknown[] = [], txnId = `conf${Date.now()}${randomBytes(3).toString("hex")}`): Promise<HttpAnswer> {
    return this.request(target, {
      method: "PUT",
      path: `/_matrix/federation/v1/send/${encodeURIComponent(txnId)}`,
      body: { origin: this.serverName, origin_server_ts: Date.now(), pdus, edus },
    });
  }

  /**
   * Joins `userId` (one of ours) to a room of `target` over federation (make_join then send_join
   * v2) and tracks the room's state from the answer. Fails the check on any error.
   */
  async join(target: Target, roomId: string, userId: string, versions: readonly string[] = SUPPORTED_ROOM_VERSIONS): Promise<PeerRoom> {
    const enc = encodeURIComponent;
    const ver = versions.map((v) => `ver=${enc(v)}`).join("&");
    const made = await this.request(target, { method: "GET", path: `/_matrix/federation/v1/make_join/${enc(roomId)}/${enc(userId)}?${ver}` });
    expectStatus(made, 200, "make_join");
    const version = (made.json.room_version as string | undefined) ?? "1";
    const template = made.json.event as Json;
    if (typeof template !== "object" || template === null) fail(`make_join answered no event template: ${show(made.json)}`);
    const rules = roomVersionRules(version);
    const unsigned: Json = { ...template, origin: this.serverName, origin_server_ts: Date.now() };
    if (rules.eventFormat === "v1" && typeof unsigned.event_id !== "string") unsigned.event_id = `$${randomBytes(12).toString("hex")}:${this.serverName}`;
    const joinEvent = signEvent(rules, unsigned, this.serverName, this.key);
    const joinId = computeEventId(rules, joinEvent);
    const sent = await this.request(target, { method: "PUT", path: `/_matrix/federation/v2/send_join/${enc(roomId)}/${enc(joinId)}`, body: joinEvent });
    expectStatus(sent, 200, "send_join");
    const room = new PeerRoom(this, roomId, version);
    for (const pdu of [...(sent.json.auth_chain ?? []), ...(sent.json.state ?? [])] as Json[]) room.add(pdu, { extremity: false });
    // A restricted join comes back signed by the resident server too: that is the event in the room.
    const joined = typeof sent.json.event === "object" && sent.json.event !== null ? (sent.json.event as Json) : joinEvent;
    room.add(joined);
    this.rooms.set(roomId, room);
    return room;
  }

  private async serve(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const chunk of req as AsyncIterable<Buffer>) {
      size += chunk.length;
      if (size > 16 * 1024 * 1024) return answer(res, 413, { errcode: "M_TOO_LARGE", error: "too large" });
      chunks.push(chunk);
    }
    let body: unknown;
    try {
      body = chunks.length ? JSON.parse(Buffer.concat(chunks).toString("utf8")) : undefined;
    } catch {
      return answer(res, 400, { errcode: "M_NOT_JSON", error: "not JSON" });
    }
    const auth = req.headers.authorization ?? "";
    const origin = /origin="?([^",]+)"?/.exec(auth)?.[1];
    const received: ReceivedRequest = { method: req.method ?? "GET", path: req.url ?? "/", origin, body, at: Date.now() };
    const pathOnly = received.path.split("?")[0]!;
    this.received.push(received);
    if (received.method === "PUT" && pathOnly.startsWith("/_matrix/federation/v1/send/")) this.recordTransaction(received, pathOnly);
    for (const probe of [...this.waiters]) probe();
    try {
      for (const h of this.handlers) {
        if (h.method !== received.method || !h.path.test(pathOnly)) continue;
        const result = await h.handler(received);
        if (result) return answer(res, result[0], result[1]);
      }
      const [status, json] = this.builtIn(received, pathOnly);
      answer(res, status, json);
    } catch (err) {
      answer(res, 500, { errcode: "M_UNKNOWN", error: (err as Error).message });
    }
  }

  private recordTransaction(req: ReceivedRequest, pathOnly: string): void {
    const b = (req.body ?? {}) as Json;
    const pdus = Array.isArray(b.pdus) ? (b.pdus as Json[]) : [];
    const edus = Array.isArray(b.edus) ? (b.edus as Json[]) : [];
    this.transactions.push({ origin: String(b.origin ?? req.origin), txnId: decodeURIComponent(pathOnly.slice("/_matrix/federation/v1/send/".length)), pdus, edus, at: req.at });
    // What the target sends in rooms we joined moves our view of them forward.
    for (const pdu of pdus) {
      const room = typeof pdu?.room_id === "string" ? this.rooms.get(pdu.room_id) : undefined;
      if (!room) continue;
      try {
        room.add(pdu);
      } catch {
        // An event we cannot compute an ID for is the check's business, not the peer's.
      }
    }
  }

  /** The answers of a server that holds nothing but its key and the events it built. */
  private builtIn(req: ReceivedRequest, path: string): [number, unknown] {
    const m = (re: RegExp) => (req.method === "GET" || req.method === "PUT" || req.method === "POST" ? re.exec(path) : null);
    if (req.method === "GET" && /^\/_matrix\/key\/v2\/server(\/[^/]*)?$/.test(path)) return [200, this.keyDocument()];
    if (req.method === "GET" && path === "/_matrix/federation/v1/version") return [200, { server: { name: "parley-conformance", version: "1" } }];
    if (req.method === "PUT" && path.startsWith("/_matrix/federation/v1/send/")) {
      const pdus = Array.isArray(req.body?.pdus) ? (req.body.pdus as Json[]) : [];
      const results: Json = {};
      for (const pdu of pdus) {
        const room = typeof pdu?.room_id === "string" ? this.rooms.get(pdu.room_id) : undefined;
        try {
          results[computeEventId(room?.version ?? "10", pdu)] = {};
        } catch {
          // An ID we cannot compute cannot be answered for.
        }
      }
      return [200, { pdus: results }];
    }
    // Invites of our users: accept (countersign) them, as a homeserver does before its user decides.
    const invite = m(/^\/_matrix\/federation\/v(1|2)\/invite\/([^/]+)\/([^/]+)$/);
    if (invite && req.method === "PUT") {
      const v2 = invite[1] === "2";
      const event = (v2 ? req.body?.event : req.body) as Json;
      const version = v2 ? String(req.body?.room_version ?? "1") : "1";
      const signed = signEvent(version, event, this.serverName, this.key);
      return v2 ? [200, { event: signed }] : [200, [200, { event: signed }]];
    }
    const event = m(/^\/_matrix\/federation\/v1\/event\/([^/]+)$/);
    if (event && req.method === "GET") {
      const held = this.events.get(decodeURIComponent(event[1]!));
      if (!held) return [404, { errcode: "M_NOT_FOUND", error: "unknown event" }];
      return [200, { origin: this.serverName, origin_server_ts: Date.now(), pdus: [held.pdu] }];
    }
    if (req.method === "POST" && /^\/_matrix\/federation\/v1\/get_missing_events\//.test(path)) return [200, { events: [] }];
    if (req.method === "POST" && path === "/_matrix/federation/v1/user/keys/query") return [200, { device_keys: {} }];
    if (req.method === "POST" && path === "/_matrix/federation/v1/user/keys/claim") return [200, { one_time_keys: {} }];
    const devices = m(/^\/_matrix\/federation\/v1\/user\/devices\/([^/]+)$/);
    if (devices && req.method === "GET") return [200, { user_id: decodeURIComponent(devices[1]!), stream_id: 0, devices: [] }];
    return [404, { errcode: "M_UNRECOGNIZED", error: "not served by the conformance peer" }];
  }
}

function answer(res: ServerResponse, status: number, json: unknown): void {
  const text = JSON.stringify(json);
  res.writeHead(status, { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(text) });
  res.end(text);
}

/** IDs of a PDU's prev_events (either format). */
export function prevIds(pdu: Json): readonly string[] {
  return referencedIds((pdu.prev_events ?? []) as string[]);
}
