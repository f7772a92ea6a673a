// Olm, `m.olm.v1.curve25519-aes-sha2`: the device-to-device ratchet, wire-compatible with libolm
// and vodozemac.
//
// The reference is the Olm specification (matrix-org/olm docs/olm.md; cited below as "olm.md §…")
// and the Matrix spec's "Olm" section of End-to-End Encryption (client-server API, module
// end_to_end_encryption). Where the document leaves something to the implementation (key IDs, the
// session ID, the bounds on stored keys) we do what libolm does, since every other client reads
// what libolm and vodozemac write:
//
// - session ID: unpadded base64 of SHA-256(I_A || E_A || OTK_B) (Alice's identity key, her base
//   key, Bob's one-time key: libolm session.cpp `session_id`; Bob's identity key is NOT hashed);
// - one-time key IDs: unpadded base64 of a 32-bit big-endian counter starting at 1 ("AAAAAQ"),
//   shared with fallback keys;
// - at most 100 one-time keys (libolm's MAX_ONE_TIME_KEYS): generating past it forgets the oldest,
//   published or not. vodozemac answers 50 as its maximum but keeps up to 5,000 private keys, so a
//   key claimed long ago still works when its pre-key message finally arrives; with libolm's bound
//   the E2EE layer must not generate keys beyond what it publishes;
// - one current and one previous fallback key, never removed by use;
// - at most 5 receiver chains (newest first), a skip of at most 2000 messages in one chain
//   (libolm's and vodozemac's MAX_MESSAGE_GAP), and at most 40 skipped message keys kept per
//   receiver chain (vodozemac's bound; libolm keeps 40 over all chains together, so skips in a new
//   chain push out the keys still awaited in an older one; per chain is at most 200 keys in all).
//
// Every decryption computes its result on copies and commits to the session only once the MAC
// has verified, so a message that does not decrypt leaves the session exactly as it was.
//
// Errors: libolm answers BAD_MESSAGE_MAC for almost every failure of a well-formed message. We are
// more precise where it helps the E2EE layer tell a user what happened: a replay or a skipped key
// already forgotten is UNKNOWN_MESSAGE_INDEX, a skip past MAX_MESSAGE_GAP is TOO_MANY_SKIPPED.
import { z } from "zod";
import {
  aesCbcDecrypt,
  aesCbcEncrypt,
  bytesEqual,
  concatBytes,
  curve25519FromPrivate,
  curve25519Generate,
  type Curve25519KeyPair,
  type Ed25519KeyPair,
  ed25519FromSeed,
  ed25519Generate,
  ed25519Sign,
  fromBase64,
  hkdfSha256,
  hmacSha256,
  sha256,
  sodium,
  toBase64,
  x25519,
} from "./primitives.ts";
import { type IdentityKeys, type OlmAccount, OlmError, type OlmMessage, type OlmSession } from "./types.ts";

/** olm.md §"Normal Messages": the version byte of every message this protocol version writes. */
const PROTOCOL_VERSION = 3;
/** olm.md §"Olm Authenticated Encryption": the MAC is HMAC-SHA-256 truncated to 8 bytes. */
const MAC_LENGTH = 8;
const KEY_LENGTH = 32;

export const MAX_ONE_TIME_KEYS = 100;
export const MAX_RECEIVER_CHAINS = 5;
export const MAX_SKIPPED_MESSAGE_KEYS_PER_CHAIN = 40;
export const MAX_MESSAGE_GAP = 2000;

const ROOT_INFO = new TextEncoder().encode("OLM_ROOT");
const RATCHET_INFO = new TextEncoder().encode("OLM_RATCHET");
const KEYS_INFO = new TextEncoder().encode("OLM_KEYS");
const MESSAGE_KEY_SEED = new Uint8Array([0x01]);
const CHAIN_KEY_SEED = new Uint8Array([0x02]);
/** RFC 5869 §2.2: no salt means HashLen zero bytes (the same HMAC key as an empty one). */
const NO_SALT = new Uint8Array(32);

// ---------------------------------------------------------------------------------------------
// Key derivation (olm.md §"The Olm Algorithm")

/**
 * X25519 that refuses a low-order ("weak") public key, whose shared secret is all zeros whatever our
 * private key: libsodium throws a plain Error for it, which becomes an OlmError here. libolm accepts
 * such keys silently; vodozemac refuses them (non-contributory keys), as we do.
 */
