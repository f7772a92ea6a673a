// The client's end-to-end encryption machine: the spec's "End-to-end encryption" module
// (https://spec.matrix.org/v1.11/client-server-api/#end-to-end-encryption) on top of an
// OlmImplementation (client/crypto/types.ts). It keeps the device's keys published, tracks the
// devices of the users it encrypts for, sets up Olm sessions (to-device `m.olm.v1.curve25519-aes-sha2`),
// shares Megolm room keys over them (`m.room_key`), encrypts and decrypts room events
// (`m.megolm.v1.aes-sha2`), asks our other devices for missing keys and answers them. Everything it
// learns goes to the CryptoStore first, so a restarted client decrypts what it could before.
//
// The sync loop hands it each /sync response (`processSync`) before the rooms' events; the client
// asks it to decrypt (`decryptRoomEvent`) and encrypt (`encryptRoomEvent`) room events.
import { canonicalJson } from "../../federation/protocol/canonical-json.ts";
import type { ClientCryptoHooks, TimelineEvent } from "../client.ts";
import type { MatrixHttp } from "../http.ts";
import type { CryptoStore } from "./store.ts";
import { DeviceList, type DeviceInfo, MEGOLM_ALGORITHM, OLM_ALGORITHM } from "./device-list.ts";
import { verifyJsonSignature } from "./signed-json.ts";
import { cryptoReady, randomBytes, toBase64 } from "./primitives.ts";
import {
  CrossSigningIdentity,
  type CrossSigningSeeds,
  deviceTrust,
  masterKeyOf,
  signaturesAfterVerification,
  signMasterKeyWithDevice,
  type TrustContext,
  uploadCrossSigningKeys,
  uploadSignatures,
} from "./cross-signing.ts";
import { SasVerification } from "./sas.ts";
import {
  type MegolmInboundSession,
  type MegolmOutboundSession,
  type OlmAccount,
  OlmError,
  type OlmImplementation,
  type OlmMessage,
  type OlmSession,
} from "./types.ts";

export { MEGOLM_ALGORITHM, OLM_ALGORITHM } from "./device-list.ts";

/** What the machine needs of the client's HTTP layer (`MatrixHttp.request`; tests may give less). */
export type E2EEHttp = Pick<MatrixHttp, "request">;

export type { CryptoStore } from "./store.ts";
export type { ClientCryptoHooks, TimelineEvent } from "../client.ts";

export interface E2EEOptions {
  http: E2EEHttp;
  userId: string;
  deviceId: string;
  store: CryptoStore;
  /** Our own Olm/Megolm (client/crypto/implementation.ts) unless given. */
  olm?: OlmImplementation;
  /** Clock for rotation by time (tests). */
  now?: () => number;
}

/** A to-device event after Olm decryption, with where it came from. */
export interface DecryptedToDevice {
  type: string;
  sender: string;
  content: Record<string, unknown>;
  encrypted?: { senderCurve25519: string; senderEd25519: string; senderDevice?: string };
}

// Store namespaces.
const NS_ACCOUNT = "account";
const NS_OLM = "olm_sessions";
const NS_INBOUND = "inbound_group_sessions";
const NS_INBOUND_BY_ID = "inbound_group_session_senders";
const NS_INDICES = "megolm_indices";
const NS_OUTBOUND = "outbound_group_sessions";
const NS_ROOMS = "room_encryption";
const NS_KEY_REQUESTS = "key_requests";
/** Devices told `m.no_olm` (by Curve25519 key): told once, until a session with them is set up. */
const NS_NO_OLM_SENT = "no_olm_sent";
/** `m.room_key.withheld` received, by `roomId|sessionId|sender`: why a session's key did not come. */
const NS_WITHHELD = "withheld_sessions";

const WEEK_MS = 7 * 24 * 3600 * 1000;
/** Sessions Olm keeps per device: the newest win; old ones are dropped past this. */
const MAX_OLM_SESSIONS_PER_DEVICE = 5;
/** Devices per /sendToDevice request (a few hundred kilobytes at most). */
const TO_DEVICE_BATCH = 100;

interface OlmSessionRecord {
  serialized: string;
  lastUsed: number;
}

interface InboundRecord {
  roomId: string;
  senderKey: string;
  /** The sender's Ed25519 key as the Olm message that carried the key claimed it. */
  signingKey: string;
  serialized: string;
  /** Came as m.forwarded_room_key: the original sender is not authenticated by us. */
  forwarded: boolean;
  forwardingChain: string[];
}

interface OutboundRecord {
  serialized: string;
  createdAt: number;
  /** userId → deviceId → the Curve25519 key of the device it was shared with. */
  sharedWith: Record<string, Record<string, string>>;
}

interface KeyRequestRecord {
  requestId: string;
  body: { algorithm: string; room_id: string; sender_key?: string; session_id: string };
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function newTxnId(): string {
  return `parley-e2ee-${Date.now()}-${toBase64(randomBytes(6)).replace(/[+/]/g, "_")}`;
}

/** The OlmError codes of a room event's decryption, as the contract names them. */
function decryptionError(err: unknown): string {
  if (err instanceof OlmError) {
    if (err.code === "BAD_MESSAGE_MAC" || err.code === "BAD_SIGNATURE") return "BAD_MAC";
    return err.code;
  }
  return "BAD_MESSAGE_FORMAT";
}

/** A one-at-a-time queue: key uploads, room key sharing of one room. */
class Serial {
  private tail: Promise<unknown> = Promise.resolve();
  run<T>(fn: () => Promise<T>): Promise<T> {
    const next = this.tail.then(fn, fn);
    this.tail = next.catch(() => {});
    return next;
  }
}

export class E2EE implements ClientCryptoHooks {
  readonly userId: string;
  readonly deviceId: string;
  readonly devices: DeviceList;
  private readonly http: E2EEHttp;
  private readonly store: CryptoStore;
  private readonly olm: OlmImplementation;
  private readonly now: () => number;
  private readonly account: OlmAccount;
  private readonly olmSessions = new Map<string, Array<{ session: OlmSession; lastUsed: number }>>();
  private readonly inbound = new Map<string, { session: MegolmInboundSession; record: InboundRecord }>();
  private readonly outbound = new Map<string, { session: MegolmOutboundSession; record: OutboundRecord }>();
  private readonly roomSettings = new Map<string, Record<string, unknown>>();
  /** Rooms whose outbound session must not be used again (someone left). */
  private readonly discardOutbound = new Set<string>();
  private readonly uploads = new Serial();
  private readonly roomQueues = new Map<string, Serial>();
  private readonly claims = new Map<string, Promise<void>>();
  /** Devices (by Curve25519 key) whose server had no one-time key for us: not asked again before this time. */
  private readonly noKeyUntil = new Map<string, number>();
  /** When each device (by Curve25519 key) last got a new session because its messages did not decrypt. */
  private readonly unwedged = new Map<string, number>();
  /** Tells the application about to-device verification events and the like (set by the client). */
  onToDevice?: (event: DecryptedToDevice) => void;
  /** A Megolm session arrived (m.room_key or m.forwarded_room_key): events of that session may now decrypt. */
  onRoomKeyReceived?: (roomId: string, sessionId: string) => void;
  private readonly roomKeyListeners = new Set<(roomId: string, sessionId: string) => void>();
  /**
   * Another device asks to verify this one (`m.key.verification.request`, or a `start` without one):
   * the application shows it and calls `ready()` (then compares the SAS and `confirm()`s) or `cancel()`.
   */
  onVerificationRequest?: (verification: SasVerification) => void;
  /** The master keys we trust: our own, and other users' we verified (cross-signing). */
  private trust: { ownMasterKey?: string; verifiedMasterKeys: Record<string, string> } = { verifiedMasterKeys: {} };
  /** Our cross-signing private keys, when this device holds them (`bootstrapCrossSigning`, or restored from the store). */
  private crossSigning: CrossSigningIdentity | undefined;
  /**
   * A signature made after a verification could not be published (the server refused it, or the
   * network failed): the verification itself stands, the trust stays local to this device.
   */
  onCrossSigningError?: (err: unknown) => void;
  /** SAS verifications in progress, by transaction ID. */
  private readonly verifications = new Map<string, SasVerification>();
  /** Another of our devices asked for a room key; `forwarded`: whether it got it. */
  onRoomKeyRequest?: (deviceId: string, forwarded: boolean) => void;

