// The shapes of the client's Olm and Megolm objects: what the E2EE layer (client/crypto/e2ee.ts)
// needs of them. `olm.ts` and `megolm.ts` implement them; the tests also wrap libolm
// (@towns-protocol/olm) in them to check our implementation against an independent one.
//
// Keys and ciphertexts are unpadded base64 strings, as they travel in Matrix JSON. Every object
// serializes to a JSON string of its whole state (our own format, not libolm's pickle), which the
// crypto store keeps encrypted at rest.

/** A failed decryption or a malformed message: the message is reported, never shown as valid. */
export class OlmError extends Error {
  override name = "OlmError";
  constructor(
    readonly code: "BAD_MESSAGE_FORMAT" | "BAD_MESSAGE_MAC" | "BAD_SIGNATURE" | "UNKNOWN_MESSAGE_INDEX" | "BAD_MESSAGE_KEY_ID" | "TOO_MANY_SKIPPED" | "BAD_SESSION_KEY",
    message: string,
  ) {
    super(message);
  }
}

export interface IdentityKeys {
  curve25519: string;
  ed25519: string;
}

/** An encrypted Olm message as it goes in `m.olm.v1.curve25519-aes-sha2` ciphertext: type 0 = pre-key. */
export interface OlmMessage {
  type: 0 | 1;
  body: string;
}

/** A device's long-term Olm identity and its one-time and fallback keys. */
export interface OlmAccount {
  identityKeys(): IdentityKeys;
  /** Ed25519 signature (unpadded base64) of the message with the device's fingerprint key. */
  sign(message: string | Uint8Array): string;
  /** Creates `count` new one-time keys (unpublished until `markKeysAsPublished`). */
  generateOneTimeKeys(count: number): void;
  /** The unpublished one-time keys: key ID (e.g. "AAAAAQ") → Curve25519 public key. */
  oneTimeKeys(): Record<string, string>;
  /** The most one-time keys the account keeps (older ones are forgotten past it). */
  maxNumberOfOneTimeKeys(): number;
  /** Creates a new fallback key; the previous one stays usable until `forgetOldFallbackKey`. */
  generateFallbackKey(): void;
  /** The fallback key not yet published: key ID → Curve25519 public key (empty when published). */
  unpublishedFallbackKey(): Record<string, string>;
  forgetOldFallbackKey(): void;
  /** Marks the current one-time keys and fallback key as published. */
  markKeysAsPublished(): void;
  /** A new session to a device, from its identity key and one of its one-time (or fallback) keys. */
  createOutboundSession(theirIdentityKey: string, theirOneTimeKey: string): OlmSession;
  /**
   * A new session from a pre-key message another device sent (its sender key is `theirIdentityKey`):
   * the message is decrypted and the one-time key it used is removed (a fallback key is kept).
   * Throws OlmError when the message is malformed or uses a key this account does not hold.
   */
  createInboundSession(theirIdentityKey: string, preKeyMessage: string): { session: OlmSession; plaintext: string };
  serialize(): string;
}

/** An Olm session (3DH + Double Ratchet) between two devices. */
export interface OlmSession {
  /** The session ID both ends agree on. */
  sessionId(): string;
  encrypt(plaintext: string): OlmMessage;
  /** Throws OlmError (the session is left unchanged) when the message does not decrypt. */
  decrypt(message: OlmMessage): string;
  /** Whether a pre-key message was sent by the other end of this session (same session keys). */
  matchesInboundSession(preKeyMessage: string): boolean;
  /** Whether this session has decrypted any message (an outbound session keeps sending pre-key messages until then). */
  hasReceivedMessage(): boolean;
  serialize(): string;
}

/** The sending side of a Megolm session (one per room at a time). */
export interface MegolmOutboundSession {
  sessionId(): string;
  /** The index of the next message this session will encrypt. */
  messageIndex(): number;
  /** The `session_key` of `m.room_key` (the ratchet at the current index, signed). */
  sessionKey(): string;
  /** The ciphertext of `m.megolm.v1.aes-sha2` (signed with the session's Ed25519 key). */
  encrypt(plaintext: string): string;
  serialize(): string;
}

/** The receiving side of a Megolm session. */
export interface MegolmInboundSession {
  sessionId(): string;
  /** The first message index this session can decrypt. */
  firstKnownIndex(): number;
  /**
   * Throws OlmError for a ciphertext that is malformed, has a bad MAC or signature, or an index
   * before `firstKnownIndex()`. Replay detection (the same index twice with different event IDs)
   * is the E2EE layer's job: it sees the index here.
   */
  decrypt(ciphertext: string): { plaintext: string; messageIndex: number };
  /** The `session_key` of `m.forwarded_room_key` / key export, from `messageIndex` on (unsigned export format). */
  exportAt(messageIndex: number): string;
  serialize(): string;
}

/** The constructors and loaders of one implementation (ours, or libolm wrapped for the tests). */
export interface OlmImplementation {
  newAccount(): OlmAccount;
  loadAccount(serialized: string): OlmAccount;
  loadSession(serialized: string): OlmSession;
  newOutboundGroupSession(): MegolmOutboundSession;
  loadOutboundGroupSession(serialized: string): MegolmOutboundSession;
  /** From the `session_key` of an `m.room_key` (signed format). */
  inboundGroupSessionFromKey(sessionKey: string): MegolmInboundSession;
  /** From an exported key (`m.forwarded_room_key`, key backup, key export: unsigned format). */
  importInboundGroupSession(exportedKey: string): MegolmInboundSession;
  loadInboundGroupSession(serialized: string): MegolmInboundSession;
}