function ecdh(ourPrivateKey: Uint8Array, theirPublicKey: Uint8Array, code: "BAD_MESSAGE_KEY_ID" | "BAD_MESSAGE_FORMAT"): Uint8Array {
  try {
    return x25519(ourPrivateKey, theirPublicKey);
  } catch {
    throw new OlmError(code, "a Curve25519 key of the other side is a low-order point");
  }
}

/** olm.md §"Initial setup": R_0 || C_0,0 = HKDF(salt 0, S, "OLM_ROOT", 64). */
function deriveInitialKeys(sharedSecret: Uint8Array): { rootKey: Uint8Array; chainKey: Uint8Array } {
  const derived = hkdfSha256(sharedSecret, NO_SALT, ROOT_INFO, 64);
  return { rootKey: derived.slice(0, 32), chainKey: derived.slice(32, 64) };
}

/** olm.md §"Advancing the root key": R_i || C_i,0 = HKDF(R_i-1, ECDH(T_i-1, T_i), "OLM_RATCHET", 64). */
function advanceRootKey(rootKey: Uint8Array, ourRatchetPrivate: Uint8Array, theirRatchetKey: Uint8Array): { rootKey: Uint8Array; chainKey: Uint8Array } {
  const derived = hkdfSha256(ecdh(ourRatchetPrivate, theirRatchetKey, "BAD_MESSAGE_FORMAT"), rootKey, RATCHET_INFO, 64);
  return { rootKey: derived.slice(0, 32), chainKey: derived.slice(32, 64) };
}

/** olm.md §"Advancing the chain key": C_i,j = HMAC-SHA256(C_i,j-1, "\x02"). */
function advanceChainKey(chainKey: Uint8Array): Uint8Array {
  return hmacSha256(chainKey, CHAIN_KEY_SEED);
}

/** olm.md §"Creating a message key": M_i,j = HMAC-SHA256(C_i,j, "\x01"). */
function messageKeyOf(chainKey: Uint8Array): Uint8Array {
  return hmacSha256(chainKey, MESSAGE_KEY_SEED);
}

/** olm.md §"Olm Authenticated Encryption": AES_KEY || HMAC_KEY || AES_IV = HKDF(0, M, "OLM_KEYS", 80). */
function cipherKeysOf(messageKey: Uint8Array): { aesKey: Uint8Array; macKey: Uint8Array; iv: Uint8Array } {
  const derived = hkdfSha256(messageKey, NO_SALT, KEYS_INFO, 80);
  return { aesKey: derived.subarray(0, 32), macKey: derived.subarray(32, 64), iv: derived.subarray(64, 80) };
}

// ---------------------------------------------------------------------------------------------
// Message encoding (olm.md §"The Olm Message Format"): a version byte, then protobuf-style fields
// (key = field number << 3 | wire type; wire type 0 is a varint, 2 a length-prefixed byte string).
// A normal message ends with the 8-byte MAC over everything before it; a pre-key message has no MAC
// of its own (the normal message inside it has one).

const TAG_RATCHET_KEY = 0x0a; // field 1, bytes
const TAG_COUNTER = 0x10; // field 2, varint
const TAG_CIPHERTEXT = 0x22; // field 4, bytes
const TAG_ONE_TIME_KEY = 0x0a; // field 1, bytes
const TAG_BASE_KEY = 0x12; // field 2, bytes
const TAG_IDENTITY_KEY = 0x1a; // field 3, bytes
const TAG_MESSAGE = 0x22; // field 4, bytes

function varint(value: number): number[] {
  const out: number[] = [];
  let v = value;
  while (v >= 0x80) {
    out.push((v % 0x80) | 0x80);
    v = Math.floor(v / 0x80);
  }
  out.push(v);
  return out;
}

function bytesField(tag: number, bytes: Uint8Array): Uint8Array {
  return concatBytes(new Uint8Array([tag, ...varint(bytes.length)]), bytes);
}

function badFormat(message: string): OlmError {
  return new OlmError("BAD_MESSAGE_FORMAT", message);
}

/**
 * Reads the fields of a message body. Unknown fields are skipped, as libolm and protobuf do (a later
 * protocol revision may add some); a truncated field or a wire type we cannot skip is malformed.
 */