  private constructor(opts: E2EEOptions & { olm: OlmImplementation }, account: OlmAccount, devices: DeviceList) {
    this.http = opts.http;
    this.userId = opts.userId;
    this.deviceId = opts.deviceId;
    this.store = opts.store;
    this.olm = opts.olm;
    this.now = opts.now ?? Date.now;
    this.account = account;
    this.devices = devices;
  }

  /**
   * Loads the device's crypto state from the store (or creates the device's keys) and publishes what
   * the server does not have yet: device keys, one-time keys, a fallback key.
   */
  static async create(opts: E2EEOptions): Promise<E2EE> {
    await cryptoReady();
    const olm = opts.olm ?? (await import("./implementation.ts")).parleyOlm;
    const stored = await opts.store.get(NS_ACCOUNT, "account");
    const storedDevice = await opts.store.get(NS_ACCOUNT, "device");
    if (storedDevice && storedDevice !== `${opts.userId}|${opts.deviceId}`) {
      throw new Error(`this crypto store belongs to ${storedDevice.replace("|", "/")}, not ${opts.userId}/${opts.deviceId}`);
    }
    const account = stored ? olm.loadAccount(stored) : olm.newAccount();
    if (!stored) {
      await opts.store.put(NS_ACCOUNT, "account", account.serialize());
      await opts.store.put(NS_ACCOUNT, "device", `${opts.userId}|${opts.deviceId}`);
    }
    const devices = await DeviceList.load(opts.http, opts.store, opts.userId, opts.deviceId);
    devices.ownEd25519 = account.identityKeys().ed25519;
    const machine = new E2EE({ ...opts, olm }, account, devices);
    const trust = await opts.store.get(NS_ACCOUNT, "cross_signing_trust");
    if (trust) machine.trust = JSON.parse(trust) as E2EE["trust"];
    const seeds = await opts.store.get(NS_ACCOUNT, "cross_signing_seeds");
    if (seeds) machine.crossSigning = CrossSigningIdentity.fromSeeds(opts.userId, JSON.parse(seeds) as CrossSigningSeeds);
    for (const [roomId, value] of await opts.store.list(NS_ROOMS)) machine.roomSettings.set(roomId, JSON.parse(value) as Record<string, unknown>);
    await machine.uploads.run(() => machine.uploadKeys(undefined, false));
    return machine;
  }

  identityKeys(): { curve25519: string; ed25519: string } {
    return this.account.identityKeys();
  }

  // ---------------------------------------------------------------- keys on the server

  /** The signed device keys this device publishes. */
  deviceKeys(): Record<string, unknown> {
    const { curve25519, ed25519 } = this.account.identityKeys();
    const unsigned = {
      user_id: this.userId,
      device_id: this.deviceId,
      algorithms: [OLM_ALGORITHM, MEGOLM_ALGORITHM],
      keys: { [`curve25519:${this.deviceId}`]: curve25519, [`ed25519:${this.deviceId}`]: ed25519 },
    };
    return { ...unsigned, signatures: { [this.userId]: { [`ed25519:${this.deviceId}`]: this.account.sign(canonicalJson(unsigned)) } } };
  }

  private signedKey(key: string, fallback: boolean): Record<string, unknown> {
    const unsigned: Record<string, unknown> = fallback ? { key, fallback: true } : { key };
    return { ...unsigned, signatures: { [this.userId]: { [`ed25519:${this.deviceId}`]: this.account.sign(canonicalJson(unsigned)) } } };
  }

  /**
   * Publishes device keys (once), one-time keys up to half the account's maximum when the server has
   * fewer (`serverCount`; undefined: ask the server), and a fallback key when `needFallback`.
   */
  private async uploadKeys(serverCount: number | undefined, needFallback: boolean): Promise<void> {
    const uploaded = (await this.store.get(NS_ACCOUNT, "uploaded")) === "1";
    let count = serverCount;
    if (count === undefined) {
      const res = await this.http.request<{ one_time_key_counts?: Record<string, number> }>("POST", "/_matrix/client/v3/keys/upload", { body: {} });
      count = res.one_time_key_counts?.signed_curve25519 ?? 0;
    }
    const target = Math.floor(this.account.maxNumberOfOneTimeKeys() / 2);
    const pendingKeys = Object.keys(this.account.oneTimeKeys()).length;
    // Keys generated before a crash but never published are uploaded first (they are in the store).
    if (count + pendingKeys < target) this.account.generateOneTimeKeys(target - count - pendingKeys);
    if ((needFallback || !uploaded) && Object.keys(this.account.unpublishedFallbackKey()).length === 0) this.account.generateFallbackKey();
    const oneTimeKeys = this.account.oneTimeKeys();
    const fallbackKeys = this.account.unpublishedFallbackKey();
    if (uploaded && Object.keys(oneTimeKeys).length === 0 && Object.keys(fallbackKeys).length === 0) return;
    // The new keys are stored before they are published: a crash between the two re-publishes them.
    await this.store.put(NS_ACCOUNT, "account", this.account.serialize());
    const body: Record<string, unknown> = {
      one_time_keys: Object.fromEntries(Object.entries(oneTimeKeys).map(([id, key]) => [`signed_curve25519:${id}`, this.signedKey(key, false)])),
    };
    if (Object.keys(fallbackKeys).length > 0) {
      body.fallback_keys = Object.fromEntries(Object.entries(fallbackKeys).map(([id, key]) => [`signed_curve25519:${id}`, this.signedKey(key, true)]));
    }
    if (!uploaded) body.device_keys = this.deviceKeys();
    await this.http.request("POST", "/_matrix/client/v3/keys/upload", { body });
    this.account.markKeysAsPublished();
    await this.store.put(NS_ACCOUNT, "account", this.account.serialize());
    if (!uploaded) await this.store.put(NS_ACCOUNT, "uploaded", "1");
  }

  // ---------------------------------------------------------------- /sync

