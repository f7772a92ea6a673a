// SAS verification (`m.sas.v1`) between two devices, over to-device messages, as Element does it.
// https://spec.matrix.org/latest/client-server-api/#short-authentication-string-sas-verification
//
// Two layers:
// - the primitives (commitment, the HKDF info strings, the SAS bytes as emoji and decimals, the
//   MACs of both `hkdf-hmac-sha256.v2` and libolm's old `hkdf-hmac-sha256` with its broken base64),
//   pure functions checked byte for byte against libolm's `Olm.SAS` in the tests;
// - `SasVerification`, the state machine of one verification with one other device. It does no I/O:
//   it is given a `send(type, content)` and is fed the other device's messages with `handle`. The
//   E2EE layer routes to-device `m.key.verification.*` events to it by `transaction_id`.
//
// The flow (either side may send `start`; both doing it at once is settled as the spec says):
//   request → ready → start → accept (commitment) → key, key → both users compare the SAS →
//   mac, mac → done, done.
//
// Wiring (the E2EE layer): to begin, `new SasVerification({ ..., other, send })` then `request()`;
// on an incoming to-device `m.key.verification.request` that `isAcceptableRequest`, create one with
// its `transaction_id` and `handle` the request, then `ready()` once the user agrees. Every later
// `m.key.verification.*` to-device event of that sender and transaction goes to `handle`. Either
// side then calls `start()`; on `keysExchanged` show `emojis()`; `confirm()` or
// `cancel("m.mismatched_sas")`; `done` gives the verified key IDs, to mark the device verified and
// sign it (cross-signing.ts `signaturesAfterVerification`). `send` delivers to the one other device.
import { z } from "zod";
import { CanonicalJsonError, canonicalJson, compareByCodePoint } from "../../federation/protocol/canonical-json.ts";
import {
  bytesEqual,
  curve25519Generate,
  type Curve25519KeyPair,
  fromBase64,
  hkdfSha256,
  hmacSha256,
  randomBytes,
  sha256,
  toBase64,
  x25519,
} from "./primitives.ts";

export const SAS_METHOD = "m.sas.v1";
export const KEY_AGREEMENT = "curve25519-hkdf-sha256";
export const HASH = "sha256";
/** In our order of preference: the spec says the old one MUST NOT be used when both sides know `.v2`. */
export const MAC_METHODS = ["hkdf-hmac-sha256.v2", "hkdf-hmac-sha256"] as const;
export type MacMethod = (typeof MAC_METHODS)[number];
export const SAS_TYPES = ["decimal", "emoji"] as const;
export type SasType = (typeof SAS_TYPES)[number];

/** Cancel codes of the key verification framework and of SAS. */
export type CancelCode =
  | "m.user"
  | "m.timeout"
  | "m.unknown_transaction"
  | "m.unknown_method"
  | "m.unexpected_message"
  | "m.key_mismatch"
  | "m.user_mismatch"
  | "m.invalid_message"
  | "m.accepted"
  | "m.mismatched_commitment"
  | "m.mismatched_sas"
  | (string & {});

const CANCEL_REASONS: Record<string, string> = {
  "m.user": "The user cancelled the verification",
  "m.timeout": "The verification timed out",
  "m.unknown_transaction": "Unknown transaction",
  "m.unknown_method": "No verification method, key agreement, hash, MAC or SAS method in common",
  "m.unexpected_message": "Unexpected message",
  "m.key_mismatch": "The key was not verified",
  "m.user_mismatch": "The expected user did not match the user verified",
  "m.invalid_message": "Invalid message",
  "m.accepted": "Accepted by another device",
  "m.mismatched_commitment": "The hash commitment did not match",
  "m.mismatched_sas": "The short authentication strings did not match",
};

// ---- Primitives ----

/**
 * The `commitment` of `m.key.verification.accept`: unpadded base64 of SHA-256 over the accepting
 * device's ephemeral public key (unpadded base64) followed by the canonical JSON of the `start` content.
 */
export function sasCommitment(publicKey: string, startContent: Record<string, unknown>): string {
  return toBase64(sha256(publicKey + canonicalJson(startContent)));
}

export interface SasParty {
  userId: string;
  deviceId: string;
  /** The ephemeral Curve25519 key of its `m.key.verification.key`, unpadded base64. */
  publicKey: string;
}