function readFields(bytes: Uint8Array, start: number, end: number): Map<number, Uint8Array | number> {
  const fields = new Map<number, Uint8Array | number>();
  let pos = start;
  const readVarint = (): number => {
    let value = 0;
    let scale = 1;
    for (;;) {
      if (pos >= end) throw badFormat("truncated varint");
      const byte = bytes[pos++]!;
      value += (byte & 0x7f) * scale;
      if (value > 0xffffffff) throw badFormat("varint larger than 32 bits");
      if ((byte & 0x80) === 0) return value;
      scale *= 0x80;
    }
  };
  while (pos < end) {
    const key = readVarint();
    const wireType = key & 7;
    if (wireType === 0) {
      fields.set(key, readVarint());
    } else if (wireType === 2) {
      const length = readVarint();
      if (length > end - pos) throw badFormat("field runs past the end of the message");
      fields.set(key, bytes.subarray(pos, pos + length));
      pos += length;
    } else {
      throw badFormat(`unsupported wire type ${wireType}`);
    }
  }
  return fields;
}

function bytesOf(fields: Map<number, Uint8Array | number>, tag: number, name: string, length?: number): Uint8Array {
  const value = fields.get(tag);
  if (!(value instanceof Uint8Array)) throw badFormat(`missing ${name}`);
  if (length !== undefined && value.length !== length) throw badFormat(`${name} is not ${length} bytes`);
  return value;
}

function decodeBody(body: string): Uint8Array {
  try {
    return fromBase64(body);
  } catch {
    throw badFormat("message body is not base64");
  }
}

interface NormalMessage {
  ratchetKey: Uint8Array;
  counter: number;
  ciphertext: Uint8Array;
  /** The bytes the MAC covers (version byte and fields). */
  authenticated: Uint8Array;
  mac: Uint8Array;
}

function decodeNormalMessage(bytes: Uint8Array): NormalMessage {
  if (bytes.length < 1 + MAC_LENGTH) throw badFormat("message too short");
  if (bytes[0] !== PROTOCOL_VERSION) throw badFormat(`unsupported message version ${bytes[0]}`);
  const end = bytes.length - MAC_LENGTH;
  const fields = readFields(bytes, 1, end);
  const counter = fields.get(TAG_COUNTER);
  if (typeof counter !== "number") throw badFormat("missing chain index");
  return {
    ratchetKey: bytesOf(fields, TAG_RATCHET_KEY, "ratchet key", KEY_LENGTH),
    counter,
    ciphertext: bytesOf(fields, TAG_CIPHERTEXT, "ciphertext"),
    authenticated: bytes.subarray(0, end),
    mac: bytes.subarray(end),
  };
}

interface PreKeyMessage {
  oneTimeKey: Uint8Array;
  baseKey: Uint8Array;
  identityKey: Uint8Array;
  message: Uint8Array;
}

function decodePreKeyMessage(bytes: Uint8Array): PreKeyMessage {
  if (bytes.length < 1) throw badFormat("message too short");
  if (bytes[0] !== PROTOCOL_VERSION) throw badFormat(`unsupported message version ${bytes[0]}`);
  const fields = readFields(bytes, 1, bytes.length);
  return {
    oneTimeKey: bytesOf(fields, TAG_ONE_TIME_KEY, "one-time key", KEY_LENGTH),
    baseKey: bytesOf(fields, TAG_BASE_KEY, "base key", KEY_LENGTH),
    identityKey: bytesOf(fields, TAG_IDENTITY_KEY, "identity key", KEY_LENGTH),
    message: bytesOf(fields, TAG_MESSAGE, "message"),
  };
}

function decodeKey(text: string, what: string): Uint8Array {
  let key: Uint8Array;
  try {
    key = fromBase64(text);
  } catch {
    throw new OlmError("BAD_MESSAGE_KEY_ID", `${what} is not base64`);
  }
  if (key.length !== KEY_LENGTH) throw new OlmError("BAD_MESSAGE_KEY_ID", `${what} is not a Curve25519 key`);
  return key;
}

// ---------------------------------------------------------------------------------------------
// Session (olm.md §"The Olm Algorithm", §"The Olm Protocol")

interface SenderChain {
  ratchetKey: Curve25519KeyPair;
  chainKey: Uint8Array;
  index: number;
}

interface SkippedKey {
  index: number;
  messageKey: Uint8Array;
}

interface ReceiverChain {
  ratchetKey: Uint8Array;
  chainKey: Uint8Array;
  index: number;
  skipped: SkippedKey[];
}

interface SessionState {
  /** The three public keys the session ID is made of (the session ID itself is libolm's, not in olm.md). */
  aliceIdentityKey: Uint8Array;
  aliceBaseKey: Uint8Array;
  bobOneTimeKey: Uint8Array;
  receivedMessage: boolean;
  rootKey: Uint8Array;
  /** Absent after we received a new ratchet key and before we send again. */
  senderChain: SenderChain | undefined;
  /** Newest first. */
  receiverChains: ReceiverChain[];
}

