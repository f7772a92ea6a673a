// Olm (client/crypto/olm.ts) against libolm (@towns-protocol/olm, the C library built to wasm) as
// the independent implementation: sessions set up from either side, messages both ways through
// ratchet turns, out-of-order delivery, and what must fail (tampering, replays, used one-time keys).
import Olm, { type Account as LibAccount, type OlmImpl, type Session as LibSession } from "@towns-protocol/olm";
import { beforeAll, describe, expect, it } from "vitest";
import { loadAccount, loadSession, MAX_MESSAGE_GAP, MAX_ONE_TIME_KEYS, MAX_SKIPPED_MESSAGE_KEYS_PER_CHAIN, newAccount } from "../../client/crypto/olm.ts";
import { cryptoReady, fromBase64, sha256, toBase64 } from "../../client/crypto/primitives.ts";
import { type OlmAccount, OlmError, type OlmMessage, type OlmSession } from "../../client/crypto/types.ts";

let olm: OlmImpl;
beforeAll(async () => {
  await cryptoReady();
  olm = await Olm.initAsync();
});

function libAccount(): LibAccount {
  const account = new olm.Account();
  account.create();
  return account;
}

function libIdentity(account: LibAccount): string {
  return (JSON.parse(account.identity_keys()) as { curve25519: string }).curve25519;
}

function libOneTimeKey(account: LibAccount): string {
  account.generate_one_time_keys(1);
  const keys = (JSON.parse(account.one_time_keys()) as { curve25519: Record<string, string> }).curve25519;
  account.mark_keys_as_published();
  return Object.values(keys)[0]!;
}

function ourOneTimeKey(account: OlmAccount): string {
  account.generateOneTimeKeys(1);
  const key = Object.values(account.oneTimeKeys())[0]!;
  account.markKeysAsPublished();
  return key;
}

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    if (err instanceof OlmError) return err.code;
    throw err;
  }
  return undefined;
}

/** libolm as the "other end": a session plus the two operations the tests need. */
interface End {
  encrypt(plaintext: string): OlmMessage;
  decrypt(message: OlmMessage): string;
}
const libEnd = (session: LibSession): End => ({
  encrypt: (plaintext) => session.encrypt(plaintext) as OlmMessage,
  decrypt: (message) => session.decrypt(message.type, message.body),
});

/** Our account starts a session to libolm's; libolm answers the first pre-key message. */
function oursToLibolm(): { ours: OlmSession; theirs: LibSession; ourAccount: OlmAccount; libolmAccount: LibAccount } {
  const ourAccount = newAccount();
  const libolmAccount = libAccount();
  const ours = ourAccount.createOutboundSession(libIdentity(libolmAccount), libOneTimeKey(libolmAccount));
  const first = ours.encrypt("hello libolm");
  expect(first.type).toBe(0);
  const theirs = new olm.Session();
  theirs.create_inbound_from(libolmAccount, ourAccount.identityKeys().curve25519, first.body);
  expect(theirs.decrypt(first.type, first.body)).toBe("hello libolm");
  libolmAccount.remove_one_time_keys(theirs);
  return { ours, theirs, ourAccount, libolmAccount };
}

/** libolm starts a session to our account; ours answers the first pre-key message. */
function libolmToOurs(): { ours: OlmSession; theirs: LibSession; ourAccount: OlmAccount; libolmAccount: LibAccount } {
  const ourAccount = newAccount();
  const libolmAccount = libAccount();
  const theirs = new olm.Session();
  theirs.create_outbound(libolmAccount, ourAccount.identityKeys().curve25519, ourOneTimeKey(ourAccount));
  const first = theirs.encrypt("hello parley") as OlmMessage;
  expect(first.type).toBe(0);
  const { session: ours, plaintext } = ourAccount.createInboundSession(libIdentity(libolmAccount), first.body);
  expect(plaintext).toBe("hello parley");
  return { ours, theirs, ourAccount, libolmAccount };
}

