// The suite's Client-Server side: registers users on a server under test (shared-secret
// registration when its secret is given, else open registration) and drives them through a tiny
// client. Only the spec's Client-Server API and Synapse's admin registration endpoint are used, so
// any homeserver can be tested.
// https://spec.matrix.org/latest/client-server-api/#post_matrixclientv3register
// https://element-hq.github.io/synapse/latest/admin_api/register_api.html
import { createHmac, randomBytes } from "node:crypto";
import { type HttpAnswer, type Target, eventually, expectStatus, fail, show } from "./check.ts";

const enc = encodeURIComponent;

/** A plain HTTP call: status, parsed JSON (when JSON) and text. Never throws on an HTTP status. */
export async function httpCall(
  url: string,
  method: string,
  options: { body?: unknown; raw?: string | Uint8Array; headers?: Record<string, string>; signal?: AbortSignal } = {},
): Promise<HttpAnswer> {
  const headers: Record<string, string> = { ...options.headers };
  let body: string | Uint8Array | undefined;
  if (options.raw !== undefined) body = options.raw;
  else if (options.body !== undefined) {
    body = JSON.stringify(options.body);
    headers["Content-Type"] ??= "application/json";
  }
  const res = await fetch(url, { method, headers, body, signal: options.signal ?? AbortSignal.timeout(30_000) });
  const text = await res.text();
  let json: unknown;
  try {
    json = text ? JSON.parse(text) : undefined;
  } catch {
    json = undefined;
  }
  return { status: res.status, json, text };
}

export interface SyncedEvent {
  event_id: string;
  type: string;
  sender: string;
  state_key?: string;
  content: Record<string, any>;
  origin_server_ts?: number;
  unsigned?: Record<string, unknown>;
}

export class ClientUser {
  constructor(
    readonly target: Target,
    readonly userId: string,
    readonly accessToken: string,
    readonly deviceId: string,
  ) {}

  private txn = 0;

  /** An authenticated C-S call; `path` from `/_matrix/...`. */
  call(method: string, path: string, body?: unknown): Promise<HttpAnswer> {
    return httpCall(this.target.url + path, method, { body, headers: { Authorization: `Bearer ${this.accessToken}` } });
  }

  /** Like call(), failing the check unless the answer is 200; returns the JSON. */
  async ok(method: string, path: string, body?: unknown): Promise<any> {
    const res = await this.call(method, path, body);
    expectStatus(res, 200, `${method} ${path.split("?")[0]} as ${this.userId}`);
    return res.json;
  }

  async createRoom(body: Record<string, unknown> = {}): Promise<string> {
    return (await this.ok("POST", "/_matrix/client/v3/createRoom", body)).room_id as string;
  }

  async send(roomId: string, content: Record<string, unknown>, type = "m.room.message"): Promise<string> {
    const path = `/_matrix/client/v3/rooms/${enc(roomId)}/send/${enc(type)}/c${Date.now()}-${++this.txn}`;
    return (await this.ok("PUT", path, content)).event_id as string;
  }

  async setState(roomId: string, type: string, stateKey: string, content: Record<string, unknown>): Promise<string> {
    return (await this.ok("PUT", `/_matrix/client/v3/rooms/${enc(roomId)}/state/${enc(type)}/${enc(stateKey)}`, content)).event_id as string;
  }

  /** The room's current state event of that type and key, or undefined when the server has none (404). */
  async getState(roomId: string, type: string, stateKey = ""): Promise<Record<string, any> | undefined> {
    const res = await this.call("GET", `/_matrix/client/v3/rooms/${enc(roomId)}/state/${enc(type)}/${enc(stateKey)}`);
    if (res.status === 404) return undefined;
    expectStatus(res, 200, `GET state ${type} as ${this.userId}`);
    return res.json;
  }

  async join(roomIdOrAlias: string, via: string[] = []): Promise<string> {
    const q = via.length ? `?${via.map((s) => `server_name=${enc(s)}&via=${enc(s)}`).join("&")}` : "";
    return (await this.ok("POST", `/_matrix/client/v3/join/${enc(roomIdOrAlias)}${q}`, {})).room_id as string;
  }

  async invite(roomId: string, userId: string): Promise<void> {
    await this.ok("POST", `/_matrix/client/v3/rooms/${enc(roomId)}/invite`, { user_id: userId });
  }

  async leave(roomId: string): Promise<void> {
    await this.ok("POST", `/_matrix/client/v3/rooms/${enc(roomId)}/leave`, {});
  }