/** The message key at `counter` of a chain whose key is `chainKey` at `index`, the chain key after it and the skipped keys worth keeping. */
function stepChainTo(chainKey: Uint8Array, index: number, counter: number): { messageKey: Uint8Array; nextChainKey: Uint8Array; skipped: SkippedKey[] } {
  const skipped: SkippedKey[] = [];
  let key = chainKey;
  // Only the last MAX_SKIPPED_MESSAGE_KEYS_PER_CHAIN skipped keys are kept, so earlier ones are not computed.
  const keepFrom = counter - MAX_SKIPPED_MESSAGE_KEYS_PER_CHAIN;
  for (let i = index; i < counter; i++) {
    if (i >= keepFrom) skipped.push({ index: i, messageKey: messageKeyOf(key) });
    key = advanceChainKey(key);
  }
  return { messageKey: messageKeyOf(key), nextChainKey: advanceChainKey(key), skipped };
}

const utf8 = new TextEncoder();
const utf8Decoder = new TextDecoder("utf-8", { fatal: true });

/**
 * olm.md §"Olm Authenticated Encryption": verifies the MAC first, then decrypts (BAD_MESSAGE_MAC).
 * The plaintext is decoded here, before the caller commits anything, so that even an authentic
 * message that is not UTF-8 leaves the session as it was.
 */
function verifyAndDecrypt(messageKey: Uint8Array, message: NormalMessage): string {
  const { aesKey, macKey, iv } = cipherKeysOf(messageKey);
  const mac = hmacSha256(macKey, message.authenticated).subarray(0, MAC_LENGTH);
  if (!bytesEqual(mac, message.mac)) throw new OlmError("BAD_MESSAGE_MAC", "message MAC does not verify");
  let plaintext: Uint8Array;
  try {
    plaintext = aesCbcDecrypt(aesKey, iv, message.ciphertext);
  } catch {
    // Reachable only with a sender that MACs bad padding: report it as the same failure.
    throw new OlmError("BAD_MESSAGE_MAC", "message does not decrypt");
  }
  try {
    return utf8Decoder.decode(plaintext);
  } catch {
    throw badFormat("plaintext is not UTF-8");
  }
}

class Session implements OlmSession {
  constructor(private state: SessionState) {}

  /** Alice's side: olm.md §"Initial setup", S = ECDH(I_A, E_B) || ECDH(E_A, I_B) || ECDH(E_A, E_B). */
  static outbound(ourIdentity: Curve25519KeyPair, theirIdentityKey: Uint8Array, theirOneTimeKey: Uint8Array): Session {
    const baseKey = curve25519Generate();
    const ratchetKey = curve25519Generate();
    const secret = concatBytes(
      ecdh(ourIdentity.privateKey, theirOneTimeKey, "BAD_MESSAGE_KEY_ID"),
      ecdh(baseKey.privateKey, theirIdentityKey, "BAD_MESSAGE_KEY_ID"),
      ecdh(baseKey.privateKey, theirOneTimeKey, "BAD_MESSAGE_KEY_ID"),
    );
    const { rootKey, chainKey } = deriveInitialKeys(secret);
    return new Session({
      aliceIdentityKey: ourIdentity.publicKey,
      aliceBaseKey: baseKey.publicKey,
      bobOneTimeKey: theirOneTimeKey,
      receivedMessage: false,
      rootKey,
      senderChain: { ratchetKey, chainKey, index: 0 },
      receiverChains: [],
    });
  }

  /** Bob's side, from Alice's pre-key message: the same three ECDHs with the roles swapped. */
  static inbound(ourIdentity: Curve25519KeyPair, ourOneTimeKey: Curve25519KeyPair, preKey: PreKeyMessage, theirRatchetKey: Uint8Array): Session {
    const secret = concatBytes(
      ecdh(ourOneTimeKey.privateKey, preKey.identityKey, "BAD_MESSAGE_KEY_ID"),
      ecdh(ourIdentity.privateKey, preKey.baseKey, "BAD_MESSAGE_KEY_ID"),
      ecdh(ourOneTimeKey.privateKey, preKey.baseKey, "BAD_MESSAGE_KEY_ID"),
    );
    // Their first ratchet key is only used in an exchange when we first reply: refuse a weak one
    // now, while refusing is still a failed session setup rather than a session that cannot send.
    ecdh(ourIdentity.privateKey, theirRatchetKey, "BAD_MESSAGE_FORMAT");
    const { rootKey, chainKey } = deriveInitialKeys(secret);
    return new Session({
      aliceIdentityKey: preKey.identityKey.slice(),
      aliceBaseKey: preKey.baseKey.slice(),
      bobOneTimeKey: preKey.oneTimeKey.slice(),
      receivedMessage: false,
      rootKey,
      senderChain: undefined,
      receiverChains: [{ ratchetKey: theirRatchetKey.slice(), chainKey, index: 0, skipped: [] }],
    });
  }

