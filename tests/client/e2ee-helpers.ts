// Helpers of the E2EE machine's tests: Parley clients with end-to-end encryption on a test server,
// each on its own crypto store (in memory unless given one), on our Olm/Megolm or on libolm.
import { ParleyClient } from "../../client/client.ts";
import { E2EE } from "../../client/crypto/e2ee.ts";
import { type CryptoStore, MemoryCryptoStore } from "../../client/crypto/store.ts";
import type { OlmImplementation } from "../../client/crypto/types.ts";
import type { TimelineEvent } from "../../client/room.ts";

export interface CryptoClient {
  client: ParleyClient;
  e2ee: E2EE;
  store: CryptoStore;
  password: string;
}

const fastSync = { backoff: { initialMs: 50, maxMs: 400 }, pollTimeoutMs: 5_000 };

/** A client with E2EE on `olm` (ours when not given), synced once. */
export async function cryptoClientFor(
  baseUrl: string,
  session: { userId: string; deviceId: string; accessToken: string; password: string },
  olm?: OlmImplementation,
  store: CryptoStore = new MemoryCryptoStore(),
): Promise<CryptoClient> {
  const client = new ParleyClient({ baseUrl, accessToken: session.accessToken, userId: session.userId, deviceId: session.deviceId, sync: fastSync });
  const e2ee = await E2EE.create({ http: client.http, userId: session.userId, deviceId: session.deviceId, store, ...(olm ? { olm } : {}) });
  client.setCrypto(e2ee);
  await client.start();
  return { client, e2ee, store, password: session.password };
}

let counter = 0;
/** Registers a new user and starts an E2EE client for it. */
export async function registerCryptoClient(baseUrl: string, name: string, olm?: OlmImplementation, store?: CryptoStore): Promise<CryptoClient> {
  const password = `pw-${name}-secret`;
  const registered = await ParleyClient.register(baseUrl, `${name}${++counter}${Date.now().toString(36)}`, password);
  return cryptoClientFor(baseUrl, { userId: registered.userId, deviceId: registered.deviceId, accessToken: registered.http.accessToken!, password }, olm, store);
}

/** A new device of the user of `of` (password login), with E2EE. */
export async function newDevice(baseUrl: string, of: CryptoClient, olm?: OlmImplementation): Promise<CryptoClient> {
  const login = await ParleyClient.login(baseUrl, of.client.userId, of.password);
  return cryptoClientFor(baseUrl, { userId: login.userId, deviceId: login.deviceId, accessToken: login.http.accessToken!, password: of.password }, olm);
}

/** Resolves once `check` gives something, checking now and after each sync of `client`. */
export async function untilSynced<T>(client: ParleyClient, what: string, check: () => T | undefined | false | Promise<T | undefined | false>, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise<void>((resolve) => {
      const timer = setTimeout(done, 200);
      function done() {
        clearTimeout(timer);
        client.off("sync", done);
        resolve();
      }
      client.on("sync", done);
    });
  }
}

/** The timeline event of `roomId` with this ID once the client has it (decrypted or not). */
export function timelineEvent(c: CryptoClient, roomId: string, eventId: string): Promise<TimelineEvent> {
  return untilSynced(c.client, `${c.client.userId} receives ${eventId}`, () => c.client.room(roomId)?.timeline.find((e) => e.event_id === eventId));
}

/**
 * The event of `roomId` decrypted, once `c` has its key. Over federation the room event can arrive
 * before the to-device message carrying its key (separate transactions): the event is decrypted again
 * after each sync, as a client does when a room key arrives (E2EE.onRoomKeyReceived).
 */
export async function decryptedEventually(c: CryptoClient, roomId: string, eventId: string): Promise<TimelineEvent> {
  const event = await timelineEvent(c, roomId, eventId);
  if (event.encrypted?.decrypted) return event;
  return untilSynced(c.client, `${c.client.userId} decrypts ${eventId}`, async () => {
    const again = await c.e2ee.decryptRoomEvent(roomId, event);
    return again.encrypted?.decrypted ? again : undefined;
  });
}

/** Waits until `c` sees `userId` joined in `roomId`. */
export function memberJoined(c: CryptoClient, roomId: string, userId: string): Promise<true> {
  return untilSynced(c.client, `${c.client.userId} sees ${userId} joined`, () => c.client.room(roomId)?.members().get(userId)?.membership === "join" || undefined);
}

type Body = Record<string, any>;

/** The key and to-device endpoints of a homeserver, in memory (tests and the benchmark that need no server). */
export class KeyServer {
  readonly deviceKeys = new Map<string, Map<string, Body>>();
  readonly oneTimeKeys = new Map<string, Body[]>();
  readonly inbox = new Map<string, Body[]>();

  /** Takes the to-device events waiting for a device (as its next /sync would). */
  take(userId: string, deviceId: string): Body[] {
    const events = this.inbox.get(`${userId}|${deviceId}`) ?? [];
    this.inbox.delete(`${userId}|${deviceId}`);
    return events;
  }

  httpFor(userId: string, deviceId: string) {
    return {
      request: async (_method: string, path: string, opts?: { body?: unknown }): Promise<any> => this.handle(userId, deviceId, path, (opts?.body ?? {}) as Body),
    } as never;
  }

  handle(userId: string, deviceId: string, path: string, body: Body): Body {
    const me = `${userId}|${deviceId}`;
    if (path === "/_matrix/client/v3/keys/upload") {
      if (body.device_keys) {
        let devices = this.deviceKeys.get(userId);
        if (!devices) this.deviceKeys.set(userId, (devices = new Map()));
        devices.set(deviceId, body.device_keys);
      }
      const list = this.oneTimeKeys.get(me) ?? [];
      for (const [id, key] of Object.entries(body.one_time_keys ?? {})) list.push({ [id]: key });
      this.oneTimeKeys.set(me, list);
      return { one_time_key_counts: { signed_curve25519: list.length } };
    }
    if (path === "/_matrix/client/v3/keys/query") {
      const answer: Body = {};
      for (const user of Object.keys(body.device_keys)) answer[user] = Object.fromEntries(this.deviceKeys.get(user) ?? []);
      return { device_keys: answer };
    }
    if (path === "/_matrix/client/v3/keys/claim") {
      const answer: Body = {};
      for (const [user, devices] of Object.entries<Body>(body.one_time_keys)) {
        answer[user] = {};
        for (const device of Object.keys(devices)) {
          const key = this.oneTimeKeys.get(`${user}|${device}`)?.shift();
          if (key) answer[user][device] = key;
        }
      }
      return { one_time_keys: answer };
    }
    if (path.startsWith("/_matrix/client/v3/sendToDevice/")) {
      const type = decodeURIComponent(path.split("/")[5]!);
      for (const [user, devices] of Object.entries<Body>(body.messages)) {
        for (const [device, content] of Object.entries<Body>(devices)) {
          const key = `${user}|${device}`;
          this.inbox.set(key, [...(this.inbox.get(key) ?? []), { type, sender: userId, content }]);
        }
      }
      return {};
    }
    throw new Error(`the stand-in server has no ${path}`);
  }
}