/** The HKDF info for the SAS bytes (`curve25519-hkdf-sha256`): the device that sent `start` first. */
export function sasInfo(starter: SasParty, accepter: SasParty, transactionId: string): string {
  return (
    `MATRIX_KEY_VERIFICATION_SAS|${starter.userId}|${starter.deviceId}|${starter.publicKey}|` +
    `${accepter.userId}|${accepter.deviceId}|${accepter.publicKey}|${transactionId}`
  );
}

/** `length` bytes of HKDF-SHA-256 of the shared secret, no salt (what libolm's `generate_bytes` gives). */
export function sasBytes(sharedSecret: Uint8Array, info: string, length: number): Uint8Array {
  return hkdfSha256(sharedSecret, new Uint8Array(0), info, length);
}

/** The spec's 64 SAS emoji with their descriptions (data-definitions/sas-emoji.json), by number. */
export const SAS_EMOJI: ReadonlyArray<readonly [emoji: string, description: string]> = [
  ["🐶", "Dog"],
  ["🐱", "Cat"],
  ["🦁", "Lion"],
  ["🐎", "Horse"],
  ["🦄", "Unicorn"],
  ["🐷", "Pig"],
  ["🐘", "Elephant"],
  ["🐰", "Rabbit"],
  ["🐼", "Panda"],
  ["🐓", "Rooster"],
  ["🐧", "Penguin"],
  ["🐢", "Turtle"],
  ["🐟", "Fish"],
  ["🐙", "Octopus"],
  ["🦋", "Butterfly"],
  ["🌷", "Flower"],
  ["🌳", "Tree"],
  ["🌵", "Cactus"],
  ["🍄", "Mushroom"],
  ["🌏", "Globe"],
  ["🌙", "Moon"],
  ["☁️", "Cloud"],
  ["🔥", "Fire"],
  ["🍌", "Banana"],
  ["🍎", "Apple"],
  ["🍓", "Strawberry"],
  ["🌽", "Corn"],
  ["🍕", "Pizza"],
  ["🎂", "Cake"],
  ["❤️", "Heart"],
  ["😀", "Smiley"],
  ["🤖", "Robot"],
  ["🎩", "Hat"],
  ["👓", "Glasses"],
  ["🔧", "Spanner"],
  ["🎅", "Santa"],
  ["👍", "Thumbs Up"],
  ["☂️", "Umbrella"],
  ["⌛", "Hourglass"],
  ["⏰", "Clock"],
  ["🎁", "Gift"],
  ["💡", "Light Bulb"],
  ["📕", "Book"],
  ["✏️", "Pencil"],
  ["📎", "Paperclip"],
  ["✂️", "Scissors"],
  ["🔒", "Lock"],
  ["🔑", "Key"],
  ["🔨", "Hammer"],
  ["☎️", "Telephone"],
  ["🏁", "Flag"],
  ["🚂", "Train"],
  ["🚲", "Bicycle"],
  ["✈️", "Aeroplane"],
  ["🚀", "Rocket"],
  ["🏆", "Trophy"],
  ["⚽", "Ball"],
  ["🎸", "Guitar"],
  ["🎺", "Trumpet"],
  ["🔔", "Bell"],
  ["⚓", "Anchor"],
  ["🎧", "Headphones"],
  ["📁", "Folder"],
  ["📌", "Pin"],
];

export interface SasEmoji {
  /** Index in the spec's table (0–63). */
  number: number;
  emoji: string;
  description: string;
}

/** Seven emoji from the first 42 bits of 6 SAS bytes, 6 bits each (spec "SAS method: emoji"). */
export function sasEmojis(bytes: Uint8Array): SasEmoji[] {
  if (bytes.length < 6) throw new RangeError("emoji SAS needs 6 bytes");
  let bits = 0n;
  for (const b of bytes.subarray(0, 6)) bits = (bits << 8n) | BigInt(b);
  const out: SasEmoji[] = [];
  for (let i = 0; i < 7; i++) {
    const number = Number((bits >> BigInt(42 - 6 * i)) & 63n);
    const [emoji, description] = SAS_EMOJI[number]!;
    out.push({ number, emoji, description });
  }
  return out;
}