  sessionId(): string {
    const s = this.state;
    return toBase64(sha256(concatBytes(s.aliceIdentityKey, s.aliceBaseKey, s.bobOneTimeKey)));
  }

  hasReceivedMessage(): boolean {
    return this.state.receivedMessage;
  }

  encrypt(plaintext: string): OlmMessage {
    const s = this.state;
    if (!s.senderChain) {
      // olm.md §"Sending normal messages": the first message after receiving a new ratchet key
      // starts a new sender chain with a fresh ratchet key.
      const theirs = s.receiverChains[0];
      if (!theirs) throw new Error("Olm session has neither a sender nor a receiver chain");
      const ratchetKey = curve25519Generate();
      const next = advanceRootKey(s.rootKey, ratchetKey.privateKey, theirs.ratchetKey);
      s.rootKey = next.rootKey;
      s.senderChain = { ratchetKey, chainKey: next.chainKey, index: 0 };
    }
    const chain = s.senderChain;
    const counter = chain.index;
    const { aesKey, macKey, iv } = cipherKeysOf(messageKeyOf(chain.chainKey));
    chain.chainKey = advanceChainKey(chain.chainKey);
    chain.index += 1;

    const ciphertext = aesCbcEncrypt(aesKey, iv, utf8.encode(plaintext));
    const authenticated = concatBytes(
      new Uint8Array([PROTOCOL_VERSION]),
      bytesField(TAG_RATCHET_KEY, chain.ratchetKey.publicKey),
      new Uint8Array([TAG_COUNTER, ...varint(counter)]),
      bytesField(TAG_CIPHERTEXT, ciphertext),
    );
    const message = concatBytes(authenticated, hmacSha256(macKey, authenticated).subarray(0, MAC_LENGTH));
    if (s.receivedMessage) return { type: 1, body: toBase64(message) };
    // olm.md §"Sending the first pre-key messages": until the other side answers, every message
    // carries what it needs to set the session up.
    const preKey = concatBytes(
      new Uint8Array([PROTOCOL_VERSION]),
      bytesField(TAG_ONE_TIME_KEY, s.bobOneTimeKey),
      bytesField(TAG_BASE_KEY, s.aliceBaseKey),
      bytesField(TAG_IDENTITY_KEY, s.aliceIdentityKey),
      bytesField(TAG_MESSAGE, message),
    );
    return { type: 0, body: toBase64(preKey) };
  }

  decrypt(message: OlmMessage): string {
    if (message.type !== 0 && message.type !== 1) throw badFormat(`unknown Olm message type ${String(message.type)}`);
    let bytes = decodeBody(message.body);
    // A pre-key message to an existing session is decrypted by the message inside it (libolm does
    // the same: whether the pre-key message belongs to this session is `matchesInboundSession`).
    if (message.type === 0) bytes = decodePreKeyMessage(bytes).message;
    return this.decryptNormal(decodeNormalMessage(bytes));
  }