  async processSync(sync: any): Promise<Array<Record<string, unknown>>> {
    if (!isObject(sync)) return [];
    const deviceLists = isObject(sync.device_lists) ? sync.device_lists : {};
    const changed = Array.isArray(deviceLists.changed) ? deviceLists.changed.filter((u): u is string => typeof u === "string") : [];
    const left = Array.isArray(deviceLists.left) ? deviceLists.left.filter((u): u is string => typeof u === "string") : [];
    await this.devices.invalidate(changed);
    await this.devices.stopTracking(left);
    await this.takeRoomSettings(sync);

    const unconsumed: Array<Record<string, unknown>> = [];
    const toDevice = isObject(sync.to_device) && Array.isArray(sync.to_device.events) ? sync.to_device.events : [];
    for (const raw of toDevice) {
      if (!isObject(raw) || typeof raw.type !== "string" || typeof raw.sender !== "string" || !isObject(raw.content)) continue;
      const event = await this.processToDevice(raw as { type: string; sender: string; content: Record<string, unknown> });
      if (event) unconsumed.push(event);
    }

    // Replenish keys after the to-device events: a pre-key message just used one of them.
    const counts = isObject(sync.device_one_time_keys_count) ? sync.device_one_time_keys_count : undefined;
    const fallbackTypes = Array.isArray(sync.device_unused_fallback_key_types) ? sync.device_unused_fallback_key_types : undefined;
    const count = counts ? (typeof counts.signed_curve25519 === "number" ? counts.signed_curve25519 : 0) : undefined;
    const needFallback = fallbackTypes !== undefined && !fallbackTypes.includes("signed_curve25519");
    const target = Math.floor(this.account.maxNumberOfOneTimeKeys() / 2);
    if ((count !== undefined && count < target) || needFallback) {
      await this.uploads.run(() => this.uploadKeys(count, needFallback)).catch(() => {
        // Retried at the next sync (the counts will still be low).
      });
    }
    return unconsumed;
  }

  /** m.room.encryption state of the rooms in a sync response: the rotation settings of their outbound sessions. */
  private async takeRoomSettings(sync: Record<string, unknown>): Promise<void> {
    const rooms = isObject(sync.rooms) ? sync.rooms : {};
    for (const section of ["join", "leave"]) {
      const byRoom = isObject(rooms[section]) ? (rooms[section] as Record<string, unknown>) : {};
      for (const [roomId, room] of Object.entries(byRoom)) {
        if (!isObject(room)) continue;
        const events = [
          ...(isObject(room.state) && Array.isArray(room.state.events) ? room.state.events : []),
          ...(isObject(room.timeline) && Array.isArray(room.timeline.events) ? room.timeline.events : []),
        ];
        for (const event of events) {
          if (!isObject(event) || event.type !== "m.room.encryption" || event.state_key !== "" || !isObject(event.content)) continue;
          await this.setRoomEncryption(roomId, event.content);
        }
      }
    }
  }

  /** The room's m.room.encryption content (its rotation settings); the client may call it too. */
  async setRoomEncryption(roomId: string, content: Record<string, unknown>): Promise<void> {
    // Once a room is encrypted it stays so (spec: clients ignore a later change of algorithm).
    const previous = this.roomSettings.get(roomId);
    if (previous && previous.algorithm === MEGOLM_ALGORITHM && content.algorithm !== MEGOLM_ALGORITHM) return;
    this.roomSettings.set(roomId, content);
    await this.store.put(NS_ROOMS, roomId, JSON.stringify(content));
  }

  onMembershipChange(roomId: string, _userId: string, membership: string): void {
    if (membership !== "join" && membership !== "invite") this.discardOutbound.add(roomId);
  }

  // ---------------------------------------------------------------- to-device (Olm)

  private async processToDevice(event: { type: string; sender: string; content: Record<string, unknown> }): Promise<Record<string, unknown> | undefined> {
    if (event.type !== "m.room.encrypted") {
      if (event.type === "m.room_key_request") {
        await this.handleRoomKeyRequest(event.sender, event.content);
        return undefined;
      }
      if (event.type === "m.room_key.withheld") {
        await this.onWithheld(event.sender, event.content);
        return undefined;
      }
      if (event.type.startsWith("m.key.verification.") && (await this.handleVerification(event.sender, event.type, event.content))) return undefined;
      this.onToDevice?.(event);
      return event;
    }
    let decrypted: DecryptedToDevice;
    try {
      const result = await this.decryptOlm(event.sender, event.content);
      if (!result) return undefined; // not addressed to this device
      decrypted = result;
    } catch (err) {
      return { ...event, decryption_error: err instanceof OlmError ? err.code : String((err as Error).message ?? err) };
    }
    switch (decrypted.type) {
      case "m.room_key":
        await this.onRoomKey(decrypted, false);
        return undefined;
      case "m.forwarded_room_key":
        await this.onRoomKey(decrypted, true);
        return undefined;
      case "m.room_key_request":
        await this.handleRoomKeyRequest(decrypted.sender, decrypted.content);
        return undefined;
      case "m.room_key.withheld": // in the clear as the spec sends it, or over Olm as some clients may
        await this.onWithheld(decrypted.sender, decrypted.content);
        return undefined;
      case "m.dummy":
        return undefined;
    }
    if (decrypted.type.startsWith("m.key.verification.") && (await this.handleVerification(decrypted.sender, decrypted.type, decrypted.content))) return undefined;
    this.onToDevice?.(decrypted);
    return decrypted as unknown as Record<string, unknown>;
  }

  private async olmSessionsOf(curveKey: string): Promise<Array<{ session: OlmSession; lastUsed: number }>> {
    let sessions = this.olmSessions.get(curveKey);
    if (!sessions) {
      const stored = await this.store.get(NS_OLM, curveKey);
      const records = stored ? (JSON.parse(stored) as OlmSessionRecord[]) : [];
      // Another call may have filled the cache while the store answered.
      sessions = this.olmSessions.get(curveKey) ?? records.map((r) => ({ session: this.olm.loadSession(r.serialized), lastUsed: r.lastUsed }));
      this.olmSessions.set(curveKey, sessions);
    }
    return sessions;
  }

  private async saveOlmSessions(curveKey: string): Promise<void> {
    const sessions = this.olmSessions.get(curveKey) ?? [];
    sessions.sort((a, b) => b.lastUsed - a.lastUsed);
    sessions.splice(MAX_OLM_SESSIONS_PER_DEVICE);
    const records: OlmSessionRecord[] = sessions.map((s) => ({ serialized: s.session.serialize(), lastUsed: s.lastUsed }));
    await this.store.put(NS_OLM, curveKey, JSON.stringify(records));
  }