/** Three numbers 1000–9191 from the first 5 SAS bytes, 13 bits each (spec "SAS method: decimal"). */
export function sasDecimals(bytes: Uint8Array): [number, number, number] {
  if (bytes.length < 5) throw new RangeError("decimal SAS needs 5 bytes");
  const [b0, b1, b2, b3, b4] = bytes as unknown as [number, number, number, number, number];
  return [((b0 << 5) | (b1 >> 3)) + 1000, (((b1 & 0x7) << 10) | (b2 << 2) | (b3 >> 6)) + 1000, (((b3 & 0x3f) << 7) | (b4 >> 1)) + 1000];
}

/** The start of the MAC info: `MATRIX_KEY_VERIFICATION_MAC` + sender user, device, receiver user, device, transaction; the key ID (or `KEY_IDS`) follows. */
export function macInfoBase(sender: { userId: string; deviceId: string }, receiver: { userId: string; deviceId: string }, transactionId: string): string {
  return `MATRIX_KEY_VERIFICATION_MAC${sender.userId}${sender.deviceId}${receiver.userId}${receiver.deviceId}${transactionId}`;
}

/**
 * A SAS MAC: HMAC-SHA-256 of `input` under a key of HKDF(shared secret, no salt, `info`, 32), in
 * unpadded base64. `hkdf-hmac-sha256` is the same MAC with libolm's faulty base64 (it encoded the
 * MAC in place, over its own input), which old clients still send and expect.
 */
export function sasMac(sharedSecret: Uint8Array, input: string, info: string, method: MacMethod): string {
  const mac = hmacSha256(sasBytes(sharedSecret, info, 32), input);
  return method === "hkdf-hmac-sha256.v2" ? toBase64(mac) : libolmInPlaceBase64(mac);
}

const BASE64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/**
 * libolm's `_olm_encode_base64(mac, 32, mac)`: base64 written into the buffer it reads from, so
 * each group of three input bytes after the first is read after earlier output overwrote it.
 * Reproduced step for step (vodozemac's `calculate_mac_invalid_base64` does the same).
 */
function libolmInPlaceBase64(input: Uint8Array): string {
  const length = input.length;
  const buf = new Uint8Array(Math.ceil((length * 4) / 3) + 4);
  buf.set(input);
  const code = (v: number) => BASE64_ALPHABET.charCodeAt(v & 0x3f);
  let pos = 0;
  let out = 0;
  const end = Math.floor(length / 3) * 3;
  while (pos !== end) {
    let value = (buf[pos]! << 16) | (buf[pos + 1]! << 8) | buf[pos + 2]!;
    pos += 3;
    buf[out + 3] = code(value);
    value >>= 6;
    buf[out + 2] = code(value);
    value >>= 6;
    buf[out + 1] = code(value);
    value >>= 6;
    buf[out] = code(value);
    out += 4;
  }
  const remainder = length - pos;
  let resultLength = out;
  if (remainder) {
    let value = buf[pos]!;
    if (remainder === 2) {
      value = (value << 8) | buf[pos + 1]!;
      value <<= 2;
      buf[out + 2] = code(value);
      value >>= 6;
      resultLength += 3;
    } else {
      value <<= 4;
      resultLength += 2;
    }
    buf[out + 1] = code(value);
    value >>= 6;
    buf[out] = code(value);
  }
  return Buffer.from(buf.subarray(0, resultLength)).toString("latin1");
}

// ---- The state machine ----

export type SasState =
  /** Nothing sent or received yet. */
  | "created"
  /** We sent `request`; waiting for `ready`. */
  | "requested"
  /** The other device sent `request`; `ready()` accepts it. */
  | "request_received"
  /** Request and ready exchanged: either side may `start`. */
  | "ready"
  /** We sent `start`; waiting for `accept`. */
  | "started"
  /** We accepted their `start`; waiting for their `key`. */
  | "accepted"
  /** We started, they accepted, we sent our `key`; waiting for theirs. */
  | "key_sent"
  /** Both keys known: `emojis()` / `decimals()` are shown; waiting for the user's `confirm()`. */
  | "keys_exchanged"
  /** We sent our MAC; waiting for theirs. */
  | "confirmed"
  /** Both MACs checked, we sent `done`; waiting for theirs. */
  | "done_sent"
  | "done"
  | "cancelled";