  private decryptNormal(message: NormalMessage): string {
    const s = this.state;
    const chain = s.receiverChains.find((c) => bytesEqual(c.ratchetKey, message.ratchetKey));

    if (!chain) {
      // olm.md §"Receiving messages": a ratchet key we have not seen starts their next chain.
      // They only move to a new chain after receiving one of ours, so without a sender chain the
      // message cannot be genuine.
      if (!s.senderChain) throw new OlmError("BAD_MESSAGE_MAC", "message on an unknown chain");
      if (message.counter > MAX_MESSAGE_GAP) throw new OlmError("TOO_MANY_SKIPPED", `message index ${message.counter} skips more than ${MAX_MESSAGE_GAP} messages`);
      const next = advanceRootKey(s.rootKey, s.senderChain.ratchetKey.privateKey, message.ratchetKey);
      const step = stepChainTo(next.chainKey, 0, message.counter);
      const plaintext = verifyAndDecrypt(step.messageKey, message);
      s.rootKey = next.rootKey;
      s.senderChain = undefined;
      s.receiverChains.unshift({ ratchetKey: message.ratchetKey.slice(), chainKey: step.nextChainKey, index: message.counter + 1, skipped: step.skipped });
      s.receiverChains.length = Math.min(s.receiverChains.length, MAX_RECEIVER_CHAINS);
      s.receivedMessage = true;
      return plaintext;
    }

    if (message.counter < chain.index) {
      // An earlier message of this chain: only decryptable if its key was skipped and kept.
      const at = chain.skipped.findIndex((k) => k.index === message.counter);
      if (at < 0) throw new OlmError("UNKNOWN_MESSAGE_INDEX", `message index ${message.counter} was already used or its key forgotten`);
      const plaintext = verifyAndDecrypt(chain.skipped[at]!.messageKey, message);
      chain.skipped.splice(at, 1);
      s.receivedMessage = true;
      return plaintext;
    }

    if (message.counter - chain.index > MAX_MESSAGE_GAP) {
      throw new OlmError("TOO_MANY_SKIPPED", `message index ${message.counter} skips more than ${MAX_MESSAGE_GAP} messages`);
    }
    const step = stepChainTo(chain.chainKey, chain.index, message.counter);
    const plaintext = verifyAndDecrypt(step.messageKey, message);
    chain.chainKey = step.nextChainKey;
    chain.index = message.counter + 1;
    chain.skipped.push(...step.skipped);
    if (chain.skipped.length > MAX_SKIPPED_MESSAGE_KEYS_PER_CHAIN) chain.skipped.splice(0, chain.skipped.length - MAX_SKIPPED_MESSAGE_KEYS_PER_CHAIN);
    s.receivedMessage = true;
    return plaintext;
  }

  matchesInboundSession(preKeyMessage: string): boolean {
    let preKey: PreKeyMessage;
    try {
      preKey = decodePreKeyMessage(fromBase64(preKeyMessage));
    } catch {
      return false;
    }
    const s = this.state;
    return bytesEqual(preKey.identityKey, s.aliceIdentityKey) && bytesEqual(preKey.baseKey, s.aliceBaseKey) && bytesEqual(preKey.oneTimeKey, s.bobOneTimeKey);
  }

  serialize(): string {
    const s = this.state;
    const serialized: SerializedSession = {
      version: 1,
      aliceIdentityKey: toBase64(s.aliceIdentityKey),
      aliceBaseKey: toBase64(s.aliceBaseKey),
      bobOneTimeKey: toBase64(s.bobOneTimeKey),
      receivedMessage: s.receivedMessage,
      rootKey: toBase64(s.rootKey),
      senderChain: s.senderChain
        ? {
            ratchetPublicKey: toBase64(s.senderChain.ratchetKey.publicKey),
            ratchetPrivateKey: toBase64(s.senderChain.ratchetKey.privateKey),
            chainKey: toBase64(s.senderChain.chainKey),
            index: s.senderChain.index,
          }
        : null,
      receiverChains: s.receiverChains.map((c) => ({
        ratchetKey: toBase64(c.ratchetKey),
        chainKey: toBase64(c.chainKey),
        index: c.index,
        skipped: c.skipped.map((k) => ({ index: k.index, messageKey: toBase64(k.messageKey) })),
      })),
    };
    return JSON.stringify(serialized);
  }

  static load(serialized: string): Session {
    const s = parseSerialized(SessionSchema, serialized, "session");
    const senderChain = s.senderChain ? { ratchetKey: { publicKey: s.senderChain.ratchetPublicKey, privateKey: s.senderChain.ratchetPrivateKey }, chainKey: s.senderChain.chainKey, index: s.senderChain.index } : undefined;
    if (!senderChain && s.receiverChains.length === 0) throw new Error("serialized Olm session has no chain");
    return new Session({
      aliceIdentityKey: s.aliceIdentityKey,
      aliceBaseKey: s.aliceBaseKey,
      bobOneTimeKey: s.bobOneTimeKey,
      receivedMessage: s.receivedMessage,
      rootKey: s.rootKey,
      senderChain,
      receiverChains: s.receiverChains,
    });
  }
}

// ---------------------------------------------------------------------------------------------
// Serialized state: our own JSON (not libolm's pickle), keys unpadded base64. The crypto store
// keeps it encrypted at rest. Loading checks every field, so a damaged store fails loudly here
// instead of producing a session that silently cannot decrypt.

const key32 = z.string().transform((text, ctx) => {
  try {
    const bytes = fromBase64(text);
    if (bytes.length === KEY_LENGTH) return bytes;
  } catch {
    // reported below
  }
  ctx.addIssue({ code: "custom", message: "not a base64 32-byte key" });
  return z.NEVER;
});
const index = z.number().int().min(0).max(0xffffffff);