  /**
   * Decrypts an `m.olm.v1.curve25519-aes-sha2` to-device message and checks its payload: the sender,
   * the recipient and recipient_keys are who they must be, and the sender's claimed Ed25519 key is the
   * one of the device we know with that Curve25519 key. Undefined when it is not for this device.
   */
  private async decryptOlm(sender: string, content: Record<string, unknown>): Promise<DecryptedToDevice | undefined> {
    if (content.algorithm !== OLM_ALGORITHM) throw new OlmError("BAD_MESSAGE_FORMAT", `unsupported algorithm ${String(content.algorithm)}`);
    const senderKey = content.sender_key;
    const own = this.account.identityKeys();
    const ciphertext = isObject(content.ciphertext) ? content.ciphertext[own.curve25519] : undefined;
    if (typeof senderKey !== "string" || !isObject(ciphertext)) return undefined;
    if ((ciphertext.type !== 0 && ciphertext.type !== 1) || typeof ciphertext.body !== "string") throw new OlmError("BAD_MESSAGE_FORMAT", "malformed Olm message");
    const message: OlmMessage = { type: ciphertext.type, body: ciphertext.body };

    const sessions = await this.olmSessionsOf(senderKey);
    let plaintext: string | undefined;
    for (const entry of sessions) {
      // A pre-key message belongs to the one session it started; trying others would only fail.
      if (message.type === 0 && !entry.session.matchesInboundSession(message.body)) continue;
      try {
        plaintext = entry.session.decrypt(message);
        entry.lastUsed = this.now();
        break;
      } catch (err) {
        // A pre-key message of a session we have, that no longer decrypts, is a replay: no new session.
        if (message.type === 0) throw err;
      }
    }
    if (plaintext === undefined) {
      if (message.type !== 0) {
        await this.unwedge(sender, senderKey).catch(() => {});
        throw new OlmError("BAD_MESSAGE_MAC", "no Olm session with this device decrypts the message");
      }
      const created = this.account.createInboundSession(senderKey, message.body);
      plaintext = created.plaintext;
      sessions.push({ session: created.session, lastUsed: this.now() });
      // The one-time key it used is gone from the account: store both together.
      await this.store.put(NS_ACCOUNT, "account", this.account.serialize());
    }
    await this.saveOlmSessions(senderKey);

    let payload: Record<string, unknown>;
    try {
      const parsed: unknown = JSON.parse(plaintext);
      if (!isObject(parsed)) throw new Error("not an object");
      payload = parsed;
    } catch {
      throw new OlmError("BAD_MESSAGE_FORMAT", "the Olm payload is not a JSON object");
    }
    const recipientKeys = isObject(payload.recipient_keys) ? payload.recipient_keys : {};
    const keys = isObject(payload.keys) ? payload.keys : {};
    if (payload.sender !== sender) throw new OlmError("BAD_MESSAGE_FORMAT", "the Olm payload names another sender");
    if (payload.recipient !== this.userId) throw new OlmError("BAD_MESSAGE_FORMAT", "the Olm payload is for another user");
    if (recipientKeys.ed25519 !== own.ed25519) throw new OlmError("BAD_MESSAGE_FORMAT", "the Olm payload is for another device");
    if (typeof keys.ed25519 !== "string" || typeof payload.type !== "string" || !isObject(payload.content)) throw new OlmError("BAD_MESSAGE_FORMAT", "malformed Olm payload");
    const device = this.devices.deviceByCurveKey(sender, senderKey);
    if (device && device.ed25519 !== keys.ed25519) throw new OlmError("BAD_MESSAGE_FORMAT", "the Olm payload claims another Ed25519 key than the sending device's");
    return {
      type: payload.type,
      sender,
      content: payload.content,
      encrypted: { senderCurve25519: senderKey, senderEd25519: keys.ed25519, senderDevice: device?.deviceId },
    };
  }

  /**
   * A device sent us an Olm message no session of ours decrypts: its session with us is "wedged"
   * (we lost ours, e.g. restored an old store). The spec's recovery: a new session from a fresh
   * one-time key and an `m.dummy` over it, so the other side starts using the new session. At most
   * once an hour per device, so a hostile device cannot make us drain one-time keys.
   */
  private async unwedge(userId: string, curveKey: string): Promise<void> {
    const last = this.unwedged.get(curveKey);
    if (last !== undefined && this.now() - last < 3600_000) return;
    this.unwedged.set(curveKey, this.now());
    await this.devices.ensureUpToDate([userId]);
    const device = this.devices.deviceByCurveKey(userId, curveKey);
    if (!device) return;
    await this.ensureOlmSessions([device], true);
    await this.sendOlm([device], "m.dummy", () => ({}));
  }

  /** Sessions for these devices: existing ones, or new ones from claimed one-time keys (signature checked); `fresh`: a new one regardless. */
  private async ensureOlmSessions(devices: DeviceInfo[], fresh = false): Promise<void> {
    const missing: DeviceInfo[] = [];
    for (const device of devices) {
      const pending = this.claims.get(device.curve25519);
      if (pending) await pending;
      // A device without keys on its server is asked again after a minute, not on every message.
      if ((this.noKeyUntil.get(device.curve25519) ?? 0) > this.now()) continue;
      if (fresh || (await this.olmSessionsOf(device.curve25519)).length === 0) missing.push(device);
    }
    if (missing.length === 0) return;
    const claim = (async () => {
      const request: Record<string, Record<string, string>> = {};
      for (const d of missing) (request[d.userId] ??= {})[d.deviceId] = "signed_curve25519";
      const res = await this.http.request<{ one_time_keys?: Record<string, Record<string, Record<string, unknown>>> }>("POST", "/_matrix/client/v3/keys/claim", {
        body: { one_time_keys: request, timeout: 10_000 },
      });
      for (const device of missing) {
        const claimed = res.one_time_keys?.[device.userId]?.[device.deviceId];
        if (!isObject(claimed)) {
          this.noKeyUntil.set(device.curve25519, this.now() + 60_000);
          continue;
        }
        for (const [keyId, value] of Object.entries(claimed)) {
          if (!keyId.startsWith("signed_curve25519:") || !isObject(value) || typeof value.key !== "string") continue;
          if (!verifyJsonSignature(value, device.userId, `ed25519:${device.deviceId}`, device.ed25519)) continue;
          const session = this.account.createOutboundSession(device.curve25519, value.key);
          (await this.olmSessionsOf(device.curve25519)).push({ session, lastUsed: this.now() });
          await this.saveOlmSessions(device.curve25519);
          // A session exists again: should it be lost later, the device is told again.
          await this.store.delete(NS_NO_OLM_SENT, device.curve25519);
          break;
        }
      }
    })();
    for (const d of missing) this.claims.set(d.curve25519, claim);
    try {
      await claim;
    } finally {
      for (const d of missing) if (this.claims.get(d.curve25519) === claim) this.claims.delete(d.curve25519);
    }
  }

  /** The `m.room.encrypted` to-device content carrying `type`/`content` to `device` (its Olm session must exist). */
  private async encryptOlm(device: DeviceInfo, type: string, content: Record<string, unknown>): Promise<Record<string, unknown> | undefined> {
    const sessions = await this.olmSessionsOf(device.curve25519);
    // The most recently used session: the one the other side most likely also uses.
    const entry = [...sessions].sort((a, b) => b.lastUsed - a.lastUsed)[0];
    if (!entry) return undefined;
    const own = this.account.identityKeys();
    const payload = {
      type,
      content,
      sender: this.userId,
      sender_device: this.deviceId,
      keys: { ed25519: own.ed25519 },
      recipient: device.userId,
      recipient_keys: { ed25519: device.ed25519 },
    };
    const message = entry.session.encrypt(JSON.stringify(payload));
    entry.lastUsed = this.now();
    await this.saveOlmSessions(device.curve25519);
    return { algorithm: OLM_ALGORITHM, sender_key: own.curve25519, ciphertext: { [device.curve25519]: message } };
  }

  /** Sends Olm-encrypted to-device messages (one content per device), in batches. */
  private async sendOlm(devices: DeviceInfo[], type: string, contentFor: (device: DeviceInfo) => Record<string, unknown>): Promise<DeviceInfo[]> {
    await this.ensureOlmSessions(devices);
    const sent: DeviceInfo[] = [];
    for (let i = 0; i < devices.length; i += TO_DEVICE_BATCH) {
      const messages: Record<string, Record<string, Record<string, unknown>>> = {};
      const batch: DeviceInfo[] = [];
      for (const device of devices.slice(i, i + TO_DEVICE_BATCH)) {
        const encrypted = await this.encryptOlm(device, type, contentFor(device));
        if (!encrypted) continue; // no one-time key could be claimed: the device gets nothing
        (messages[device.userId] ??= {})[device.deviceId] = encrypted;
        batch.push(device);
      }
      if (batch.length === 0) continue;
      await this.http.request("PUT", `/_matrix/client/v3/sendToDevice/m.room.encrypted/${encodeURIComponent(newTxnId())}`, { body: { messages } });
      sent.push(...batch);
    }
    return sent;
  }