/** Alternating bursts of 1 to 3 messages each way (every change of direction is a ratchet turn). */
function pingPong(a: { encrypt(p: string): OlmMessage; decrypt(m: OlmMessage): string }, b: End, turns: number): void {
  for (let turn = 0; turn < turns; turn++) {
    const [from, to] = turn % 2 === 0 ? [a, b] : [b, a];
    for (let i = 0; i <= turn % 3; i++) {
      const text = `turn ${turn} message ${i} ${"é".repeat(turn)}`;
      expect(to.decrypt(from.encrypt(text))).toBe(text);
    }
  }
}

describe("Olm sessions with libolm", () => {
  it("an outbound session of ours is accepted by libolm, and both ends agree on the session ID", () => {
    const { ours, theirs } = oursToLibolm();
    expect(ours.sessionId()).toBe(theirs.session_id());
    // Until libolm answers, we keep sending pre-key messages that libolm's session matches.
    const again = ours.encrypt("second");
    expect(again.type).toBe(0);
    expect(theirs.matches_inbound(again.body)).toBe(true);
    expect(theirs.decrypt(0, again.body)).toBe("second");
    expect(ours.hasReceivedMessage()).toBe(false);

    const reply = theirs.encrypt("reply") as OlmMessage;
    expect(reply.type).toBe(1);
    expect(ours.decrypt(reply)).toBe("reply");
    expect(ours.hasReceivedMessage()).toBe(true);
    expect(ours.encrypt("now a normal message").type).toBe(1);
  });

  it("an inbound session of ours from libolm's pre-key message", () => {
    const { ours, theirs } = libolmToOurs();
    expect(ours.sessionId()).toBe(theirs.session_id());
    expect(ours.hasReceivedMessage()).toBe(true);
    const reply = ours.encrypt("reply");
    expect(reply.type).toBe(1);
    expect(theirs.decrypt(reply.type, reply.body)).toBe("reply");
    expect(theirs.has_received_message()).toBe(true);
  });

  it("the session ID is SHA-256 of Alice's identity key, her base key and Bob's one-time key", () => {
    const { ours, ourAccount } = oursToLibolm();
    const preKey = fromBase64(ours.encrypt("x").body);
    // The pre-key message's fields at fixed offsets: one-time key, base key, identity key, each 32 bytes after a 2-byte header.
    const oneTimeKey = preKey.subarray(3, 35);
    const baseKey = preKey.subarray(37, 69);
    const identityKey = preKey.subarray(71, 103);
    expect(toBase64(identityKey)).toBe(ourAccount.identityKeys().curve25519);
    const ids = new Uint8Array([...identityKey, ...baseKey, ...oneTimeKey]);
    expect(ours.sessionId()).toBe(toBase64(sha256(ids)));
  });

  it("long exchanges in both setups stay in step through many ratchet turns", () => {
    const a = oursToLibolm();
    pingPong(a.ours, libEnd(a.theirs), 24);
    const b = libolmToOurs();
    pingPong(b.ours, libEnd(b.theirs), 24);
  });

  it("a randomised conversation with reordered delivery both ways decrypts every message on both ends", () => {
    // A seeded generator (mulberry32): a failure reproduces.
    let seed = 0x5eed;
    const random = () => {
      seed = (seed + 0x6d2b79f5) | 0;
      let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
      t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
      return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
    for (const setup of [oursToLibolm, libolmToOurs]) {
      const { ours, theirs } = setup();
      const ends = [ours, libEnd(theirs)];
      // queues[i]: messages from end i in flight to the other end. At most 3 wait (the oldest goes
      // first past that), which keeps every delay within 5 receiver chains and libolm's 40 skipped keys.
      const queues: Array<Array<{ text: string; message: OlmMessage }>> = [[], []];
      let delivered = 0;
      for (let step = 0; step < 300; step++) {
        const from = random() < 0.5 ? 0 : 1;
        if (random() < 0.5) {
          const text = `${from}:${step}`;
          queues[from]!.push({ text, message: ends[from]!.encrypt(text) });
        }
        const queue = queues[from]!;
        if (queue.length > 3 || (queue.length > 0 && random() < 0.4)) {
          const at = queue.length > 3 ? 0 : Math.floor(random() * queue.length);
          const [{ text, message }] = queue.splice(at, 1) as [{ text: string; message: OlmMessage }];
          expect(ends[1 - from]!.decrypt(message)).toBe(text);
          delivered++;
        }
      }
      for (const [from, queue] of queues.entries()) for (const { text, message } of queue) expect(ends[1 - from]!.decrypt(message)).toBe(text);
      expect(delivered).toBeGreaterThan(50);
    }
  });

  it("decrypts libolm's messages delivered out of order within a chain and across ratchet steps", () => {
    const { ours, theirs } = libolmToOurs();
    const chain1 = Array.from({ length: 5 }, (_, i) => ({ text: `c1-${i}`, message: theirs.encrypt(`c1-${i}`) as OlmMessage }));
    expect(ours.decrypt(chain1[3]!.message)).toBe("c1-3");
    expect(ours.decrypt(chain1[0]!.message)).toBe("c1-0");
    // A turn: we answer, libolm starts its next chain; the rest of chain 1 arrives afterwards.
    const answer = ours.encrypt("answer");
    expect(theirs.decrypt(answer.type, answer.body)).toBe("answer");
    const chain2 = Array.from({ length: 3 }, (_, i) => theirs.encrypt(`c2-${i}`) as OlmMessage);
    expect(ours.decrypt(chain2[2]!)).toBe("c2-2");
    expect(ours.decrypt(chain1[4]!.message)).toBe("c1-4");
    expect(ours.decrypt(chain2[0]!)).toBe("c2-0");
    expect(ours.decrypt(chain1[1]!.message)).toBe("c1-1");
    expect(ours.decrypt(chain1[2]!.message)).toBe("c1-2");
    expect(ours.decrypt(chain2[1]!)).toBe("c2-1");
  });

  it("libolm decrypts our messages delivered out of order within a chain and across ratchet steps", () => {
    const { ours, theirs } = libolmToOurs();
    const chain1 = Array.from({ length: 4 }, (_, i) => ours.encrypt(`c1-${i}`));
    expect(theirs.decrypt(chain1[2]!.type, chain1[2]!.body)).toBe("c1-2");
    const answer = theirs.encrypt("answer") as OlmMessage;
    expect(ours.decrypt(answer)).toBe("answer");
    const chain2 = Array.from({ length: 3 }, (_, i) => ours.encrypt(`c2-${i}`));
    expect(theirs.decrypt(chain2[1]!.type, chain2[1]!.body)).toBe("c2-1");
    expect(theirs.decrypt(chain1[0]!.type, chain1[0]!.body)).toBe("c1-0");
    expect(theirs.decrypt(chain1[3]!.type, chain1[3]!.body)).toBe("c1-3");
    expect(theirs.decrypt(chain2[0]!.type, chain2[0]!.body)).toBe("c2-0");
    expect(theirs.decrypt(chain1[1]!.type, chain1[1]!.body)).toBe("c1-1");
  });

  it("keeps the last 40 skipped keys of a chain and forgets older ones", () => {
    const { ours, theirs } = libolmToOurs();
    const messages = Array.from({ length: MAX_SKIPPED_MESSAGE_KEYS_PER_CHAIN + 2 }, (_, i) => theirs.encrypt(`m${i}`) as OlmMessage);
    expect(ours.decrypt(messages.at(-1)!)).toBe(`m${messages.length - 1}`);
    // 41 keys were skipped (indexes 1..41 of libolm's chain, the pre-key message was index 0); the oldest is gone.
    expect(codeOf(() => ours.decrypt(messages[0]!))).toBe("UNKNOWN_MESSAGE_INDEX");
    expect(ours.decrypt(messages[1]!)).toBe("m1");
    expect(ours.decrypt(messages[messages.length - 2]!)).toBe(`m${messages.length - 2}`);
  });

  it("keeps the 5 most recent receiver chains: a late message of the sixth-newest chain no longer decrypts", () => {
    const { ours, theirs } = libolmToOurs();
    const late = [theirs.encrypt("late 1") as OlmMessage, theirs.encrypt("late 2") as OlmMessage];
    const turn = () => {
      const ping = ours.encrypt("ping");
      theirs.decrypt(ping.type, ping.body);
      expect(ours.decrypt(theirs.encrypt("pong") as OlmMessage)).toBe("pong"); // a new chain of libolm's
    };
    for (let i = 0; i < 4; i++) turn();
    expect(ours.decrypt(late[0]!)).toBe("late 1"); // its chain is the oldest of five
    turn();
    const before = ours.serialize();
    expect(codeOf(() => ours.decrypt(late[1]!))).toBe("BAD_MESSAGE_MAC");
    expect(ours.serialize()).toBe(before);
  });

  it("refuses a skip past 2000 messages (TOO_MANY_SKIPPED) and still decrypts the next message in range", () => {
    const { ours, theirs } = libolmToOurs();
    let last: OlmMessage | undefined;
    for (let i = 0; i <= MAX_MESSAGE_GAP + 1; i++) last = theirs.encrypt(`m${i}`) as OlmMessage;
    expect(codeOf(() => ours.decrypt(last!))).toBe("TOO_MANY_SKIPPED");
    // One message fewer skipped is within the bound: a fresh chain from libolm after a turn.
    const answer = ours.encrypt("answer");
    theirs.decrypt(answer.type, answer.body);
    const fresh = theirs.encrypt("fresh") as OlmMessage;
    expect(ours.decrypt(fresh)).toBe("fresh");
  });

  it("a flipped ciphertext byte is BAD_MESSAGE_MAC and the session still decrypts the next good message", () => {
    const { ours, theirs } = libolmToOurs();
    const answer = ours.encrypt("answer");
    theirs.decrypt(answer.type, answer.body);
    const good = theirs.encrypt("good") as OlmMessage;
    expect(good.type).toBe(1);
    const bytes = fromBase64(good.body);
    bytes[bytes.length - 12]! ^= 0x01; // inside the ciphertext, before the 8-byte MAC
    const before = ours.serialize();
    expect(codeOf(() => ours.decrypt({ type: 1, body: toBase64(bytes) }))).toBe("BAD_MESSAGE_MAC");
    expect(ours.serialize()).toBe(before);
    expect(ours.decrypt(good)).toBe("good");

    // The same for a message whose key was skipped: a forgery does not use the key up.
    const skipped = theirs.encrypt("skipped") as OlmMessage;
    expect(ours.decrypt(theirs.encrypt("after") as OlmMessage)).toBe("after");
    const forged = fromBase64(skipped.body);
    forged[forged.length - 12]! ^= 0x01;
    expect(codeOf(() => ours.decrypt({ type: 1, body: toBase64(forged) }))).toBe("BAD_MESSAGE_MAC");
    expect(ours.decrypt(skipped)).toBe("skipped");
  });

  it("a tampered message starting a new chain changes nothing (root key and chains are kept)", () => {
    const { ours, theirs } = oursToLibolm();
    const reply = theirs.encrypt("new chain") as OlmMessage;
    const bytes = fromBase64(reply.body);
    bytes[bytes.length - 1]! ^= 0x80; // the MAC itself
    const before = ours.serialize();
    expect(codeOf(() => ours.decrypt({ type: 1, body: toBase64(bytes) }))).toBe("BAD_MESSAGE_MAC");
    expect(ours.serialize()).toBe(before);
    expect(ours.decrypt(reply)).toBe("new chain");
  });

  it("a replayed message fails", () => {
    const { ours, theirs } = libolmToOurs();
    const message = theirs.encrypt("once") as OlmMessage;
    expect(ours.decrypt(message)).toBe("once");
    expect(codeOf(() => ours.decrypt(message))).toBe("UNKNOWN_MESSAGE_INDEX");
    // And a skipped key, once used, is gone too.
    const a = theirs.encrypt("a") as OlmMessage;
    const b = theirs.encrypt("b") as OlmMessage;
    expect(ours.decrypt(b)).toBe("b");
    expect(ours.decrypt(a)).toBe("a");
    expect(codeOf(() => ours.decrypt(a))).toBe("UNKNOWN_MESSAGE_INDEX");
  });

  it("malformed messages are BAD_MESSAGE_FORMAT", () => {
    const { ours } = libolmToOurs();
    expect(codeOf(() => ours.decrypt({ type: 1, body: "not base64!" }))).toBe("BAD_MESSAGE_FORMAT");
    expect(codeOf(() => ours.decrypt({ type: 1, body: toBase64(new Uint8Array([3, 0x0a, 0x40, 1, 2, 3, 4, 5, 6, 7, 8])) }))).toBe("BAD_MESSAGE_FORMAT");
    expect(codeOf(() => ours.decrypt({ type: 1, body: toBase64(new Uint8Array([2, 1, 2, 3, 4, 5, 6, 7, 8, 9])) }))).toBe("BAD_MESSAGE_FORMAT");
  });

  it("refuses low-order Curve25519 keys (all-zero shared secrets) with an OlmError, changing nothing", () => {
    const zero = toBase64(new Uint8Array(32));
    const account = newAccount();
    expect(codeOf(() => account.createOutboundSession(zero, ourOneTimeKey(newAccount())))).toBe("BAD_MESSAGE_KEY_ID");

    // A reply on a "new chain" whose ratchet key is the zero point.
    const { ours, theirs } = oursToLibolm();
    const reply = fromBase64(theirs.encrypt("reply").body);
    reply.fill(0, 3, 35); // [version, tag, length, ratchet key...]
    const before = ours.serialize();
    expect(codeOf(() => ours.decrypt({ type: 1, body: toBase64(reply) }))).toBe("BAD_MESSAGE_FORMAT");
    expect(ours.serialize()).toBe(before);

    // A pre-key message whose first ratchet key is the zero point does not set up a session or burn the key.
    const bob = newAccount();
    const otk = ourOneTimeKey(bob);
    const sender = libAccount();
    const session = new olm.Session();
    session.create_outbound(sender, bob.identityKeys().curve25519, otk);
    const preKey = fromBase64(session.encrypt("hi").body);
    let inner = 104; // after the three 34-byte key fields and the message tag: the message's length varint
    while (preKey[inner]! & 0x80) inner++;
    inner++;
    const forged = preKey.slice();
    forged.fill(0, inner + 3, inner + 35);
    expect(codeOf(() => bob.createInboundSession(libIdentity(sender), toBase64(forged)))).toBe("BAD_MESSAGE_FORMAT");
    expect(bob.createInboundSession(libIdentity(sender), toBase64(preKey)).plaintext).toBe("hi");
  });

  it("serialized mid-conversation, both kinds of session carry on after loading", () => {
    const a = oursToLibolm();
    pingPong(a.ours, libEnd(a.theirs), 5);
    const pending = a.theirs.encrypt("sent before the save") as OlmMessage;
    const skipped = a.theirs.encrypt("skipped before the save") as OlmMessage;
    const afterSkip = a.theirs.encrypt("after the skip") as OlmMessage;
    expect(a.ours.decrypt(afterSkip)).toBe("after the skip");
    const reloaded = loadSession(a.ours.serialize());
    expect(reloaded.sessionId()).toBe(a.ours.sessionId());
    expect(reloaded.hasReceivedMessage()).toBe(true);
    expect(reloaded.decrypt(skipped)).toBe("skipped before the save");
    expect(reloaded.decrypt(pending)).toBe("sent before the save");
    pingPong(reloaded, libEnd(a.theirs), 6);

    // An outbound session saved before it heard back still sends pre-key messages.
    const ourAccount = newAccount();
    const libolmAccount = libAccount();
    const fresh = loadSession(ourAccount.createOutboundSession(libIdentity(libolmAccount), libOneTimeKey(libolmAccount)).serialize());
    const first = fresh.encrypt("from a loaded session");
    expect(first.type).toBe(0);
    const theirs = new olm.Session();
    theirs.create_inbound(libolmAccount, first.body);
    expect(theirs.decrypt(0, first.body)).toBe("from a loaded session");
  });

  it("refuses a damaged serialized session or account", () => {
    const { ours, ourAccount } = libolmToOurs();
    const session = JSON.parse(ours.serialize()) as Record<string, unknown>;
    expect(() => loadSession(JSON.stringify({ ...session, rootKey: "AAAA" }))).toThrow(/rootKey/);
    expect(() => loadSession("{")).toThrow(/not JSON/);
    const account = JSON.parse(ourAccount.serialize()) as Record<string, unknown>;
    expect(() => loadAccount(JSON.stringify({ ...account, version: 2 }))).toThrow(/version/);
  });
});

describe("Olm account", () => {
  it("identity keys and signatures verify with libolm's ed25519_verify", () => {
    const account = newAccount();
    const keys = account.identityKeys();
    expect(fromBase64(keys.curve25519)).toHaveLength(32);
    const utility = new olm.Utility();
    const message = '{"algorithms":["m.olm.v1.curve25519-aes-sha2"],"device_id":"DEV"}';
    utility.ed25519_verify(keys.ed25519, message, account.sign(message));
    utility.ed25519_verify(keys.ed25519, new Uint8Array([1, 2, 3]), account.sign(new Uint8Array([1, 2, 3])));
    expect(() => utility.ed25519_verify(keys.ed25519, message + " ", account.sign(message))).toThrow(/BAD_MESSAGE_MAC/);
    // And a reloaded account signs with the same key.
    utility.ed25519_verify(keys.ed25519, message, loadAccount(account.serialize()).sign(message));
  });

  it("numbers one-time keys like libolm, shows only unpublished ones and keeps at most 100", () => {
    const account = newAccount();
    account.generateOneTimeKeys(2);
    expect(Object.keys(account.oneTimeKeys())).toEqual(["AAAAAQ", "AAAAAg"]);
    account.markKeysAsPublished();
    expect(account.oneTimeKeys()).toEqual({});
    account.generateFallbackKey();
    expect(Object.keys(account.unpublishedFallbackKey())).toEqual(["AAAAAw"]);
    account.generateOneTimeKeys(1);
    expect(Object.keys(account.oneTimeKeys())).toEqual(["AAAABA"]);

    expect(account.maxNumberOfOneTimeKeys()).toBe(MAX_ONE_TIME_KEYS);
    expect(account.maxNumberOfOneTimeKeys()).toBe(libAccount().max_number_of_one_time_keys());
    const first = Object.values(account.oneTimeKeys())[0]!;
    account.generateOneTimeKeys(MAX_ONE_TIME_KEYS);
    const keys = account.oneTimeKeys();
    expect(Object.keys(keys)).toHaveLength(MAX_ONE_TIME_KEYS);
    expect(Object.values(keys)).not.toContain(first);
    // The forgotten key cannot start a session any more.
    const libolmAccount = libAccount();
    const session = new olm.Session();
    session.create_outbound(libolmAccount, account.identityKeys().curve25519, first);
    const message = session.encrypt("to a forgotten key");
    expect(codeOf(() => account.createInboundSession(libIdentity(libolmAccount), message.body))).toBe("BAD_MESSAGE_KEY_ID");
  });

  it("a one-time key is removed after use: a second session on it fails, and a failed one does not burn it", () => {
    const ourAccount = newAccount();
    const otk = ourOneTimeKey(ourAccount);
    const ourIdentity = ourAccount.identityKeys().curve25519;
    const sender = libAccount();

    // A forged pre-key message (bad MAC) on the key leaves the key usable.
    const forger = new olm.Session();
    forger.create_outbound(sender, ourIdentity, otk);
    const forged = fromBase64(forger.encrypt("forged").body);
    forged[forged.length - 1]! ^= 0x01;
    expect(codeOf(() => ourAccount.createInboundSession(libIdentity(sender), toBase64(forged)))).toBe("BAD_MESSAGE_MAC");

    const first = new olm.Session();
    first.create_outbound(sender, ourIdentity, otk);
    expect(ourAccount.createInboundSession(libIdentity(sender), first.encrypt("one").body).plaintext).toBe("one");
    const second = new olm.Session();
    second.create_outbound(sender, ourIdentity, otk);
    expect(codeOf(() => ourAccount.createInboundSession(libIdentity(sender), second.encrypt("two").body))).toBe("BAD_MESSAGE_KEY_ID");
    // The removal survives serialization.
    expect(codeOf(() => loadAccount(ourAccount.serialize()).createInboundSession(libIdentity(sender), second.encrypt("two").body))).toBe("BAD_MESSAGE_KEY_ID");
  });

  it("a pre-key message from another identity key than claimed is refused", () => {
    const ourAccount = newAccount();
    const sender = libAccount();
    const session = new olm.Session();
    session.create_outbound(sender, ourAccount.identityKeys().curve25519, ourOneTimeKey(ourAccount));
    const message = session.encrypt("hi");
    expect(codeOf(() => ourAccount.createInboundSession(libIdentity(libAccount()), message.body))).toBe("BAD_MESSAGE_KEY_ID");
  });

  it("a fallback key serves several sessions and stays, and the previous one works until forgotten", () => {
    const ourAccount = newAccount();
    ourAccount.generateFallbackKey();
    const fallback = Object.values(ourAccount.unpublishedFallbackKey())[0]!;
    ourAccount.markKeysAsPublished();
    expect(ourAccount.unpublishedFallbackKey()).toEqual({});
    const ourIdentity = ourAccount.identityKeys().curve25519;
    const startFrom = (account: OlmAccount, key: string, text: string) => {
      const sender = libAccount();
      const session = new olm.Session();
      session.create_outbound(sender, ourIdentity, key);
      return () => account.createInboundSession(libIdentity(sender), session.encrypt(text).body).plaintext;
    };
    expect(startFrom(ourAccount, fallback, "first")()).toBe("first");
    expect(startFrom(ourAccount, fallback, "second")()).toBe("second");

    ourAccount.generateFallbackKey();
    const reloaded = loadAccount(ourAccount.serialize());
    expect(startFrom(reloaded, fallback, "previous still works")()).toBe("previous still works");
    reloaded.forgetOldFallbackKey();
    expect(codeOf(startFrom(reloaded, fallback, "forgotten"))).toBe("BAD_MESSAGE_KEY_ID");
    const current = Object.values(reloaded.unpublishedFallbackKey())[0]!;
    expect(startFrom(reloaded, current, "current")()).toBe("current");
  });

  it("libolm starts sessions on our keys after a reload, and our sessions reach libolm's fallback key", () => {
    const ourAccount = loadAccount(newAccount().serialize());
    const otk = ourOneTimeKey(ourAccount);
    const reloaded = loadAccount(ourAccount.serialize());
    const sender = libAccount();
    const session = new olm.Session();
    session.create_outbound(sender, reloaded.identityKeys().curve25519, otk);
    const { session: ours } = reloaded.createInboundSession(libIdentity(sender), session.encrypt("after reload").body);
    pingPong(ours, libEnd(session), 4);

    const libolmAccount = libAccount();
    libolmAccount.generate_fallback_key();
    const fallback = Object.values((JSON.parse(libolmAccount.unpublished_fallback_key()) as { curve25519: Record<string, string> }).curve25519)[0]!;
    const outbound = reloaded.createOutboundSession(libIdentity(libolmAccount), fallback);
    const first = outbound.encrypt("to a fallback key");
    const inbound = new olm.Session();
    inbound.create_inbound(libolmAccount, first.body);
    expect(inbound.decrypt(0, first.body)).toBe("to a fallback key");
  });
});