  /** One /sync (no long-poll unless `timeoutMs`); returns the whole answer. */
  async sync(since?: string, timeoutMs = 0): Promise<any> {
    const q = new URLSearchParams({ timeout: String(timeoutMs) });
    if (since) q.set("since", since);
    return this.ok("GET", `/_matrix/client/v3/sync?${q}`);
  }

  /** The event by ID as this user sees it, or undefined (404). */
  async getEvent(roomId: string, eventId: string): Promise<SyncedEvent | undefined> {
    const res = await this.call("GET", `/_matrix/client/v3/rooms/${enc(roomId)}/event/${enc(eventId)}`);
    if (res.status === 404) return undefined;
    expectStatus(res, 200, `GET event as ${this.userId}`);
    return res.json as SyncedEvent;
  }

  /** The room's latest timeline events (newest last) through /messages. */
  async messages(roomId: string, limit = 50): Promise<SyncedEvent[]> {
    const json = await this.ok("GET", `/_matrix/client/v3/rooms/${enc(roomId)}/messages?dir=b&limit=${limit}`);
    return (json.chunk as SyncedEvent[]).reverse();
  }

  /** Waits until the room's timeline (through /messages) holds an event matching `pred`. */
  async waitForEvent(roomId: string, pred: (e: SyncedEvent) => boolean, what: string, timeoutMs = 10_000): Promise<SyncedEvent> {
    return eventually(
      `${what} in ${this.userId}'s timeline`,
      async () => {
        const res = await this.call("GET", `/_matrix/client/v3/rooms/${enc(roomId)}/messages?dir=b&limit=50`);
        if (res.status !== 200) return undefined;
        return (res.json.chunk as SyncedEvent[]).find(pred);
      },
      timeoutMs,
      200,
    );
  }

  /** Waits until this user is joined to the room (e.g. after a federated join the server runs). */
  async waitForMembership(roomId: string, userId: string, membership: string, timeoutMs = 10_000): Promise<void> {
    await eventually(
      `${userId}'s membership ${membership} in ${roomId} as seen by ${this.userId}`,
      async () => {
        const res = await this.call("GET", `/_matrix/client/v3/rooms/${enc(roomId)}/state/m.room.member/${enc(userId)}`);
        return res.status === 200 && res.json?.membership === membership ? true : undefined;
      },
      timeoutMs,
      200,
    );
  }
}

let counter = 0;

/** A new user on `target`, with a localpart unlikely to collide across runs. */
export async function registerUser(target: Target, label = "user"): Promise<ClientUser> {
  const localpart = `conf-${label.toLowerCase().replace(/[^a-z0-9._=-]/g, "")}-${Date.now().toString(36)}${(++counter).toString(36)}${randomBytes(2).toString("hex")}`;
  const password = randomBytes(12).toString("hex");
  const json = target.sharedSecret
    ? await registerWithSharedSecret(target, localpart, password, target.sharedSecret)
    : await registerOpen(target, localpart, password);
  return new ClientUser(target, json.user_id, json.access_token, json.device_id);
}

async function registerWithSharedSecret(target: Target, localpart: string, password: string, secret: string): Promise<any> {
  const url = `${target.url}/_synapse/admin/v1/register`;
  const nonceRes = await httpCall(url, "GET");
  expectStatus(nonceRes, 200, "shared-secret registration (nonce)");
  const nonce = nonceRes.json.nonce as string;
  const mac = createHmac("sha1", secret).update(`${nonce}\0${localpart}\0${password}\0notadmin`).digest("hex");
  const res = await httpCall(url, "POST", { body: { nonce, username: localpart, password, admin: false, mac } });
  expectStatus(res, 200, "shared-secret registration");
  return res.json;
}

async function registerOpen(target: Target, localpart: string, password: string): Promise<any> {
  const url = `${target.url}/_matrix/client/v3/register`;
  const body = { username: localpart, password, inhibit_login: false };
  let res = await httpCall(url, "POST", { body });
  // User-interactive authentication: complete the dummy stage when the server offers it.
  if (res.status === 401 && res.json?.session) {
    res = await httpCall(url, "POST", { body: { ...body, auth: { type: "m.login.dummy", session: res.json.session } } });
  }
  if (res.status !== 200) {
    fail(`open registration on ${target.url} refused (${res.status} ${show(res.json ?? res.text)}); give --shared-secret`);
  }
  return res.json;
}