  /**
   * `m.room_key.withheld` with `m.no_olm` to devices we could not set up an Olm session with (no
   * one-time or fallback key on their server), in the clear (there is no channel): once per device,
   * not per room key, and not again until a session with it was set up (the spec's rule, so their
   * mailbox does not fill). Their clients show why our messages do not decrypt, and may set up a
   * session with us and tell us with an `m.dummy`.
   */
  private async tellNoOlm(devices: DeviceInfo[]): Promise<void> {
    const untold: DeviceInfo[] = [];
    for (const d of devices) if (!(await this.store.get(NS_NO_OLM_SENT, d.curve25519))) untold.push(d);
    if (untold.length === 0) return;
    const content = {
      code: "m.no_olm",
      reason: "Unable to establish a secure channel.",
      algorithm: MEGOLM_ALGORITHM,
      sender_key: this.account.identityKeys().curve25519,
      from_device: this.deviceId,
    };
    await this.sendWithheld(untold.map((d) => [d, content] as const));
    for (const d of untold) await this.store.put(NS_NO_OLM_SENT, d.curve25519, String(this.now()));
  }

  /** Sends `m.room_key.withheld` contents (in the clear, as the spec sends them) to devices, in batches. */
  private async sendWithheld(items: ReadonlyArray<readonly [DeviceInfo, Record<string, unknown>]>): Promise<void> {
    for (let i = 0; i < items.length; i += TO_DEVICE_BATCH) {
      const messages: Record<string, Record<string, Record<string, unknown>>> = {};
      for (const [d, content] of items.slice(i, i + TO_DEVICE_BATCH)) (messages[d.userId] ??= {})[d.deviceId] = content;
      await this.http.request("PUT", `/_matrix/client/v3/sendToDevice/m.room_key.withheld/${encodeURIComponent(newTxnId())}`, { body: { messages } });
    }
  }

  /**
   * An `m.room_key.withheld` for us: a room key's sender tells why we did not get it. Kept, so a
   * message of that session reports the reason (`withheld` beside `UNKNOWN_SESSION`). `m.no_olm`
   * names no session: we set up a session with that device ourselves and tell it with an `m.dummy`
   * (at most once an hour per device), so its next room keys reach us.
   */
  private async onWithheld(sender: string, content: Record<string, unknown>): Promise<void> {
    const code = content.code;
    if (typeof code !== "string" || code.length > 255) return;
    if (code === "m.no_olm") {
      if (typeof content.sender_key === "string") await this.unwedge(sender, content.sender_key).catch(() => {});
      return;
    }
    if (typeof content.room_id !== "string" || typeof content.session_id !== "string" || content.session_id.length > 255) return;
    // Only for our encrypted rooms (anyone may send us to-device messages: the store stays bounded
    // by what we take part in), and kept under who said it: only the event's sender, or our own
    // device answering our key request, is believed when a message of that session fails.
    if (!this.roomSettings.has(content.room_id)) return;
    const record = { code, ...(typeof content.reason === "string" ? { reason: content.reason.slice(0, 500) } : {}) };
    await this.store.put(NS_WITHHELD, `${content.room_id}|${content.session_id}|${sender}`, JSON.stringify(record));
  }

  /** Sends `type`/`content` Olm-encrypted to one device of ours or another user's (SAS, key forwarding). */
  async sendEncryptedToDevice(userId: string, deviceId: string, type: string, content: Record<string, unknown>): Promise<boolean> {
    await this.devices.ensureUpToDate([userId]);
    const device = this.devices.device(userId, deviceId);
    if (!device) return false;
    return (await this.sendOlm([device], type, () => content)).length === 1;
  }

  // ---------------------------------------------------------------- Megolm: receiving keys

  private inboundKey(roomId: string, senderKey: string, sessionId: string): string {
    return `${roomId}|${senderKey}|${sessionId}`;
  }

  private async getInbound(roomId: string, senderKey: string | undefined, sessionId: string): Promise<{ session: MegolmInboundSession; record: InboundRecord } | undefined> {
    // Events of recent clients leave out the deprecated sender_key: the session ID finds the sender.
    const sender = senderKey ?? (await this.store.get(NS_INBOUND_BY_ID, `${roomId}|${sessionId}`));
    if (!sender) return undefined;
    const key = this.inboundKey(roomId, sender, sessionId);
    const cached = this.inbound.get(key);
    if (cached) return cached;
    const stored = await this.store.get(NS_INBOUND, key);
    if (!stored) return undefined;
    const record = JSON.parse(stored) as InboundRecord;
    const entry = this.inbound.get(key) ?? { session: this.olm.loadInboundGroupSession(record.serialized), record };
    this.inbound.set(key, entry);
    return entry;
  }

  private async saveInbound(session: MegolmInboundSession, record: InboundRecord): Promise<void> {
    const sessionId = session.sessionId();
    const key = this.inboundKey(record.roomId, record.senderKey, sessionId);
    record.serialized = session.serialize();
    this.inbound.set(key, { session, record });
    await this.store.put(NS_INBOUND, key, JSON.stringify(record));
    await this.store.put(NS_INBOUND_BY_ID, `${record.roomId}|${sessionId}`, record.senderKey);
  }

  private async onRoomKey(event: DecryptedToDevice, forwarded: boolean): Promise<void> {
    const c = event.content;
    if (c.algorithm !== MEGOLM_ALGORITHM || typeof c.room_id !== "string" || typeof c.session_id !== "string" || typeof c.session_key !== "string") return;
    const olmInfo = event.encrypted!;
    let senderKey = olmInfo.senderCurve25519;
    let signingKey = olmInfo.senderEd25519;
    let chain: string[] = [];
    if (forwarded) {
      // Forwarded keys are taken only from our own verified devices, and only when we asked.
      if (event.sender !== this.userId) return;
      const device = olmInfo.senderDevice ? this.devices.device(this.userId, olmInfo.senderDevice) : undefined;
      if (!device || !this.isVerified(device)) return;
      const request = await this.store.get(NS_KEY_REQUESTS, `${c.room_id}|${c.session_id}`);
      if (!request) return;
      if (typeof c.sender_key !== "string" || typeof c.sender_claimed_ed25519_key !== "string") return;
      senderKey = c.sender_key;
      signingKey = c.sender_claimed_ed25519_key;
      chain = [...(Array.isArray(c.forwarding_curve25519_key_chain) ? c.forwarding_curve25519_key_chain.filter((k): k is string => typeof k === "string") : []), olmInfo.senderCurve25519];
    }
    let session: MegolmInboundSession;
    try {
      session = forwarded ? this.olm.importInboundGroupSession(c.session_key) : this.olm.inboundGroupSessionFromKey(c.session_key);
    } catch {
      return; // a malformed or badly signed session key
    }
    if (session.sessionId() !== c.session_id) return;
    const existing = await this.getInbound(c.room_id, senderKey, c.session_id);
    // Keep what we have unless the new copy decrypts earlier messages, or comes from the sender itself
    // where ours was forwarded. A copy that claims another signing key is never taken.
    if (existing) {
      const earlier = session.firstKnownIndex() < existing.session.firstKnownIndex();
      const authenticated = existing.record.forwarded && !forwarded && session.firstKnownIndex() <= existing.session.firstKnownIndex();
      if ((!earlier && !authenticated) || existing.record.signingKey !== signingKey) return;
    }
    await this.saveInbound(session, { roomId: c.room_id, senderKey, signingKey, serialized: "", forwarded: existing ? existing.record.forwarded && forwarded : forwarded, forwardingChain: chain });
    await this.cancelKeyRequest(c.room_id, c.session_id);
    this.onRoomKeyReceived?.(c.room_id, c.session_id);
    for (const listener of this.roomKeyListeners) listener(c.room_id, c.session_id);
  }