const SessionSchema = z.object({
  version: z.literal(1),
  aliceIdentityKey: key32,
  aliceBaseKey: key32,
  bobOneTimeKey: key32,
  receivedMessage: z.boolean(),
  rootKey: key32,
  senderChain: z.object({ ratchetPublicKey: key32, ratchetPrivateKey: key32, chainKey: key32, index }).nullable(),
  receiverChains: z
    .array(
      z.object({
        ratchetKey: key32,
        chainKey: key32,
        index,
        skipped: z.array(z.object({ index, messageKey: key32 })).max(MAX_SKIPPED_MESSAGE_KEYS_PER_CHAIN),
      }),
    )
    .max(MAX_RECEIVER_CHAINS),
});
type SerializedSession = z.input<typeof SessionSchema>;

const StoredKeySchema = z.object({ id: index, publicKey: key32, privateKey: key32, published: z.boolean() });
const AccountSchema = z.object({
  version: z.literal(1),
  ed25519Seed: key32,
  curve25519PrivateKey: key32,
  nextKeyId: index,
  oneTimeKeys: z.array(StoredKeySchema).max(MAX_ONE_TIME_KEYS),
  fallbackKey: StoredKeySchema.nullable(),
  previousFallbackKey: StoredKeySchema.nullable(),
});
type SerializedAccount = z.input<typeof AccountSchema>;
type StoredKeyInput = z.input<typeof StoredKeySchema>;

function parseSerialized<T extends z.ZodType>(schema: T, serialized: string, what: string): z.output<T> {
  let json: unknown;
  try {
    json = JSON.parse(serialized);
  } catch {
    throw new Error(`serialized Olm ${what} is not JSON`);
  }
  const parsed = schema.safeParse(json);
  if (!parsed.success) throw new Error(`serialized Olm ${what} is invalid: ${parsed.error.issues.map((i) => `${i.path.join(".")}: ${i.message}`).join("; ")}`);
  return parsed.data;
}

// ---------------------------------------------------------------------------------------------
// Account (Matrix spec §"Device keys", §"One-time and fallback keys")

interface StoredKey {
  id: number;
  key: Curve25519KeyPair;
  published: boolean;
}

/** libolm's key ID: the 32-bit big-endian counter, unpadded base64 ("AAAAAQ" for 1). */
function keyIdOf(id: number): string {
  const bytes = new Uint8Array(4);
  new DataView(bytes.buffer).setUint32(0, id);
  return toBase64(bytes);
}

function storedKeyJson(k: StoredKey): StoredKeyInput {
  return { id: k.id, publicKey: toBase64(k.key.publicKey), privateKey: toBase64(k.key.privateKey), published: k.published };
}

class Account implements OlmAccount {
  constructor(
    private readonly ed25519: Ed25519KeyPair,
    private readonly curve25519: Curve25519KeyPair,
    /** Oldest first. */
    private oneTimeKeyList: StoredKey[],
    private nextKeyId: number,
    private fallbackKey: StoredKey | undefined,
    private previousFallbackKey: StoredKey | undefined,
  ) {}

  identityKeys(): IdentityKeys {
    return { curve25519: toBase64(this.curve25519.publicKey), ed25519: toBase64(this.ed25519.publicKey) };
  }

  sign(message: string | Uint8Array): string {
    return toBase64(ed25519Sign(this.ed25519.privateKey, message));
  }

  private newKey(): StoredKey {
    // libolm's IDs start at 1 and one counter serves one-time and fallback keys, so an ID is never reused.
    this.nextKeyId += 1;
    return { id: this.nextKeyId, key: curve25519Generate(), published: false };
  }

  generateOneTimeKeys(count: number): void {
    if (!Number.isInteger(count) || count < 0) throw new RangeError("one-time key count must be a non-negative integer");
    for (let i = 0; i < count; i++) this.oneTimeKeyList.push(this.newKey());
    // Past the bound the oldest keys are forgotten (libolm): a claim of one of them fails and the
    // sender falls back to our fallback key or another claim.
    if (this.oneTimeKeyList.length > MAX_ONE_TIME_KEYS) this.oneTimeKeyList.splice(0, this.oneTimeKeyList.length - MAX_ONE_TIME_KEYS);
  }

  oneTimeKeys(): Record<string, string> {
    const out: Record<string, string> = {};
    for (const k of this.oneTimeKeyList) if (!k.published) out[keyIdOf(k.id)] = toBase64(k.key.publicKey);
    return out;
  }

  maxNumberOfOneTimeKeys(): number {
    return MAX_ONE_TIME_KEYS;
  }

