// The client's end-to-end crypto on one core: operations per second of our implementation
// (client/crypto/) and of libolm (@towns-protocol/olm, a wasm build) in the same run, on the same
// payloads.
// - Megolm encrypt: one room event (~200 bytes of JSON) per operation, the ratchet advancing each time.
// - Megolm decrypt, in order: the messages just encrypted, in the order sent (the live timeline).
// - Megolm decrypt, history: random indices among the first 10,000 of a session (scrolling back), each
//   a jump from the session's first known ratchet or the latest it reached (at most 4 × 256 HMACs).
// - Olm (to-device): encrypt, decrypt in order on one chain, a round trip where every message is a
//   ratchet turn, and a session set up at both ends (outbound, first pre-key message, inbound).
// Run: `npx tsx bench/client-crypto.bench.ts` (about 20 s). Ends with one BENCH_RESULT line.
import Olm from "@towns-protocol/olm";
import { inboundGroupSessionFromKey, newOutboundGroupSession } from "../client/crypto/megolm.ts";
import { newAccount } from "../client/crypto/olm.ts";
import { cryptoReady } from "../client/crypto/primitives.ts";
import type { OlmMessage } from "../client/crypto/types.ts";

const SECONDS = Number(process.env.BENCH_CLIENT_CRYPTO_SECONDS ?? 2);
const HISTORY = 10_000;

/** Runs `op` for about SECONDS after a short warm-up; answers operations per second. */
function measure(op: (i: number) => unknown): number {
  const warmUntil = performance.now() + 200;
  let i = 0;
  while (performance.now() < warmUntil) op(i++);
  const start = performance.now();
  const end = start + SECONDS * 1000;
  let count = 0;
  while (performance.now() < end) {
    for (let k = 0; k < 16; k++) op(i + count++);
  }
  return Math.round(count / ((performance.now() - start) / 1000));
}

/** Runs `op` once for each item (a fixed workload: messages can be decrypted once in order); answers operations per second. */
function measureEach<T>(items: T[], op: (item: T) => unknown): number {
  const start = performance.now();
  for (const item of items) op(item);
  return Math.round(items.length / ((performance.now() - start) / 1000));
}

const results: Array<{ name: string; value: number; unit: string }> = [];
function record(name: string, value: number) {
  results.push({ name, value, unit: "ops/s" });
  process.stdout.write(`  ${name.padEnd(48)} ${value.toLocaleString("en").padStart(10)} ops/s\n`);
}

await cryptoReady();
const olm = await Olm.initAsync();

const event = JSON.stringify({
  type: "m.room.message",
  content: { msgtype: "m.text", body: "A short chat message, as most of a room's timeline is." },
  room_id: "!Nhcu5BS-UMnFX7hBVfVSoXiD7OgH6iRT-xyIuqDnpYQ",
});
process.stdout.write(`client crypto benchmarks, one core, ${SECONDS} s each, ${event.length}-byte event\n`);