  /** Also told when a Megolm session arrives (the client re-decrypts the events that waited for it). */
  addRoomKeyListener(listener: (roomId: string, sessionId: string) => void): () => void {
    this.roomKeyListeners.add(listener);
    return () => this.roomKeyListeners.delete(listener);
  }

  // ---------------------------------------------------------------- Megolm: key requests

  /** Asks our other devices for a session we lack (`m.room_key_request`, sent once per session). */
  private async requestKey(roomId: string, senderKey: string | undefined, sessionId: string): Promise<void> {
    const key = `${roomId}|${sessionId}`;
    if (await this.store.get(NS_KEY_REQUESTS, key)) return;
    const record: KeyRequestRecord = {
      requestId: toBase64(randomBytes(12)),
      body: { algorithm: MEGOLM_ALGORITHM, room_id: roomId, session_id: sessionId, ...(senderKey ? { sender_key: senderKey } : {}) },
    };
    await this.store.put(NS_KEY_REQUESTS, key, JSON.stringify(record));
    const content = { action: "request", body: record.body, request_id: record.requestId, requesting_device_id: this.deviceId };
    await this.http.request("PUT", `/_matrix/client/v3/sendToDevice/m.room_key_request/${encodeURIComponent(newTxnId())}`, {
      body: { messages: { [this.userId]: { "*": content } } },
    });
  }

  private async cancelKeyRequest(roomId: string, sessionId: string): Promise<void> {
    const key = `${roomId}|${sessionId}`;
    const stored = await this.store.get(NS_KEY_REQUESTS, key);
    if (!stored) return;
    const record = JSON.parse(stored) as KeyRequestRecord;
    await this.store.delete(NS_KEY_REQUESTS, key);
    // Our devices' answers to it (m.room_key.withheld) are stale once it is cancelled.
    await this.store.delete(NS_WITHHELD, `${roomId}|${sessionId}|${this.userId}`);
    const content = { action: "request_cancellation", request_id: record.requestId, requesting_device_id: this.deviceId };
    await this.http
      .request("PUT", `/_matrix/client/v3/sendToDevice/m.room_key_request/${encodeURIComponent(newTxnId())}`, { body: { messages: { [this.userId]: { "*": content } } } })
      .catch(() => {});
  }

  /** Answers another of our devices' key request, when that device is verified and we hold the session. */
  private async handleRoomKeyRequest(sender: string, content: Record<string, unknown>): Promise<void> {
    if (sender !== this.userId || content.action !== "request" || content.requesting_device_id === this.deviceId) return;
    if (typeof content.requesting_device_id !== "string" || !isObject(content.body)) return;
    const body = content.body;
    if (body.algorithm !== MEGOLM_ALGORITHM || typeof body.room_id !== "string" || typeof body.session_id !== "string") return;
    const requester = content.requesting_device_id;
    await this.devices.ensureUpToDate([this.userId]).catch(() => {});
    const device = this.devices.device(this.userId, requester);
    const found = await this.getInbound(body.room_id, typeof body.sender_key === "string" ? body.sender_key : undefined, body.session_id);
    const verified = device !== undefined && this.isVerified(device);
    if (!device || !verified || !found) {
      this.onRoomKeyRequest?.(requester, false);
      // A known device of ours is told why (the spec's codes): not verified, or we lack the key.
      if (device) {
        const code = verified ? "m.unavailable" : "m.unverified";
        const withheld = {
          code,
          reason: code === "m.unverified" ? "The requesting device is not verified." : "This device does not have the key.",
          algorithm: MEGOLM_ALGORITHM,
          room_id: body.room_id,
          session_id: body.session_id,
          sender_key: found?.record.senderKey ?? (typeof body.sender_key === "string" ? body.sender_key : ""),
          from_device: this.deviceId,
        };
        await this.sendWithheld([[device, withheld]]).catch(() => {});
      }
      return;
    }
    const { session, record } = found;
    const sent = await this.sendOlm([device], "m.forwarded_room_key", () => ({
      algorithm: MEGOLM_ALGORITHM,
      room_id: record.roomId,
      sender_key: record.senderKey,
      session_id: session.sessionId(),
      session_key: session.exportAt(session.firstKnownIndex()),
      sender_claimed_ed25519_key: record.signingKey,
      forwarding_curve25519_key_chain: record.forwardingChain,
    })).catch(() => []);
    this.onRoomKeyRequest?.(requester, sent.length === 1);
  }

  /** Cancels every key request still open (they may be made again). */
  async cancelKeyRequests(): Promise<void> {
    for (const [key] of await this.store.list(NS_KEY_REQUESTS)) {
      const [roomId, sessionId] = key.split("|") as [string, string];
      await this.cancelKeyRequest(roomId, sessionId);
    }
  }

  // ---------------------------------------------------------------- Megolm: room events

  async decryptRoomEvent(roomId: string, event: TimelineEvent): Promise<TimelineEvent> {
    const failed = (error: string): TimelineEvent => ({ ...event, encrypted: { decrypted: false, error } });
    try {
      const c = event.content;
      if (c.algorithm !== MEGOLM_ALGORITHM) return failed("UNSUPPORTED_ALGORITHM");
      if (typeof c.session_id !== "string" || typeof c.ciphertext !== "string") return failed("BAD_MESSAGE_FORMAT");
      const senderKey = typeof c.sender_key === "string" ? c.sender_key : undefined;
      const found = await this.getInbound(roomId, senderKey, c.session_id);
      if (!found) {
        await this.requestKey(roomId, senderKey, c.session_id).catch(() => {});
        // Said by the event's sender, or by our own device answering our key request.
        const withheld =
          (await this.store.get(NS_WITHHELD, `${roomId}|${c.session_id}|${event.sender}`)) ?? (await this.store.get(NS_WITHHELD, `${roomId}|${c.session_id}|${this.userId}`));
        if (withheld) {
          const w = JSON.parse(withheld) as { code: string; reason?: string };
          return { ...event, encrypted: { decrypted: false, error: "UNKNOWN_SESSION", withheld: { code: w.code, ...(w.reason ? { reason: w.reason } : {}) } } };
        }
        return failed("UNKNOWN_SESSION");
      }
      const { session, record } = found;
      let result: { plaintext: string; messageIndex: number };
      try {
        result = session.decrypt(c.ciphertext);
      } catch (err) {
        if (err instanceof OlmError && err.code === "UNKNOWN_MESSAGE_INDEX") await this.requestKey(roomId, record.senderKey, c.session_id).catch(() => {});
        return failed(decryptionError(err));
      }
      // Replay protection: one message index is one event. The same index under another event ID or
      // timestamp is a replayed ciphertext (spec: "Protection against replay attacks").
      const indexKey = `${this.inboundKey(roomId, record.senderKey, c.session_id)}|${result.messageIndex}`;
      const seen = await this.store.get(NS_INDICES, indexKey);
      const mark = JSON.stringify([event.event_id, event.origin_server_ts]);
      if (seen && seen !== mark) return failed("REPLAYED_INDEX");
      if (!seen) await this.store.put(NS_INDICES, indexKey, mark);

      let payload: unknown;
      try {
        payload = JSON.parse(result.plaintext);
      } catch {
        return failed("BAD_MESSAGE_FORMAT");
      }
      if (!isObject(payload) || typeof payload.type !== "string" || !isObject(payload.content)) return failed("BAD_MESSAGE_FORMAT");
      // A ciphertext copied from another room decrypts (same session) but must not be shown here.
      if (payload.room_id !== roomId) return failed("ROOM_MISMATCH");

      const content: Record<string, unknown> = { ...payload.content };
      // Relations travel in the clear (spec: m.relates_to stays unencrypted) so servers can aggregate them.
      if (isObject(c["m.relates_to"]) && content["m.relates_to"] === undefined) content["m.relates_to"] = c["m.relates_to"];
      return {
        ...event,
        type: payload.type,
        content,
        encrypted: { decrypted: true, senderCurve25519: record.senderKey, ...(await this.senderTrust(event.sender, record)) },
      };
    } catch {
      return failed("BAD_MESSAGE_FORMAT");
    }
  }