/** Why a verification ended without success: the cancel code, and whether we or they cancelled. */
export class VerificationCancelledError extends Error {
  override name = "VerificationCancelledError";
  constructor(
    readonly code: CancelCode,
    readonly reason: string,
    readonly byUs: boolean,
  ) {
    super(`verification cancelled ${byUs ? "by us" : "by the other device"}: ${code} (${reason})`);
  }
}

/** The other device, with its keys as /keys/query gave them (fixed for the whole verification, as the spec asks). */
export interface SasPeer {
  userId: string;
  deviceId: string;
  /** Its Ed25519 device key, unpadded base64. */
  ed25519: string;
  /** Its user's master cross-signing key (unpadded base64), to be verified too when their MAC covers it. */
  masterKey?: string;
}

export interface SasOptions {
  userId: string;
  deviceId: string;
  /** Our Ed25519 device key (unpadded base64). SAS signs nothing: the MACs are keyed by the shared secret. */
  ed25519: string;
  /** Our master cross-signing key (unpadded base64), when we have one: the other side can then verify our identity. */
  masterKey?: string;
  other: SasPeer;
  /** The transaction ID of an incoming request or start; omitted for a verification we begin. */
  transactionId?: string;
  /** Sends a to-device message to the other device. The `transaction_id` is already in the content. */
  send(type: string, content: Record<string, unknown>): Promise<void> | void;
  /** Called on every state change (a UI shows the SAS on "keys_exchanged"). */
  onStateChange?(state: SasState): void;
  /** The spec's 10 minutes by default. */
  timeoutMs?: number;
  now?: () => number;
}

const str = z.string().min(1).max(1000);
const strings = z.array(z.string().max(1000)).max(100);
const schemas = {
  "m.key.verification.request": z.object({ from_device: str, methods: strings, timestamp: z.number().optional() }),
  "m.key.verification.ready": z.object({ from_device: str, methods: strings }),
  "m.key.verification.start": z.object({
    from_device: str,
    method: str,
    key_agreement_protocols: strings.optional(),
    hashes: strings.optional(),
    message_authentication_codes: strings.optional(),
    short_authentication_string: strings.optional(),
  }),
  "m.key.verification.accept": z.object({
    method: str.optional(),
    key_agreement_protocol: str,
    hash: str,
    message_authentication_code: str,
    short_authentication_string: strings,
    commitment: str,
  }),
  "m.key.verification.key": z.object({ key: str }),
  "m.key.verification.mac": z.object({ mac: z.record(z.string().max(1000), z.string().max(1000)), keys: str }),
  "m.key.verification.done": z.object({}),
  "m.key.verification.cancel": z.object({ code: z.string().max(1000).optional(), reason: z.string().max(10_000).optional() }),
};
type IncomingType = keyof typeof schemas;

/** Thrown (through the caller's promise) when a method is called in a state it does not apply to. */
export class SasStateError extends Error {
  override name = "SasStateError";
}

/**
 * One SAS verification with one other device. Methods and `handle` are serialized, so the E2EE
 * layer may feed events as they come. Messages after the end (done or cancelled) are ignored, so
 * two devices never answer each other's cancels forever.
 */
export class SasVerification {
  readonly transactionId: string;
  /** The verified key IDs (`ed25519:DEVICEID`, and `ed25519:<master key>` when their MAC covered it), or a VerificationCancelledError. */
  readonly done: Promise<string[]>;
  /** Resolves when `emojis()`/`decimals()` can be shown; rejects with VerificationCancelledError if it ends before. */
  readonly keysExchanged: Promise<void>;

  private stateValue: SasState = "created";
  private queue: Promise<unknown> = Promise.resolve();
  private readonly opts: SasOptions;
  private readonly now: () => number;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private endedSignal: Promise<void>;
  private signalEnded!: () => void;
  private resolveDone!: (keys: string[]) => void;
  private rejectDone!: (err: unknown) => void;
  private resolveKeys!: () => void;
  private rejectKeys!: (err: unknown) => void;

