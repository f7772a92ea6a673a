// Megolm (`m.megolm.v1.aes-sha2`), wire-compatible with libolm and vodozemac.
// Spec: https://gitlab.matrix.org/matrix-org/olm/-/blob/master/docs/megolm.md and
// https://spec.matrix.org/latest/client-server-api/#mmegolmv1aes-sha2
//
// The ratchet is four 32-byte parts R0..R3 and a 32-bit counter (the message index). Advancing it
// rehashes part j with HMAC-SHA-256(R_h, [j]) where h is the highest-order part whose counter byte
// changes, so R0 moves every 2^24 messages, R1 every 2^16, R2 every 2^8 and R3 every message; a
// receiver can jump forward by any distance in at most 4 × 256 HMACs, and nobody can go back.
//
// Each message's keys are HKDF-SHA-256(ratchet, salt "", "MEGOLM_KEYS") → AES-256 key | HMAC key |
// IV. A message is `0x03 | 0x08 varint(index) | 0x12 varint(len) ciphertext`, then the first 8
// bytes of its HMAC-SHA-256, then an Ed25519 signature (by the session's key) of all that.
import {
  aesCbcDecrypt,
  aesCbcEncrypt,
  bytesEqual,
  concatBytes,
  ed25519FromSeed,
  ed25519Generate,
  ed25519Sign,
  ed25519Verify,
  fromBase64,
  hkdfSha256,
  hmacSha256,
  randomBytes,
  toBase64,
  type Ed25519KeyPair,
} from "./primitives.ts";
import { OlmError, type MegolmInboundSession, type MegolmOutboundSession } from "./types.ts";

const PART_LENGTH = 32;
const PARTS = 4;
const RATCHET_LENGTH = PART_LENGTH * PARTS;
const HASH_SEEDS = [Uint8Array.of(0), Uint8Array.of(1), Uint8Array.of(2), Uint8Array.of(3)];
const MAX_INDEX = 0xffff_ffff;

const MESSAGE_VERSION = 3;
const MESSAGE_INDEX_TAG = 0x08; // field 1, varint
const CIPHERTEXT_TAG = 0x12; // field 2, length-delimited
const MAC_LENGTH = 8;
const SIGNATURE_LENGTH = 64;
const PUBLIC_KEY_LENGTH = 32;

const SESSION_KEY_VERSION = 2; // m.room_key: signed by the session's key
const EXPORT_VERSION = 1; // m.forwarded_room_key, key backup and export: unsigned
const SESSION_KEY_LENGTH = 1 + 4 + RATCHET_LENGTH + PUBLIC_KEY_LENGTH + SIGNATURE_LENGTH;
const EXPORT_LENGTH = 1 + 4 + RATCHET_LENGTH + PUBLIC_KEY_LENGTH;

const SERIALIZED_VERSION = 1;

/** R0..R3 at `counter`. Mutable: callers that must keep a ratchet advance a `copy()`. */
class Ratchet {
  constructor(
    readonly data: Uint8Array,
    public counter: number,
  ) {}

  copy(): Ratchet {
    return new Ratchet(this.data.slice(), this.counter);
  }

  private rehash(from: number, to: number): void {
    const key = this.data.subarray(from * PART_LENGTH, (from + 1) * PART_LENGTH);
    this.data.set(hmacSha256(key, HASH_SEEDS[to]!), to * PART_LENGTH);
  }

  /** One step (libolm's megolm_advance). */
  advance(): void {
    this.counter = (this.counter + 1) >>> 0;
    // h: the highest-order part whose byte of the counter changed (all lower bytes are zero).
    let h = 0;
    let mask = 0x00ff_ffff;
    while (h < PARTS && (this.counter & mask) !== 0) {
      h++;
      mask >>>= 8;
    }
    // From R3 down, so R_h is rehashed into itself last, after the parts below it were derived from its old value.
    for (let i = PARTS - 1; i >= h; i--) this.rehash(h, i);
  }

  /**
   * Jumps to `target` ≥ counter (libolm's megolm_advance_to): part j is rehashed in place once for
   * each step of its counter byte but the last, and the last step also reseeds the parts after it.
   */
  advanceTo(target: number): void {
    if (target < this.counter) throw new Error("a Megolm ratchet cannot go backwards");
    for (let j = 0; j < PARTS; j++) {
      const shift = (PARTS - j - 1) * 8;
      const steps = ((target >>> shift) - (this.counter >>> shift)) & 0xff;
      if (steps === 0) continue;
      for (let s = 1; s < steps; s++) this.rehash(j, j);
      for (let k = PARTS - 1; k >= j; k--) this.rehash(j, k);
      this.counter = (target & ((0xffff_ffff << shift) >>> 0)) >>> 0;
    }
  }
}