  /**
   * Which device of `sender` holds the session's keys, and whether we verified it. A session whose
   * Curve25519 key is no device of the event's sender (after a fresh query), or whose signing key is
   * not that device's, is reported as from an unknown device: its content cannot be attributed.
   */
  private async senderTrust(sender: string, record: InboundRecord): Promise<{ senderDevice?: string; verified: "verified" | "unverified" | "unknown_device" }> {
    // Our own user's keys too: our user-signing key is what makes another user's master key trusted.
    await this.devices.ensureUpToDate([sender, this.userId]).catch(() => {});
    let device = this.devices.deviceByCurveKey(sender, record.senderKey);
    if (!device) {
      await this.devices.refresh([sender]).catch(() => {});
      device = this.devices.deviceByCurveKey(sender, record.senderKey);
    }
    if (!device || device.ed25519 !== record.signingKey) return { verified: "unknown_device" };
    // A forwarded key vouches for the session only as far as the forwarding device: at best unverified.
    return { senderDevice: device.deviceId, verified: this.isVerified(device) && !record.forwarded ? "verified" : "unverified" };
  }

  async encryptRoomEvent(roomId: string, type: string, content: Record<string, unknown>, members: string[]): Promise<Record<string, unknown>> {
    let queue = this.roomQueues.get(roomId);
    if (!queue) {
      queue = new Serial();
      this.roomQueues.set(roomId, queue);
    }
    return queue.run(() => this.encryptInRoom(roomId, type, content, members));
  }

  private async loadOutbound(roomId: string): Promise<{ session: MegolmOutboundSession; record: OutboundRecord } | undefined> {
    const cached = this.outbound.get(roomId);
    if (cached) return cached;
    const stored = await this.store.get(NS_OUTBOUND, roomId);
    if (!stored) return undefined;
    const record = JSON.parse(stored) as OutboundRecord;
    const entry = { session: this.olm.loadOutboundGroupSession(record.serialized), record };
    this.outbound.set(roomId, entry);
    return entry;
  }

  private async saveOutbound(roomId: string, entry: { session: MegolmOutboundSession; record: OutboundRecord }): Promise<void> {
    entry.record.serialized = entry.session.serialize();
    this.outbound.set(roomId, entry);
    await this.store.put(NS_OUTBOUND, roomId, JSON.stringify(entry.record));
  }

  /** Whether the outbound session must be replaced before the next message (spec: rotation). */
  private mustRotate(roomId: string, entry: { session: MegolmOutboundSession; record: OutboundRecord }, devices: DeviceInfo[], members: Set<string>): boolean {
    if (this.discardOutbound.has(roomId)) return true;
    const settings = this.roomSettings.get(roomId) ?? {};
    const periodMs = typeof settings.rotation_period_ms === "number" && settings.rotation_period_ms > 0 ? settings.rotation_period_ms : WEEK_MS;
    const periodMsgs = typeof settings.rotation_period_msgs === "number" && settings.rotation_period_msgs > 0 ? settings.rotation_period_msgs : 100;
    if (this.now() - entry.record.createdAt >= periodMs) return true;
    if (entry.session.messageIndex() >= periodMsgs) return true;
    // Someone who had the key left, or one of their devices disappeared (or changed keys): they must
    // not read what comes next.
    const current = new Map(devices.map((d) => [`${d.userId}|${d.deviceId}`, d.curve25519]));
    for (const [userId, byDevice] of Object.entries(entry.record.sharedWith)) {
      if (!members.has(userId)) return true;
      for (const [deviceId, curve] of Object.entries(byDevice)) {
        if (current.get(`${userId}|${deviceId}`) !== curve) return true;
      }
    }
    return false;
  }

  private async encryptInRoom(roomId: string, type: string, content: Record<string, unknown>, memberList: string[]): Promise<Record<string, unknown>> {
    const members = new Set(memberList);
    members.add(this.userId);
    await this.devices.ensureUpToDate(members);
    const own = this.account.identityKeys();
    const devices = [...members]
      .flatMap((u) => this.devices.devicesOf(u))
      .filter((d) => !(d.userId === this.userId && d.deviceId === this.deviceId) && d.algorithms.includes(OLM_ALGORITHM));

    let entry = await this.loadOutbound(roomId);
    if (!entry || this.mustRotate(roomId, entry, devices, members)) {
      const session = this.olm.newOutboundGroupSession();
      entry = { session, record: { serialized: "", createdAt: this.now(), sharedWith: {} } };
      // Our own copy, so this device reads its own messages (and can forward the key to our others).
      const inbound = this.olm.inboundGroupSessionFromKey(session.sessionKey());
      await this.saveInbound(inbound, { roomId, senderKey: own.curve25519, signingKey: own.ed25519, serialized: "", forwarded: false, forwardingChain: [] });
      await this.saveOutbound(roomId, entry);
      this.discardOutbound.delete(roomId);
    }

    // Only devices that do not have this session yet get the key (at the current index).
    const current = entry;
    const toShare = devices.filter((d) => current.record.sharedWith[d.userId]?.[d.deviceId] !== d.curve25519);
    if (toShare.length > 0) {
      const roomKey = { algorithm: MEGOLM_ALGORITHM, room_id: roomId, session_id: current.session.sessionId(), session_key: current.session.sessionKey() };
      const sent = await this.sendOlm(toShare, "m.room_key", () => roomKey);
      for (const d of sent) (current.record.sharedWith[d.userId] ??= {})[d.deviceId] = d.curve25519;
      await this.saveOutbound(roomId, current);
      const sentTo = new Set(sent);
      await this.tellNoOlm(toShare.filter((d) => !sentTo.has(d))).catch(() => {});
    }

    const relatesTo = content["m.relates_to"];
    const payloadContent = { ...content };
    delete payloadContent["m.relates_to"];
    const ciphertext = current.session.encrypt(JSON.stringify({ type, content: payloadContent, room_id: roomId }));
    // Stored before the ciphertext leaves: a restart never reuses a message index.
    await this.saveOutbound(roomId, current);
    return {
      algorithm: MEGOLM_ALGORITHM,
      sender_key: own.curve25519,
      device_id: this.deviceId,
      session_id: current.session.sessionId(),
      ciphertext,
      ...(isObject(relatesTo) ? { "m.relates_to": relatesTo } : {}),
    };
  }

  // ---------------------------------------------------------------- SAS verification