  // Negotiated in start/accept:
  private weStarted = false;
  private startContent: Record<string, unknown> | undefined;
  private macMethod: MacMethod = "hkdf-hmac-sha256.v2";
  private sasTypes: SasType[] = [];
  private commitment: string | undefined;
  private ephemeral: Curve25519KeyPair | undefined;
  private theirPublicKey: string | undefined;
  private sharedSecret: Uint8Array | undefined;
  private sas: Uint8Array | undefined;
  private theirVerifiedKeys: string[] | undefined;

  constructor(opts: SasOptions) {
    if (opts.other.masterKey !== undefined && opts.other.masterKey === opts.other.deviceId) {
      // Spec "Key and signature security": refuse a user with a device named like a cross-signing key.
      throw new Error("the other device's ID is its user's master key: refusing to verify");
    }
    this.opts = opts;
    this.now = opts.now ?? Date.now;
    this.transactionId = opts.transactionId ?? toBase64(randomBytes(18)).replace(/[+/]/g, "A");
    this.endedSignal = new Promise<void>((resolve) => {
      this.signalEnded = resolve;
    });
    this.done = new Promise<string[]>((resolve, reject) => {
      this.resolveDone = resolve;
      this.rejectDone = reject;
    });
    this.keysExchanged = new Promise<void>((resolve, reject) => {
      this.resolveKeys = resolve;
      this.rejectKeys = reject;
    });
    // Whoever does not await them must not see an unhandled rejection.
    this.done.catch(() => {});
    this.keysExchanged.catch(() => {});
    this.timer = setTimeout(() => void this.cancel("m.timeout"), opts.timeoutMs ?? 10 * 60_000);
    this.timer.unref?.();
  }

  get state(): SasState {
    return this.stateValue;
  }

  /** Whether an incoming to-device `m.key.verification.request` is worth showing: SAS offered, timestamp within the spec's window (5 min ahead, 10 min behind). */
  static isAcceptableRequest(content: Record<string, unknown>, now = Date.now()): boolean {
    const parsed = schemas["m.key.verification.request"].safeParse(content);
    if (!parsed.success || !parsed.data.methods.includes(SAS_METHOD)) return false;
    const ts = parsed.data.timestamp;
    return ts !== undefined && ts <= now + 5 * 60_000 && ts >= now - 10 * 60_000;
  }

  /** Sends `m.key.verification.request` (we begin the verification). */
  request(): Promise<void> {
    return this.serial(async () => {
      this.expectState("request", "created");
      this.setState("requested");
      await this.sendMessage("m.key.verification.request", { from_device: this.opts.deviceId, methods: [SAS_METHOD], timestamp: this.now() });
    });
  }

  /** Accepts the other device's request: sends `m.key.verification.ready`. */
  ready(): Promise<void> {
    return this.serial(async () => {
      this.expectState("ready", "request_received");
      this.setState("ready");
      await this.sendMessage("m.key.verification.ready", { from_device: this.opts.deviceId, methods: [SAS_METHOD] });
    });
  }

  /** Sends `m.key.verification.start` with `m.sas.v1` (after request/ready, or at once, the deprecated way). */
  start(): Promise<void> {
    return this.serial(async () => {
      this.expectState("start", "ready", "created");
      const content = {
        from_device: this.opts.deviceId,
        method: SAS_METHOD,
        key_agreement_protocols: [KEY_AGREEMENT],
        hashes: [HASH],
        message_authentication_codes: [...MAC_METHODS],
        short_authentication_string: [...SAS_TYPES],
        transaction_id: this.transactionId,
      };
      this.weStarted = true;
      this.startContent = content;
      this.setState("started");
      await this.sendMessage("m.key.verification.start", content);
    });
  }

  /** The seven emoji both users compare, once the keys are exchanged and when both sides offered emoji. */
  emojis(): SasEmoji[] | undefined {
    return this.sas && this.sasTypes.includes("emoji") ? sasEmojis(this.sas) : undefined;
  }

  /** The three numbers both users compare, once the keys are exchanged. */
  decimals(): [number, number, number] | undefined {
    return this.sas && this.sasTypes.includes("decimal") ? sasDecimals(this.sas) : undefined;
  }

  /** The user says the SAS match: sends our MAC (and `done` once theirs checked out). */
  confirm(): Promise<void> {
    return this.serial(async () => {
      this.expectState("confirm", "keys_exchanged");
      this.setState("confirmed");
      await this.sendMessage("m.key.verification.mac", this.ourMac());
      if (this.theirVerifiedKeys) await this.sendDone();
    });
  }