interface MessageKeys {
  aesKey: Uint8Array;
  macKey: Uint8Array;
  iv: Uint8Array;
}

function messageKeys(ratchet: Ratchet): MessageKeys {
  const keys = hkdfSha256(ratchet.data, new Uint8Array(0), "MEGOLM_KEYS", 80);
  return { aesKey: keys.subarray(0, 32), macKey: keys.subarray(32, 64), iv: keys.subarray(64, 80) };
}

function encodeVarint(value: number): Uint8Array {
  const out: number[] = [];
  let v = value;
  while (v >= 0x80) {
    out.push((v % 0x80) | 0x80);
    v = Math.floor(v / 0x80);
  }
  out.push(v);
  return Uint8Array.from(out);
}

/** A protobuf varint at `pos`: its value and the position after it (undefined when truncated or over 2^53). */
function decodeVarint(bytes: Uint8Array, pos: number): { value: number; next: number } | undefined {
  let value = 0;
  let scale = 1;
  for (let i = pos; i < bytes.length && i < pos + 8; i++) {
    const b = bytes[i]!;
    value += (b & 0x7f) * scale;
    if ((b & 0x80) === 0) return { value, next: i + 1 };
    scale *= 0x80;
  }
  return undefined;
}

function uint32BE(value: number): Uint8Array {
  const out = new Uint8Array(4);
  new DataView(out.buffer).setUint32(0, value);
  return out;
}

function readUint32BE(bytes: Uint8Array, offset: number): number {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(offset);
}

interface DecodedMessage {
  index: number;
  ciphertext: Uint8Array;
  /** Version byte through the ciphertext: what the MAC covers. */
  body: Uint8Array;
  mac: Uint8Array;
  /** Everything before the signature: what the signature covers. */
  signed: Uint8Array;
  signature: Uint8Array;
}

/**
 * Reads a group message. Fields other than the index and the ciphertext are skipped, as libolm's
 * decoder and vodozemac's protobuf decoder do, so a later minor version could add some.
 */
function decodeMessage(ciphertext: string): DecodedMessage {
  let bytes: Uint8Array;
  try {
    bytes = fromBase64(ciphertext);
  } catch {
    throw new OlmError("BAD_MESSAGE_FORMAT", "the Megolm message is not base64");
  }
  if (bytes.length < 1 + MAC_LENGTH + SIGNATURE_LENGTH) throw new OlmError("BAD_MESSAGE_FORMAT", "the Megolm message is too short");
  if (bytes[0] !== MESSAGE_VERSION) throw new OlmError("BAD_MESSAGE_FORMAT", `unknown Megolm message version ${bytes[0]}`);
  const bodyEnd = bytes.length - MAC_LENGTH - SIGNATURE_LENGTH;
  let index: number | undefined;
  let payload: Uint8Array | undefined;
  let pos = 1;
  while (pos < bodyEnd) {
    const tag = decodeVarint(bytes, pos);
    if (!tag || tag.next > bodyEnd) throw new OlmError("BAD_MESSAGE_FORMAT", "truncated field tag in the Megolm message");
    const wireType = tag.value % 8;
    if (wireType === 0) {
      const v = decodeVarint(bytes, tag.next);
      if (!v || v.next > bodyEnd) throw new OlmError("BAD_MESSAGE_FORMAT", "truncated varint in the Megolm message");
      if (tag.value === MESSAGE_INDEX_TAG) index = v.value;
      pos = v.next;
    } else if (wireType === 2) {
      const len = decodeVarint(bytes, tag.next);
      if (!len || len.next + len.value > bodyEnd) throw new OlmError("BAD_MESSAGE_FORMAT", "truncated field in the Megolm message");
      if (tag.value === CIPHERTEXT_TAG) payload = bytes.subarray(len.next, len.next + len.value);
      pos = len.next + len.value;
    } else {
      throw new OlmError("BAD_MESSAGE_FORMAT", `unsupported field type ${wireType} in the Megolm message`);
    }
  }
  if (index === undefined || payload === undefined) throw new OlmError("BAD_MESSAGE_FORMAT", "the Megolm message lacks its index or ciphertext");
  if (index > MAX_INDEX) throw new OlmError("BAD_MESSAGE_FORMAT", "the Megolm message index is over 2^32");
  return {
    index,
    ciphertext: payload,
    body: bytes.subarray(0, bodyEnd),
    mac: bytes.subarray(bodyEnd, bodyEnd + MAC_LENGTH),
    signed: bytes.subarray(0, bodyEnd + MAC_LENGTH),
    signature: bytes.subarray(bodyEnd + MAC_LENGTH),
  };
}