// ---- Olm (helper A) ----
// A to-device payload (an m.room_key-sized JSON). "encrypt" / "decrypt in order" stay on one chain
// (one direction: HMAC, HKDF and AES per message); "round trip" alternates directions, so every
// message is a ratchet turn (a new X25519 key and an exchange on each side).
{
  const payload = JSON.stringify({
    algorithm: "m.olm.v1.curve25519-aes-sha2",
    type: "m.room_key",
    content: { algorithm: "m.megolm.v1.aes-sha2", room_id: "!Nhcu5BS-UMnFX7hBVfVSoXiD7OgH6iRT-xyIuqDnpYQ", session_id: "x".repeat(43), session_key: "y".repeat(308) },
  });
  type Pair = { aEncrypt(p: string): OlmMessage; bDecrypt(m: OlmMessage): string; bEncrypt(p: string): OlmMessage; aDecrypt(m: OlmMessage): string };

  // Ours ↔ ours, past the pre-key exchange so every message is a normal one.
  const alice = newAccount();
  const bob = newAccount();
  bob.generateOneTimeKeys(1);
  const ourOut = alice.createOutboundSession(bob.identityKeys().curve25519, Object.values(bob.oneTimeKeys())[0]!);
  const ourIn = bob.createInboundSession(alice.identityKeys().curve25519, ourOut.encrypt("setup").body).session;
  ourOut.decrypt(ourIn.encrypt("setup"));
  const ours: Pair = { aEncrypt: (p) => ourOut.encrypt(p), bDecrypt: (m) => ourIn.decrypt(m), bEncrypt: (p) => ourIn.encrypt(p), aDecrypt: (m) => ourOut.decrypt(m) };

  // libolm ↔ libolm, the same way.
  const libAlice = new olm.Account();
  libAlice.create();
  const libBob = new olm.Account();
  libBob.create();
  libBob.generate_one_time_keys(1);
  const libOut = new olm.Session();
  libOut.create_outbound(libAlice, (JSON.parse(libBob.identity_keys()) as { curve25519: string }).curve25519, Object.values((JSON.parse(libBob.one_time_keys()) as { curve25519: Record<string, string> }).curve25519)[0]!);
  const setup = libOut.encrypt("setup");
  const libIn = new olm.Session();
  libIn.create_inbound(libBob, setup.body);
  libIn.decrypt(setup.type, setup.body);
  const back = libIn.encrypt("setup");
  libOut.decrypt(back.type, back.body);
  const theirs: Pair = {
    aEncrypt: (p) => libOut.encrypt(p) as OlmMessage,
    bDecrypt: (m) => libIn.decrypt(m.type, m.body),
    bEncrypt: (p) => libIn.encrypt(p) as OlmMessage,
    aDecrypt: (m) => libOut.decrypt(m.type, m.body),
  };

  // Each side reads the other's messages, or the figures would compare different things.
  const crossLib = new olm.Account();
  crossLib.create();
  crossLib.generate_one_time_keys(1);
  const cross = alice.createOutboundSession((JSON.parse(crossLib.identity_keys()) as { curve25519: string }).curve25519, Object.values((JSON.parse(crossLib.one_time_keys()) as { curve25519: Record<string, string> }).curve25519)[0]!);
  const crossMessage = cross.encrypt(payload);
  const crossIn = new olm.Session();
  crossIn.create_inbound(crossLib, crossMessage.body);
  if (crossIn.decrypt(crossMessage.type, crossMessage.body) !== payload) throw new Error("benchmark setup: libolm cannot read our Olm message");
  if (cross.decrypt(crossIn.encrypt(payload) as OlmMessage) !== payload) throw new Error("benchmark setup: we cannot read libolm's Olm message");

  process.stdout.write(`olm, ${payload.length}-byte payload\n`);
  for (const [label, pair] of [["ours", ours], ["libolm", theirs]] as const) {
    const sent: OlmMessage[] = [];
    record(`olm encrypt (${label})`, measure(() => sent.push(pair.aEncrypt(payload))));
    record(`olm decrypt in order (${label})`, measureEach(sent, (m) => pair.bDecrypt(m)));
    record(`olm round trip, ratchet turn each message (${label})`, measure(() => pair.aDecrypt(pair.bEncrypt(pair.bDecrypt(pair.aEncrypt(payload))))));
  }

  // Session setup, what sharing a room key with a device we never talked to costs: Alice's outbound
  // session and first pre-key message, Bob's inbound session from it (one-time keys made beforehand).
  const bobKeys = Array.from({ length: 50 }, () => {
    // A fallback key: it stays after use, so the bench can set sessions up on it again (the same
    // work as a one-time key's).
    const b = newAccount();
    b.generateFallbackKey();
    return { account: b, identity: b.identityKeys().curve25519, otk: Object.values(b.unpublishedFallbackKey())[0]! };
  });
  const aliceIdentity = alice.identityKeys().curve25519;
  record(
    "olm session setup, both ends (ours)",
    measure((i) => {
      const bob = bobKeys[i % bobKeys.length]!;
      const first = alice.createOutboundSession(bob.identity, bob.otk).encrypt(payload);
      bob.account.createInboundSession(aliceIdentity, first.body);
    }),
  );
  const libBobs = Array.from({ length: 50 }, () => {
    const b = new olm.Account();
    b.create();
    b.generate_one_time_keys(1);
    return { account: b, identity: (JSON.parse(b.identity_keys()) as { curve25519: string }).curve25519, otk: Object.values((JSON.parse(b.one_time_keys()) as { curve25519: Record<string, string> }).curve25519)[0]! };
  });
  const libAliceIdentity = (JSON.parse(libAlice.identity_keys()) as { curve25519: string }).curve25519;
  record(
    "olm session setup, both ends (libolm)",
    measure((i) => {
      const bob = libBobs[i % libBobs.length]!;
      const out = new olm.Session();
      out.create_outbound(libAlice, bob.identity, bob.otk);
      const first = out.encrypt(payload);
      const inbound = new olm.Session();
      inbound.create_inbound_from(bob.account, libAliceIdentity, first.body);
      inbound.decrypt(first.type, first.body);
      out.free();
      inbound.free();
    }),
  );
}

// ---- Megolm ----
{
  const ours = newOutboundGroupSession();
  const oursKeyAt0 = ours.sessionKey();
  const oursInbound = inboundGroupSessionFromKey(ours.sessionKey());
  const theirs = new olm.OutboundGroupSession();
  theirs.create();
  const theirsKeyAt0 = theirs.session_key();
  const theirsInbound = new olm.InboundGroupSession();
  theirsInbound.create(theirs.session_key());

  // Each side reads the other's messages, or the figures would compare different things.
  const check = new olm.InboundGroupSession();
  check.create(ours.sessionKey());
  if (check.decrypt(ours.encrypt(event)).plaintext !== event) throw new Error("benchmark setup: libolm cannot read our Megolm message");
  if (inboundGroupSessionFromKey(theirs.session_key()).decrypt(theirs.encrypt(event)).plaintext !== event) {
    throw new Error("benchmark setup: we cannot read libolm's Megolm message");
  }

  const oursSent: string[] = [];
  const theirsSent: string[] = [];
  record("megolm encrypt (ours)", measure(() => oursSent.push(ours.encrypt(event))));
  record("megolm encrypt (libolm)", measure(() => theirsSent.push(theirs.encrypt(event))));
  record("megolm decrypt in order (ours)", measureEach(oursSent, (m) => oursInbound.decrypt(m)));
  record("megolm decrypt in order (libolm)", measureEach(theirsSent, (m) => theirsInbound.decrypt(m)));

  // History: fresh inbound sessions from the keys at index 0, messages picked at random indices.
  const historyOurs = inboundGroupSessionFromKey(oursKeyAt0);
  const historyTheirs = new olm.InboundGroupSession();
  historyTheirs.create(theirsKeyAt0);
  const pick = (sent: string[]) => Array.from({ length: 2000 }, () => sent[Math.floor(Math.random() * Math.min(sent.length, HISTORY))]!);
  record("megolm decrypt history, random index (ours)", measureEach(pick(oursSent), (m) => historyOurs.decrypt(m)));
  record("megolm decrypt history, random index (libolm)", measureEach(pick(theirsSent), (m) => historyTheirs.decrypt(m)));
}

process.stdout.write(`BENCH_RESULT ${JSON.stringify({ bench: "client-crypto", results })}\n`);