  /** Ends the verification and tells the other device (`m.user` when the user gives up, `m.mismatched_sas` when the SAS differ). No-op once it has ended. */
  cancel(code: CancelCode = "m.user", reason?: string): Promise<void> {
    // Not queued: a cancel (the user's, or the timeout) must not wait behind a send that hangs.
    return this.cancelNow(code, reason);
  }

  /**
   * Feeds one message of the other device (a to-device `m.key.verification.*` event's type and
   * content, already routed here by its transaction ID). Answers what the protocol asks for, and
   * cancels on anything out of order, malformed or failing a check.
   */
  handle(type: string, content: Record<string, unknown>): Promise<void> {
    return this.serial(() => this.handleNow(type, content));
  }

  // ---- internals ----

  private serial<T>(fn: () => Promise<T>): Promise<T> {
    // Once ended, nothing waits behind a step that hangs (a send the server never answers).
    const run = Promise.race([this.queue, this.endedSignal]).then(fn);
    this.queue = run.catch(() => {});
    return run;
  }

  private expectState(action: string, ...states: SasState[]): void {
    if (!states.includes(this.stateValue)) throw new SasStateError(`cannot ${action} in state ${this.stateValue}`);
  }

  private setState(state: SasState): void {
    // A step still running when the verification was cancelled must not bring it back to life.
    if (this.ended) return;
    this.stateValue = state;
    this.opts.onStateChange?.(state);
  }

  private get ended(): boolean {
    return this.stateValue === "done" || this.stateValue === "cancelled";
  }

  private async sendMessage(type: string, content: Record<string, unknown>): Promise<void> {
    if (this.ended) return;
    try {
      await this.opts.send(type, { ...content, transaction_id: this.transactionId });
    } catch (err) {
      // The other side cannot follow a verification whose message was lost: it ends here.
      if (!this.ended) this.finish(err);
      throw err;
    }
  }

  private finish(err?: unknown, keys?: string[]): void {
    clearTimeout(this.timer);
    this.ephemeral = undefined;
    const state = err === undefined ? "done" : "cancelled";
    this.stateValue = state;
    this.signalEnded();
    this.opts.onStateChange?.(state);
    if (err !== undefined) {
      this.rejectKeys(err);
      this.rejectDone(err);
    } else {
      this.resolveDone(keys ?? []);
    }
  }

  private async cancelNow(code: CancelCode, reason?: string): Promise<void> {
    if (this.ended) return;
    const why = reason ?? CANCEL_REASONS[code] ?? code;
    this.finish(new VerificationCancelledError(code, why, true));
    try {
      await this.opts.send("m.key.verification.cancel", { code, reason: why, transaction_id: this.transactionId });
    } catch {
      // Cancelled here either way; the other device times out if it never hears of it.
    }
  }

  private async handleNow(type: string, raw: Record<string, unknown>): Promise<void> {
    if (this.ended) return;
    if (!Object.hasOwn(schemas, type)) return; // another verification method's message: not ours to judge
    if (typeof raw !== "object" || raw === null || raw.transaction_id !== this.transactionId) return;
    const parsed = schemas[type as IncomingType].safeParse(raw);
    if (type === "m.key.verification.cancel") {
      const c = parsed.success ? (parsed.data as { code?: string; reason?: string }) : {};
      this.finish(new VerificationCancelledError(c.code ?? "m.user", c.reason ?? "", false));
      return;
    }
    if (!parsed.success) return this.cancelNow("m.invalid_message", `Invalid ${type}`);
    const content = parsed.data as Record<string, any>;
    const from = content.from_device;
    // Another device of the same user answering a request meant for this one: not this verification.
    if (typeof from === "string" && from !== this.opts.other.deviceId) return;

    switch (type as IncomingType) {
      case "m.key.verification.request":
        if (this.stateValue !== "created") return this.unexpected(type);
        this.setState("request_received");
        return;
      case "m.key.verification.ready":
        if (this.stateValue !== "requested") return this.unexpected(type);
        if (!content.methods.includes(SAS_METHOD)) return this.cancelNow("m.unknown_method");
        this.setState("ready");
        return;
      case "m.key.verification.start":
        return this.onStart(raw, content);
      case "m.key.verification.accept":
        return this.onAccept(content);
      case "m.key.verification.key":
        return this.onKey(content.key);
      case "m.key.verification.mac":
        return this.onMac(content.mac, content.keys);
      case "m.key.verification.done":
        if (this.stateValue !== "done_sent") return this.unexpected(type);
        this.finish(undefined, this.theirVerifiedKeys);
        return;
    }
  }