  private newVerification(userId: string, device: DeviceInfo, transactionId?: string): SasVerification {
    const theirMasterKey = masterKeyOf(this.devices.keysQueryFor(userId), userId);
    const verification = new SasVerification({
      userId: this.userId,
      deviceId: this.deviceId,
      ed25519: this.account.identityKeys().ed25519,
      ...(this.trust.ownMasterKey ? { masterKey: this.trust.ownMasterKey } : {}),
      other: { userId, deviceId: device.deviceId, ed25519: device.ed25519, ...(theirMasterKey ? { masterKey: theirMasterKey } : {}) },
      ...(transactionId ? { transactionId } : {}),
      // In the clear, as the spec's to-device verification does it (the MACs protect the keys).
      send: async (type, content) => {
        await this.http.request("PUT", `/_matrix/client/v3/sendToDevice/${encodeURIComponent(type)}/${encodeURIComponent(newTxnId())}`, {
          body: { messages: { [userId]: { [device.deviceId]: content } } },
        });
      },
    });
    this.verifications.set(verification.transactionId, verification);
    // The device's key as it was when the verification began is the one marked verified.
    verification.done.then(
      async (keyIds) => {
        this.verifications.delete(verification.transactionId);
        const known = this.devices.device(userId, device.deviceId);
        if (keyIds.includes(`ed25519:${device.deviceId}`) && known?.ed25519 === device.ed25519) await this.devices.setVerified(userId, device.deviceId, true);
        // Their MAC covered their master key: the user's cross-signed devices are trusted from now on.
        if (theirMasterKey && keyIds.includes(`ed25519:${theirMasterKey}`)) await this.trustMasterKey(userId, theirMasterKey);
        // With our cross-signing keys, the trust is published: their master key signed by our
        // user-signing key, or our own other device by our self-signing key, so that our other
        // devices and other users see it (as Element does after SAS).
        await this.signVerified(userId, device, theirMasterKey, keyIds).catch((err: unknown) => this.onCrossSigningError?.(err));
      },
      () => this.verifications.delete(verification.transactionId),
    );
    return verification;
  }

  /** Begins SAS verification of another device (ours or another user's): sends the request. */
  async requestVerification(userId: string, deviceId: string): Promise<SasVerification> {
    await this.devices.ensureUpToDate([userId]);
    const device = this.devices.device(userId, deviceId);
    if (!device) throw new Error(`unknown device ${userId}/${deviceId}`);
    const verification = this.newVerification(userId, device);
    await verification.request();
    return verification;
  }

  /** Routes an `m.key.verification.*` to-device event; false when it is none of ours (left to the client). */
  private async handleVerification(sender: string, type: string, content: Record<string, unknown>): Promise<boolean> {
    const transactionId = content.transaction_id;
    if (typeof transactionId !== "string") return false;
    const existing = this.verifications.get(transactionId);
    if (existing) {
      await existing.handle(type, content).catch(() => {});
      return true;
    }
    if (type !== "m.key.verification.request" && type !== "m.key.verification.start") return false;
    if (type === "m.key.verification.request" && !SasVerification.isAcceptableRequest(content)) return true;
    const fromDevice = content.from_device;
    if (typeof fromDevice !== "string") return true;
    await this.devices.ensureUpToDate([sender]).catch(() => {});
    let device = this.devices.device(sender, fromDevice);
    if (!device) {
      await this.devices.refresh([sender]).catch(() => {});
      device = this.devices.device(sender, fromDevice);
    }
    if (!device) return true; // a device we cannot see the keys of cannot be verified
    const verification = this.newVerification(sender, device, transactionId);
    await verification.handle(type, content).catch(() => {});
    this.onVerificationRequest?.(verification);
    return true;
  }

  /** Publishes what a finished verification lets our cross-signing keys sign (nothing without them). */
  private async signVerified(userId: string, device: DeviceInfo, theirMasterKey: string | undefined, keyIds: readonly string[]): Promise<void> {
    if (!this.crossSigning) return;
    // Signed only if the keys are still those verified: the list is read again from the server.
    await this.devices.refresh([userId]);
    const peer = { userId, deviceId: device.deviceId, ed25519: device.ed25519, ...(theirMasterKey ? { masterKey: theirMasterKey } : {}) };
    const body = signaturesAfterVerification(this.crossSigning, peer, keyIds, this.devices.keysQueryFor(userId));
    if (Object.keys(body).length > 0) await uploadSignatures(this.http, body);
  }

  // ---------------------------------------------------------------- cross-signing

  /** Whether this device holds our cross-signing private keys (all three, as after `bootstrapCrossSigning`). */
  hasCrossSigningKeys(): boolean {
    return this.crossSigning?.master !== undefined && this.crossSigning.selfSigning !== undefined && this.crossSigning.userSigning !== undefined;
  }

  /**
   * Sets up cross-signing for our user, as Element's "set up secure messaging" does: new master,
   * self-signing and user-signing keys, published (POST /keys/device_signing/upload, answering the
   * server's password step with `auth` when it asks: it does when keys exist already), then this
   * device signed by the self-signing key and the master key signed by this device. The private keys
   * stay in this device's store (encrypted when it is a file store), and our own master key is
   * trusted from now on: SAS then covers it, and verifications are signed and published.
   * Replaces the user's existing cross-signing keys: other users' trust in the old ones is lost.
   */
  async bootstrapCrossSigning(auth?: { password: string }): Promise<void> {
    const identity = this.crossSigning?.master ? this.crossSigning : CrossSigningIdentity.generate(this.userId);
    // Kept before they are published: a crash after the upload must not lose keys the server has.
    await this.store.put(NS_ACCOUNT, "cross_signing_seeds", JSON.stringify(identity.seeds()));
    await this.store.flush();
    this.crossSigning = identity;
    const upload = identity.deviceSigningUploadBody();
    await uploadCrossSigningKeys(this.http, upload, auth ? { userId: this.userId, password: auth.password } : undefined);
    const deviceSignature = signMasterKeyWithDevice(upload.master_key!, this.deviceId, (message) => this.account.sign(message));
    const ownDevice = identity.signOwnDevice(this.deviceKeys());
    await uploadSignatures(this.http, { [this.userId]: { ...ownDevice[this.userId], ...deviceSignature[this.userId] } });
    await this.trustMasterKey(this.userId, identity.master!.publicKey);
    await this.devices.refresh([this.userId]);
  }

  // ---------------------------------------------------------------- verification state

  /**
   * Whether we trust a device: verified by us (SAS, our say-so, our own device), or cross-signed by
   * its user's self-signing key under a master key we trust (client/crypto/cross-signing.ts checks
   * every signature of the chain from what /keys/query gave).
   */
  isVerified(device: DeviceInfo): boolean {
    if (device.verified) return true;
    const ctx: TrustContext = { userId: this.userId, verifiedMasterKeys: this.trust.verifiedMasterKeys, ...(this.trust.ownMasterKey ? { ownMasterKey: this.trust.ownMasterKey } : {}) };
    return deviceTrust(this.devices.keysQueryFor(device.userId), device.userId, device.deviceId, ctx).trusted;
  }

  /**
   * Trusts a user's master cross-signing key (after SAS covering it, or our own once we hold or
   * verified it): their devices signed by their self-signing key count as verified. A changed master
   * key is not trusted until verified again.
   */
  async trustMasterKey(userId: string, masterKey: string): Promise<void> {
    if (userId === this.userId) this.trust.ownMasterKey = masterKey;
    else this.trust.verifiedMasterKeys = { ...this.trust.verifiedMasterKeys, [userId]: masterKey };
    await this.store.put(NS_ACCOUNT, "cross_signing_trust", JSON.stringify(this.trust));
  }

  /** Marks a device verified (after SAS, or by the user's say-so) or not. */
  async setDeviceVerified(userId: string, deviceId: string, verified = true): Promise<void> {
    await this.devices.ensureUpToDate([userId]);
    await this.devices.setVerified(userId, deviceId, verified);
  }

  /** Writes everything pending to the store. */
  async flush(): Promise<void> {
    await this.store.flush();
  }
}