  generateFallbackKey(): void {
    this.previousFallbackKey = this.fallbackKey;
    this.fallbackKey = this.newKey();
  }

  unpublishedFallbackKey(): Record<string, string> {
    const k = this.fallbackKey;
    return k && !k.published ? { [keyIdOf(k.id)]: toBase64(k.key.publicKey) } : {};
  }

  forgetOldFallbackKey(): void {
    this.previousFallbackKey = undefined;
  }

  markKeysAsPublished(): void {
    for (const k of this.oneTimeKeyList) k.published = true;
    if (this.fallbackKey) this.fallbackKey.published = true;
  }

  createOutboundSession(theirIdentityKey: string, theirOneTimeKey: string): OlmSession {
    return Session.outbound(this.curve25519, decodeKey(theirIdentityKey, "identity key"), decodeKey(theirOneTimeKey, "one-time key"));
  }

  createInboundSession(theirIdentityKey: string, preKeyMessage: string): { session: OlmSession; plaintext: string } {
    const preKey = decodePreKeyMessage(decodeBody(preKeyMessage));
    if (!bytesEqual(preKey.identityKey, decodeKey(theirIdentityKey, "identity key"))) {
      throw new OlmError("BAD_MESSAGE_KEY_ID", "the pre-key message was not sent from this identity key");
    }
    const inner = decodeNormalMessage(preKey.message);
    const oneTimeKey = this.oneTimeKeyList.find((k) => bytesEqual(k.key.publicKey, preKey.oneTimeKey));
    // A fallback key is looked up after the one-time keys, current before previous (libolm lookup_key).
    const ourKey = oneTimeKey ?? [this.fallbackKey, this.previousFallbackKey].find((k) => k && bytesEqual(k.key.publicKey, preKey.oneTimeKey));
    if (!ourKey) throw new OlmError("BAD_MESSAGE_KEY_ID", "the pre-key message uses a one-time key this account does not hold");

    const session = Session.inbound(this.curve25519, ourKey.key, preKey, inner.ratchetKey);
    // olm.md §"Creating an inbound session from a pre-key message": the one-time key is discarded
    // only once the message authenticates, so a forged pre-key message cannot burn it.
    const plaintext = session.decrypt({ type: 0, body: preKeyMessage });
    if (oneTimeKey) this.oneTimeKeyList.splice(this.oneTimeKeyList.indexOf(oneTimeKey), 1);
    return { session, plaintext };
  }

  serialize(): string {
    const serialized: SerializedAccount = {
      version: 1,
      ed25519Seed: toBase64(this.ed25519.seed),
      curve25519PrivateKey: toBase64(this.curve25519.privateKey),
      nextKeyId: this.nextKeyId,
      oneTimeKeys: this.oneTimeKeyList.map(storedKeyJson),
      fallbackKey: this.fallbackKey ? storedKeyJson(this.fallbackKey) : null,
      previousFallbackKey: this.previousFallbackKey ? storedKeyJson(this.previousFallbackKey) : null,
    };
    return JSON.stringify(serialized);
  }

  static load(serialized: string): Account {
    const a = parseSerialized(AccountSchema, serialized, "account");
    const stored = (k: { id: number; publicKey: Uint8Array; privateKey: Uint8Array; published: boolean }): StoredKey => ({
      id: k.id,
      key: { publicKey: k.publicKey, privateKey: k.privateKey },
      published: k.published,
    });
    return new Account(
      ed25519FromSeed(a.ed25519Seed),
      curve25519FromPrivate(a.curve25519PrivateKey),
      a.oneTimeKeys.map(stored),
      a.nextKeyId,
      a.fallbackKey ? stored(a.fallbackKey) : undefined,
      a.previousFallbackKey ? stored(a.previousFallbackKey) : undefined,
    );
  }
}

// ---------------------------------------------------------------------------------------------
// Entry points (call `await cryptoReady()` from primitives.ts first)

/** A new device identity: Ed25519 fingerprint key and Curve25519 identity key, no one-time keys yet. */
export function newAccount(): OlmAccount {
  return new Account(ed25519Generate(), curve25519Generate(), [], 0, undefined, undefined);
}

/** An account from `OlmAccount.serialize()`; throws on anything else. */
export function loadAccount(serialized: string): OlmAccount {
  return Account.load(serialized);
}

/** A session from `OlmSession.serialize()`; throws on anything else. */
export function loadSession(serialized: string): OlmSession {
  return Session.load(serialized);
}

/** The Olm half of an OlmImplementation (megolm.ts provides the group-session half). */
export const olm = { newAccount, loadAccount, loadSession } as const;