  private unexpected(type: string): Promise<void> {
    return this.cancelNow("m.unexpected_message", `Unexpected ${type} in state ${this.stateValue}`);
  }

  private async onStart(raw: Record<string, unknown>, content: Record<string, any>): Promise<void> {
    if (this.stateValue === "started") {
      // Both sent `start`. Spec: the one of the lexicographically smaller user ID (then device
      // ID) stands; the other is treated as never sent. Different methods cancel.
      if (content.method !== SAS_METHOD) return this.cancelNow("m.unexpected_message", "Both devices started, with different methods");
      const us = this.opts;
      const them = this.opts.other;
      const byUser = compareByCodePoint(us.userId, them.userId);
      const weWin = byUser < 0 || (byUser === 0 && compareByCodePoint(us.deviceId, them.deviceId) < 0);
      if (weWin) return;
      this.weStarted = false;
    } else if (this.stateValue !== "ready" && this.stateValue !== "created") {
      return this.unexpected("m.key.verification.start");
    }
    if (content.method !== SAS_METHOD) return this.cancelNow("m.unknown_method", `Unsupported method ${content.method}`);
    const macMethod = MAC_METHODS.find((m) => content.message_authentication_codes?.includes(m));
    const sasTypes = SAS_TYPES.filter((t) => content.short_authentication_string?.includes(t));
    if (!content.key_agreement_protocols?.includes(KEY_AGREEMENT) || !content.hashes?.includes(HASH) || !macMethod || sasTypes.length === 0) {
      return this.cancelNow("m.unknown_method");
    }
    this.ephemeral = curve25519Generate();
    let commitment: string;
    try {
      // Over the content exactly as received, unknown fields included: the starter hashes what it sent.
      commitment = sasCommitment(toBase64(this.ephemeral.publicKey), raw);
    } catch (err) {
      if (err instanceof CanonicalJsonError) return this.cancelNow("m.invalid_message", "The start message has no canonical JSON form");
      throw err;
    }
    this.startContent = raw;
    this.macMethod = macMethod;
    this.sasTypes = sasTypes;
    this.setState("accepted");
    await this.sendMessage("m.key.verification.accept", {
      method: SAS_METHOD,
      key_agreement_protocol: KEY_AGREEMENT,
      hash: HASH,
      message_authentication_code: macMethod,
      short_authentication_string: sasTypes,
      commitment,
    });
  }

  private async onAccept(content: Record<string, any>): Promise<void> {
    if (this.stateValue !== "started") return this.unexpected("m.key.verification.accept");
    const offered = new Set<string>(SAS_TYPES);
    const sasTypes = content.short_authentication_string as string[];
    if (
      (content.method !== undefined && content.method !== SAS_METHOD) ||
      content.key_agreement_protocol !== KEY_AGREEMENT ||
      content.hash !== HASH ||
      !(MAC_METHODS as readonly string[]).includes(content.message_authentication_code) ||
      sasTypes.length === 0 ||
      !sasTypes.every((t) => offered.has(t))
    ) {
      return this.cancelNow("m.unknown_method");
    }
    this.macMethod = content.message_authentication_code as MacMethod;
    this.sasTypes = sasTypes as SasType[];
    this.commitment = content.commitment;
    this.ephemeral = curve25519Generate();
    this.setState("key_sent");
    await this.sendMessage("m.key.verification.key", { key: toBase64(this.ephemeral.publicKey) });
  }