function checkRatchetState(data: Uint8Array, counter: unknown): number {
  if (data.length !== RATCHET_LENGTH) throw new Error("bad serialized Megolm ratchet");
  if (typeof counter !== "number" || !Number.isInteger(counter) || counter < 0 || counter > MAX_INDEX) throw new Error("bad serialized Megolm counter");
  return counter;
}

/** The sending side: a random ratchet at index 0 and a new Ed25519 key (whose public half is the session ID). */
class OutboundGroupSession implements MegolmOutboundSession {
  constructor(
    private readonly ratchet: Ratchet,
    private readonly signing: Ed25519KeyPair,
  ) {}

  sessionId(): string {
    return toBase64(this.signing.publicKey);
  }

  messageIndex(): number {
    return this.ratchet.counter;
  }

  sessionKey(): string {
    const unsigned = concatBytes(Uint8Array.of(SESSION_KEY_VERSION), uint32BE(this.ratchet.counter), this.ratchet.data, this.signing.publicKey);
    return toBase64(concatBytes(unsigned, ed25519Sign(this.signing.privateKey, unsigned)));
  }

  encrypt(plaintext: string): string {
    const keys = messageKeys(this.ratchet);
    const ciphertext = aesCbcEncrypt(keys.aesKey, keys.iv, new TextEncoder().encode(plaintext));
    const body = concatBytes(
      Uint8Array.of(MESSAGE_VERSION, MESSAGE_INDEX_TAG),
      encodeVarint(this.ratchet.counter),
      Uint8Array.of(CIPHERTEXT_TAG),
      encodeVarint(ciphertext.length),
      ciphertext,
    );
    const signed = concatBytes(body, hmacSha256(keys.macKey, body).subarray(0, MAC_LENGTH));
    const message = concatBytes(signed, ed25519Sign(this.signing.privateKey, signed));
    // The keys of an index are used once: the ratchet moves on before anything else can be encrypted.
    this.ratchet.advance();
    return toBase64(message);
  }

  serialize(): string {
    return JSON.stringify({
      version: SERIALIZED_VERSION,
      ratchet: toBase64(this.ratchet.data),
      counter: this.ratchet.counter,
      signingSeed: toBase64(this.signing.seed),
    });
  }
}

/** The receiving side: the earliest ratchet it was given (never advanced) and the latest one it reached. */
class InboundGroupSession implements MegolmInboundSession {
  constructor(
    private readonly initial: Ratchet,
    private latest: Ratchet,
    private readonly signingKey: Uint8Array,
  ) {}

  sessionId(): string {
    return toBase64(this.signingKey);
  }

  firstKnownIndex(): number {
    return this.initial.counter;
  }

  /** A ratchet at `index`: from the latest one when it is not past it (the usual in-order case), else a copy of the initial one. */
  private ratchetAt(index: number): Ratchet {
    if (index < this.initial.counter) {
      throw new OlmError("UNKNOWN_MESSAGE_INDEX", `message index ${index} is before this session's first known index ${this.initial.counter}`);
    }
    const ratchet = index >= this.latest.counter ? this.latest.copy() : this.initial.copy();
    ratchet.advanceTo(index);
    return ratchet;
  }

  decrypt(ciphertext: string): { plaintext: string; messageIndex: number } {
    const message = decodeMessage(ciphertext);
    // The signature first, as libolm and vodozemac do: whoever lacks the session's signing key
    // learns nothing from the answer, not even whether the index is known.
    if (!ed25519Verify(this.signingKey, message.signed, message.signature)) {
      throw new OlmError("BAD_SIGNATURE", "the Megolm message's signature does not match the session's key");
    }
    const ratchet = this.ratchetAt(message.index);
    const keys = messageKeys(ratchet);
    if (!bytesEqual(hmacSha256(keys.macKey, message.body).subarray(0, MAC_LENGTH), message.mac)) {
      throw new OlmError("BAD_MESSAGE_MAC", "the Megolm message's MAC does not match");
    }
    let plain: Uint8Array;
    try {
      plain = aesCbcDecrypt(keys.aesKey, keys.iv, message.ciphertext);
    } catch {
      throw new OlmError("BAD_MESSAGE_FORMAT", "the Megolm ciphertext's padding is corrupt");
    }
    if (ratchet.counter >= this.latest.counter) this.latest = ratchet;
    return { plaintext: new TextDecoder().decode(plain), messageIndex: message.index };
  }

  exportAt(messageIndex: number): string {
    if (!Number.isInteger(messageIndex) || messageIndex < 0 || messageIndex > MAX_INDEX) throw new RangeError("a Megolm message index is an integer in [0, 2^32)");
    const ratchet = this.ratchetAt(messageIndex);
    return toBase64(concatBytes(Uint8Array.of(EXPORT_VERSION), uint32BE(ratchet.counter), ratchet.data, this.signingKey));
  }

