// libolm (@towns-protocol/olm, the C library built to wasm) wrapped in the OlmImplementation of
// client/crypto/types.ts: the independent implementation the tests run the E2EE machine on and check
// ours against. Serialized state is libolm's pickle (under a fixed key: these are test objects) inside
// a JSON string, as types.ts asks for a JSON string. Objects are never freed: tests are short-lived.
import Olm, { type Account, type InboundGroupSession, type OutboundGroupSession, type Session } from "@towns-protocol/olm";
import {
  type IdentityKeys,
  type MegolmInboundSession,
  type MegolmOutboundSession,
  type OlmAccount,
  OlmError,
  type OlmImplementation,
  type OlmMessage,
  type OlmSession,
} from "../../client/crypto/types.ts";

type LibOlm = Awaited<ReturnType<typeof Olm.initAsync>>;
const PICKLE_KEY = "parley-test-pickle-key";

let loaded: Promise<LibOlm> | undefined;

/** libolm's errors are Error("OLM.BAD_MESSAGE_MAC") and the like: the code is kept, the rest is OlmError. */
function wrapError(err: unknown): never {
  const text = String((err as Error)?.message ?? err);
  const code = /([A-Z_]{5,})/.exec(text)?.[1];
  const known = ["BAD_MESSAGE_FORMAT", "BAD_MESSAGE_MAC", "BAD_SIGNATURE", "UNKNOWN_MESSAGE_INDEX", "BAD_MESSAGE_KEY_ID", "BAD_SESSION_KEY"] as const;
  const match = known.find((k) => k === code);
  // BAD_MESSAGE_VERSION, INVALID_BASE64 and the like: a message that is not one.
  throw new OlmError(match ?? "BAD_MESSAGE_FORMAT", text);
}

function guard<T>(fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    wrapError(err);
  }
}

function pickled(kind: string, pickle: string): string {
  return JSON.stringify({ libolm: kind, pickle });
}

function unpickled(kind: string, serialized: string): string {
  const parsed = JSON.parse(serialized) as { libolm?: string; pickle?: string };
  if (parsed.libolm !== kind || typeof parsed.pickle !== "string") throw new Error(`not a libolm ${kind}`);
  return parsed.pickle;
}

function wrapSession(session: Session): OlmSession {
  return {
    sessionId: () => session.session_id(),
    encrypt: (plaintext) => session.encrypt(plaintext) as OlmMessage,
    decrypt: (message) => guard(() => session.decrypt(message.type, message.body)),
    matchesInboundSession: (preKeyMessage) => {
      try {
        return session.matches_inbound(preKeyMessage);
      } catch {
        return false;
      }
    },
    hasReceivedMessage: () => session.has_received_message(),
    serialize: () => pickled("session", session.pickle(PICKLE_KEY)),
  };
}

function wrapAccount(olm: LibOlm, account: Account): OlmAccount {
  return {
    identityKeys: () => JSON.parse(account.identity_keys()) as IdentityKeys,
    sign: (message) => account.sign(message),
    generateOneTimeKeys: (count) => account.generate_one_time_keys(count),
    oneTimeKeys: () => (JSON.parse(account.one_time_keys()) as { curve25519: Record<string, string> }).curve25519,
    maxNumberOfOneTimeKeys: () => account.max_number_of_one_time_keys(),
    generateFallbackKey: () => account.generate_fallback_key(),
    unpublishedFallbackKey: () => (JSON.parse(account.unpublished_fallback_key()) as { curve25519: Record<string, string> }).curve25519,
    forgetOldFallbackKey: () => account.forget_old_fallback_key(),
    markKeysAsPublished: () => account.mark_keys_as_published(),
    createOutboundSession: (theirIdentityKey, theirOneTimeKey) => {
      const session = new olm.Session();
      guard(() => session.create_outbound(account, theirIdentityKey, theirOneTimeKey));
      return wrapSession(session);
    },
    createInboundSession: (theirIdentityKey, preKeyMessage) => {
      const session = new olm.Session();
      guard(() => session.create_inbound_from(account, theirIdentityKey, preKeyMessage));
      const plaintext = guard(() => session.decrypt(0, preKeyMessage));
      account.remove_one_time_keys(session);
      return { session: wrapSession(session), plaintext };
    },
    serialize: () => pickled("account", account.pickle(PICKLE_KEY)),
  };
}

function wrapOutbound(group: OutboundGroupSession): MegolmOutboundSession {
  return {
    sessionId: () => group.session_id(),
    messageIndex: () => group.message_index(),
    sessionKey: () => group.session_key(),
    encrypt: (plaintext) => group.encrypt(plaintext),
    serialize: () => pickled("outbound", group.pickle(PICKLE_KEY)),
  };
}

function wrapInbound(group: InboundGroupSession): MegolmInboundSession {
  return {
    sessionId: () => group.session_id(),
    firstKnownIndex: () => group.first_known_index(),
    decrypt: (ciphertext) => {
      const { plaintext, message_index } = guard(() => group.decrypt(ciphertext));
      return { plaintext, messageIndex: message_index };
    },
    exportAt: (messageIndex) => guard(() => group.export_session(messageIndex)),
    serialize: () => pickled("inbound", group.pickle(PICKLE_KEY)),
  };
}

/** libolm as an OlmImplementation (loads the wasm once). */
export async function libolmImplementation(): Promise<OlmImplementation> {
  loaded ??= Olm.initAsync();
  const olm = await loaded;
  return {
    newAccount() {
      const account = new olm.Account();
      account.create();
      return wrapAccount(olm, account);
    },
    loadAccount(serialized) {
      const account = new olm.Account();
      account.unpickle(PICKLE_KEY, unpickled("account", serialized));
      return wrapAccount(olm, account);
    },
    loadSession(serialized) {
      const session = new olm.Session();
      session.unpickle(PICKLE_KEY, unpickled("session", serialized));
      return wrapSession(session);
    },
    newOutboundGroupSession() {
      const group = new olm.OutboundGroupSession();
      group.create();
      return wrapOutbound(group);
    },
    loadOutboundGroupSession(serialized) {
      const group = new olm.OutboundGroupSession();
      group.unpickle(PICKLE_KEY, unpickled("outbound", serialized));
      return wrapOutbound(group);
    },
    inboundGroupSessionFromKey(sessionKey) {
      const group = new olm.InboundGroupSession();
      guard(() => group.create(sessionKey));
      return wrapInbound(group);
    },
    importInboundGroupSession(exportedKey) {
      const group = new olm.InboundGroupSession();
      guard(() => group.import_session(exportedKey));
      return wrapInbound(group);
    },
    loadInboundGroupSession(serialized) {
      const group = new olm.InboundGroupSession();
      group.unpickle(PICKLE_KEY, unpickled("inbound", serialized));
      return wrapInbound(group);
    },
  };
}