  private async onKey(key: string): Promise<void> {
    if (this.stateValue !== "accepted" && this.stateValue !== "key_sent") return this.unexpected("m.key.verification.key");
    let theirKey: Uint8Array;
    try {
      theirKey = fromBase64(key);
    } catch {
      return this.cancelNow("m.invalid_message", "The key is not base64");
    }
    if (theirKey.length !== 32) return this.cancelNow("m.invalid_message", "The key is not a Curve25519 key");
    if (this.stateValue === "key_sent") {
      // ZRTP's hash commitment: the accepter fixed its key before seeing ours.
      const expected = sasCommitment(key, this.startContent!);
      if (!bytesEqual(Buffer.from(expected), Buffer.from(this.commitment!))) return this.cancelNow("m.mismatched_commitment");
    }
    const ephemeral = this.ephemeral!;
    try {
      this.sharedSecret = x25519(ephemeral.privateKey, theirKey);
    } catch {
      // libsodium refuses a low-order point (an all-zero shared secret).
      return this.cancelNow("m.invalid_message", "Unusable key");
    }
    this.theirPublicKey = key;
    const ourKey = toBase64(ephemeral.publicKey);
    const us: SasParty = { userId: this.opts.userId, deviceId: this.opts.deviceId, publicKey: ourKey };
    const them: SasParty = { userId: this.opts.other.userId, deviceId: this.opts.other.deviceId, publicKey: key };
    const info = this.weStarted ? sasInfo(us, them, this.transactionId) : sasInfo(them, us, this.transactionId);
    this.sas = sasBytes(this.sharedSecret, info, 6);
    const acceptedByUs = this.stateValue === "accepted";
    this.setState("keys_exchanged");
    // The accepter answers the starter's key with its own; the SAS is ready on both sides then.
    if (acceptedByUs) await this.sendMessage("m.key.verification.key", { key: ourKey });
    this.resolveKeys();
  }

  private ourMac(): Record<string, unknown> {
    const info = macInfoBase(this.opts, this.opts.other, this.transactionId);
    const keys: Record<string, string> = { [`ed25519:${this.opts.deviceId}`]: this.opts.ed25519 };
    if (this.opts.masterKey) keys[`ed25519:${this.opts.masterKey}`] = this.opts.masterKey;
    const mac: Record<string, string> = {};
    for (const [keyId, key] of Object.entries(keys)) mac[keyId] = sasMac(this.sharedSecret!, key, info + keyId, this.macMethod);
    const keyIds = Object.keys(mac).sort(compareByCodePoint).join(",");
    return { mac, keys: sasMac(this.sharedSecret!, keyIds, `${info}KEY_IDS`, this.macMethod) };
  }

  private async onMac(mac: Record<string, string>, keysMac: string): Promise<void> {
    if ((this.stateValue !== "keys_exchanged" && this.stateValue !== "confirmed") || this.theirVerifiedKeys) {
      return this.unexpected("m.key.verification.mac");
    }
    const secret = this.sharedSecret!;
    const info = macInfoBase(this.opts.other, this.opts, this.transactionId);
    const same = (a: string, b: string) => bytesEqual(Buffer.from(a), Buffer.from(b));
    // The list of key IDs is MACed too, so no key can be added to or dropped from the message.
    const keyIds = Object.keys(mac).sort(compareByCodePoint);
    if (!same(sasMac(secret, keyIds.join(","), `${info}KEY_IDS`, this.macMethod), keysMac)) return this.cancelNow("m.key_mismatch");
    const other = this.opts.other;
    const known: Record<string, string> = { [`ed25519:${other.deviceId}`]: other.ed25519 };
    if (other.masterKey) known[`ed25519:${other.masterKey}`] = other.masterKey;
    const verified: string[] = [];
    for (const keyId of keyIds) {
      // Keys we were not told of at the start are skipped (as the Rust SDK does): only the keys
      // fixed at the beginning can be verified.
      const key = Object.hasOwn(known, keyId) ? known[keyId] : undefined;
      if (key === undefined) continue;
      if (!same(sasMac(secret, key, info + keyId, this.macMethod), mac[keyId]!)) return this.cancelNow("m.key_mismatch");
      verified.push(keyId);
    }
    if (verified.length === 0) return this.cancelNow("m.key_mismatch", "None of the other device's keys was MACed");
    this.theirVerifiedKeys = verified;
    if (this.stateValue === "confirmed") await this.sendDone();
  }

  private async sendDone(): Promise<void> {
    this.setState("done_sent");
    await this.sendMessage("m.key.verification.done", {});
  }
}