  serialize(): string {
    return JSON.stringify({
      version: SERIALIZED_VERSION,
      signingKey: toBase64(this.signingKey),
      initial: { ratchet: toBase64(this.initial.data), counter: this.initial.counter },
      latest: { ratchet: toBase64(this.latest.data), counter: this.latest.counter },
    });
  }
}

export function newOutboundGroupSession(): MegolmOutboundSession {
  return new OutboundGroupSession(new Ratchet(randomBytes(RATCHET_LENGTH), 0), ed25519Generate());
}

export function loadOutboundGroupSession(serialized: string): MegolmOutboundSession {
  const state = JSON.parse(serialized) as { version?: unknown; ratchet?: unknown; counter?: unknown; signingSeed?: unknown };
  if (state.version !== SERIALIZED_VERSION || typeof state.ratchet !== "string" || typeof state.signingSeed !== "string") {
    throw new Error("not a serialized Megolm outbound session");
  }
  const data = fromBase64(state.ratchet);
  const seed = fromBase64(state.signingSeed);
  if (seed.length !== 32) throw new Error("bad serialized Megolm signing key");
  return new OutboundGroupSession(new Ratchet(data, checkRatchetState(data, state.counter)), ed25519FromSeed(seed));
}

function decodeSessionKey(key: string, version: number, length: number): Uint8Array {
  let bytes: Uint8Array;
  try {
    bytes = fromBase64(key);
  } catch {
    throw new OlmError("BAD_SESSION_KEY", "the Megolm session key is not base64");
  }
  if (bytes.length !== length || bytes[0] !== version) {
    throw new OlmError("BAD_SESSION_KEY", `the Megolm session key is not version ${version} (${length} bytes)`);
  }
  return bytes;
}

function inboundFromKeyBytes(bytes: Uint8Array): InboundGroupSession {
  const counter = readUint32BE(bytes, 1);
  const data = bytes.slice(5, 5 + RATCHET_LENGTH);
  const signingKey = bytes.slice(5 + RATCHET_LENGTH, 5 + RATCHET_LENGTH + PUBLIC_KEY_LENGTH);
  return new InboundGroupSession(new Ratchet(data, counter), new Ratchet(data.slice(), counter), signingKey);
}

/** From the `session_key` of an `m.room_key`: refused (BAD_SESSION_KEY) unless signed by the key it carries. */
export function inboundGroupSessionFromKey(sessionKey: string): MegolmInboundSession {
  const bytes = decodeSessionKey(sessionKey, SESSION_KEY_VERSION, SESSION_KEY_LENGTH);
  const signedEnd = SESSION_KEY_LENGTH - SIGNATURE_LENGTH;
  const signingKey = bytes.subarray(signedEnd - PUBLIC_KEY_LENGTH, signedEnd);
  if (!ed25519Verify(signingKey, bytes.subarray(0, signedEnd), bytes.subarray(signedEnd))) {
    throw new OlmError("BAD_SESSION_KEY", "the Megolm session key's signature does not match its key");
  }
  return inboundFromKeyBytes(bytes);
}

/** From an exported key (`m.forwarded_room_key`, key backup, key export): unsigned, so only as trustworthy as whoever sent it. */
export function importInboundGroupSession(exportedKey: string): MegolmInboundSession {
  return inboundFromKeyBytes(decodeSessionKey(exportedKey, EXPORT_VERSION, EXPORT_LENGTH));
}

export function loadInboundGroupSession(serialized: string): MegolmInboundSession {
  const state = JSON.parse(serialized) as {
    version?: unknown;
    signingKey?: unknown;
    initial?: { ratchet?: unknown; counter?: unknown };
    latest?: { ratchet?: unknown; counter?: unknown };
  };
  if (
    state.version !== SERIALIZED_VERSION ||
    typeof state.signingKey !== "string" ||
    typeof state.initial?.ratchet !== "string" ||
    typeof state.latest?.ratchet !== "string"
  ) {
    throw new Error("not a serialized Megolm inbound session");
  }
  const signingKey = fromBase64(state.signingKey);
  if (signingKey.length !== PUBLIC_KEY_LENGTH) throw new Error("bad serialized Megolm signing key");
  const initialData = fromBase64(state.initial.ratchet);
  const latestData = fromBase64(state.latest.ratchet);
  const initial = new Ratchet(initialData, checkRatchetState(initialData, state.initial.counter));
  const latest = new Ratchet(latestData, checkRatchetState(latestData, state.latest.counter));
  if (latest.counter < initial.counter) throw new Error("bad serialized Megolm inbound session: latest ratchet before the initial one");
  return new InboundGroupSession(initial, latest, signingKey);
}
