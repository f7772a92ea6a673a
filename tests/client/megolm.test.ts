// Megolm (client/crypto/megolm.ts) against libolm (@towns-protocol/olm) as the independent
// implementation: messages, session keys and exported keys cross between the two in both directions.
import Olm, { type OlmImpl } from "@towns-protocol/olm";
import { beforeAll, describe, expect, it } from "vitest";
import {
  importInboundGroupSession,
  inboundGroupSessionFromKey,
  loadInboundGroupSession,
  loadOutboundGroupSession,
  newOutboundGroupSession,
} from "../../client/crypto/megolm.ts";
import { cryptoReady, ed25519FromSeed, ed25519Sign, fromBase64, toBase64 } from "../../client/crypto/primitives.ts";
import { OlmError, type MegolmOutboundSession } from "../../client/crypto/types.ts";

let olm: OlmImpl;
beforeAll(async () => {
  await cryptoReady();
  olm = await Olm.initAsync();
});

function libolmInbound(sessionKey: string, exported = false) {
  const session = new olm.InboundGroupSession();
  if (exported) session.import_session(sessionKey);
  else session.create(sessionKey);
  return session;
}

function libolmOutbound() {
  const session = new olm.OutboundGroupSession();
  session.create();
  return session;
}

function olmErrorCode(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    if (err instanceof OlmError) return err.code;
    throw err;
  }
  return undefined;
}

/** An outbound session of ours moved to `index` without encrypting that many messages: its ratchet is taken from an export at that index. */
function outboundAt(session: MegolmOutboundSession, index: number): MegolmOutboundSession {
  const state = JSON.parse(session.serialize()) as { ratchet: string; counter: number; signingSeed: string };
  const exported = fromBase64(inboundGroupSessionFromKey(session.sessionKey()).exportAt(index));
  return loadOutboundGroupSession(JSON.stringify({ ...state, ratchet: toBase64(exported.subarray(5, 133)), counter: index }));
}

describe("Megolm against libolm", () => {
  it("encrypts messages libolm decrypts, under the same session ID", () => {
    const ours = newOutboundGroupSession();
    const theirs = libolmInbound(ours.sessionKey());
    expect(theirs.session_id()).toBe(ours.sessionId());
    const texts = ["hello", "", "ünïcødé 🔐", "x".repeat(5000)];
    texts.forEach((text, i) => {
      expect(ours.messageIndex()).toBe(i);
      expect(theirs.decrypt(ours.encrypt(text))).toEqual({ message_index: i, plaintext: text });
    });
    expect(ours.messageIndex()).toBe(texts.length);
  });

  it("decrypts what libolm encrypts, under the same session ID", () => {
    const theirs = libolmOutbound();
    const ours = inboundGroupSessionFromKey(theirs.session_key());
    expect(ours.sessionId()).toBe(theirs.session_id());
    expect(ours.firstKnownIndex()).toBe(0);
    for (let i = 0; i < 5; i++) {
      const text = `message ${i} 🐢`;
      expect(ours.decrypt(theirs.encrypt(text))).toEqual({ plaintext: text, messageIndex: i });
    }
  });

  it("decrypts messages out of order, and the same index again", () => {
    const theirs = libolmOutbound();
    const ours = inboundGroupSessionFromKey(theirs.session_key());
    const messages = Array.from({ length: 6 }, (_, i) => theirs.encrypt(`m${i}`));
    for (const i of [5, 0, 3, 1, 4, 2, 5, 0]) {
      expect(ours.decrypt(messages[i]!)).toEqual({ plaintext: `m${i}`, messageIndex: i });
    }
  });

  it("crosses the R2, R1 and R0 rehash boundaries (indices 255→256, 65535→65536, 2^24−1→2^24) like libolm", () => {
    for (const start of [254, 65_534, 2 ** 24 - 2]) {
      const base = newOutboundGroupSession();
      const theirs = libolmInbound(base.sessionKey());
      const ours = outboundAt(base, start);
      for (let i = start; i < start + 4; i++) {
        expect(theirs.decrypt(ours.encrypt(`at ${i}`))).toEqual({ message_index: i, plaintext: `at ${i}` });
      }
    }
  });

  it("jumps to far indices with few hashes, to the same ratchet as libolm", () => {
    const theirs = libolmOutbound();
    const ours = inboundGroupSessionFromKey(theirs.session_key());
    const libolmCopy = libolmInbound(theirs.session_key());
    const started = performance.now();
    // libolm's JavaScript binding fails to export at 2^31 and above (a signed 32-bit index), so the comparison stops below.
    for (const index of [1, 255, 256, 65_536, 2 ** 24 - 1, 2 ** 24 + 5, 0x6bcdef12, 2 ** 31 - 1]) {
      expect(ours.exportAt(index)).toBe(libolmCopy.export_session(index));
    }
    expect(fromBase64(ours.exportAt(2 ** 32 - 1)).subarray(1, 5)).toEqual(Uint8Array.of(0xff, 0xff, 0xff, 0xff));
    // At most 4 × 256 HMACs per jump; one HMAC per index (2^24 and more of them) would take minutes.
    expect(performance.now() - started).toBeLessThan(1000);

    // A message at a far index decrypts on both sides.
    const base = newOutboundGroupSession();
    const far = outboundAt(base, 2 ** 24 + 5);
    const message = far.encrypt("far away");
    expect(libolmInbound(base.sessionKey()).decrypt(message)).toEqual({ message_index: 2 ** 24 + 5, plaintext: "far away" });
    expect(inboundGroupSessionFromKey(base.sessionKey()).decrypt(message)).toEqual({ plaintext: "far away", messageIndex: 2 ** 24 + 5 });
  });
});

describe("Megolm keys shared late, exported and imported", () => {
  it("refuses indices before a key shared late, with UNKNOWN_MESSAGE_INDEX (libolm's outbound)", () => {
    const theirs = libolmOutbound();
    const early = [theirs.encrypt("a"), theirs.encrypt("b"), theirs.encrypt("c")];
    const ours = inboundGroupSessionFromKey(theirs.session_key());
    expect(ours.firstKnownIndex()).toBe(3);
    for (const message of early) expect(olmErrorCode(() => ours.decrypt(message))).toBe("UNKNOWN_MESSAGE_INDEX");
    expect(ours.decrypt(theirs.encrypt("d"))).toEqual({ plaintext: "d", messageIndex: 3 });
    expect(olmErrorCode(() => ours.exportAt(2))).toBe("UNKNOWN_MESSAGE_INDEX");
  });

  it("gives a late session key libolm reads the same way (ours outbound)", () => {
    const ours = newOutboundGroupSession();
    const early = ours.encrypt("early");
    ours.encrypt("early too");
    const theirs = libolmInbound(ours.sessionKey());
    expect(theirs.first_known_index()).toBe(2);
    expect(() => theirs.decrypt(early)).toThrow(/UNKNOWN_MESSAGE_INDEX/);
    expect(theirs.decrypt(ours.encrypt("late"))).toEqual({ message_index: 2, plaintext: "late" });
  });

  it("exports keys libolm imports, and imports keys libolm exports, byte for byte the same", () => {
    const theirOutbound = libolmOutbound();
    for (let i = 0; i < 5; i++) theirOutbound.encrypt(`m${i}`);
    const ours = inboundGroupSessionFromKey(theirOutbound.session_key()); // first known index 5
    expect(ours.exportAt(5)).toBe(libolmInbound(theirOutbound.session_key()).export_session(5));

    // Ours → libolm: an export at index 6 decrypts 6 on, not 5.
    const next = [theirOutbound.encrypt("m5"), theirOutbound.encrypt("m6")];
    const imported = libolmInbound(ours.exportAt(6), true);
    expect(imported.session_id()).toBe(ours.sessionId());
    expect(imported.first_known_index()).toBe(6);
    expect(imported.decrypt(next[1]!)).toEqual({ message_index: 6, plaintext: "m6" });
    expect(() => imported.decrypt(next[0]!)).toThrow(/UNKNOWN_MESSAGE_INDEX/);

    // libolm → ours, from a libolm inbound session that knows index 0 of our outbound session.
    const ourOutbound = newOutboundGroupSession();
    const theirInbound = libolmInbound(ourOutbound.sessionKey());
    const sent = Array.from({ length: 4 }, (_, i) => ourOutbound.encrypt(`n${i}`));
    const fromExport = importInboundGroupSession(theirInbound.export_session(1));
    expect(fromExport.sessionId()).toBe(ourOutbound.sessionId());
    expect(fromExport.firstKnownIndex()).toBe(1);
    expect(olmErrorCode(() => fromExport.decrypt(sent[0]!))).toBe("UNKNOWN_MESSAGE_INDEX");
    expect(fromExport.decrypt(sent[3]!)).toEqual({ plaintext: "n3", messageIndex: 3 });
    expect(fromExport.decrypt(sent[1]!)).toEqual({ plaintext: "n1", messageIndex: 1 });
    expect(fromExport.exportAt(2)).toBe(theirInbound.export_session(2));
  });

  it("refuses a session key whose signature does not match (BAD_SESSION_KEY), and keys of the wrong format", () => {
    const ours = newOutboundGroupSession();
    const key = fromBase64(ours.sessionKey());
    const tampered = key.slice();
    tampered[40]! ^= 0x01; // a ratchet byte: the signature no longer covers it
    expect(olmErrorCode(() => inboundGroupSessionFromKey(toBase64(tampered)))).toBe("BAD_SESSION_KEY");
    expect(() => libolmInbound(toBase64(tampered))).toThrow(/BAD_SIGNATURE/);
    // An unsigned export is not accepted where a signed m.room_key is required, nor the reverse.
    const exported = inboundGroupSessionFromKey(ours.sessionKey()).exportAt(0);
    expect(olmErrorCode(() => inboundGroupSessionFromKey(exported))).toBe("BAD_SESSION_KEY");
    expect(olmErrorCode(() => importInboundGroupSession(ours.sessionKey()))).toBe("BAD_SESSION_KEY");
    expect(olmErrorCode(() => inboundGroupSessionFromKey(toBase64(key.subarray(0, 200))))).toBe("BAD_SESSION_KEY");
    expect(olmErrorCode(() => inboundGroupSessionFromKey("not base64!"))).toBe("BAD_SESSION_KEY");
  });
});

describe("Megolm tampering", () => {
  it("reports a flipped byte anywhere in the message as BAD_SIGNATURE, and still decrypts the genuine message after", () => {
    const ours = newOutboundGroupSession();
    const inbound = inboundGroupSessionFromKey(ours.sessionKey());
    const message = fromBase64(ours.encrypt("the real text"));
    // The version byte is left out: changing it makes the message unreadable (BAD_MESSAGE_FORMAT).
    for (const at of [2, 5, message.length - 72 - 1, message.length - 70, message.length - 1]) {
      const flipped = message.slice();
      flipped[at]! ^= 0x20;
      expect(olmErrorCode(() => inbound.decrypt(toBase64(flipped)))).toBe("BAD_SIGNATURE");
    }
    expect(inbound.decrypt(toBase64(message))).toEqual({ plaintext: "the real text", messageIndex: 0 });
  });

  it("reports a message correctly signed but with a wrong MAC as BAD_MESSAGE_MAC, as libolm does", () => {
    const ours = newOutboundGroupSession();
    const seed = fromBase64((JSON.parse(ours.serialize()) as { signingSeed: string }).signingSeed);
    const inbound = inboundGroupSessionFromKey(ours.sessionKey());
    const theirs = libolmInbound(ours.sessionKey());
    const message = fromBase64(ours.encrypt("text"));
    const signedEnd = message.length - 64;
    const forged = message.slice(0, signedEnd);
    forged[signedEnd - 1]! ^= 0x01; // the last MAC byte
    const resigned = toBase64(new Uint8Array([...forged, ...ed25519Sign(ed25519FromSeed(seed).privateKey, forged)]));
    expect(olmErrorCode(() => inbound.decrypt(resigned))).toBe("BAD_MESSAGE_MAC");
    expect(() => theirs.decrypt(resigned)).toThrow(/BAD_MESSAGE_MAC/);
  });

  it("reports a message of another session as BAD_SIGNATURE and garbage as BAD_MESSAGE_FORMAT", () => {
    const inbound = inboundGroupSessionFromKey(newOutboundGroupSession().sessionKey());
    expect(olmErrorCode(() => inbound.decrypt(newOutboundGroupSession().encrypt("other")))).toBe("BAD_SIGNATURE");
    expect(olmErrorCode(() => inbound.decrypt("AwgA"))).toBe("BAD_MESSAGE_FORMAT");
    expect(olmErrorCode(() => inbound.decrypt("not base64!"))).toBe("BAD_MESSAGE_FORMAT");
    expect(olmErrorCode(() => inbound.decrypt(toBase64(new Uint8Array(100).fill(3))))).toBe("BAD_MESSAGE_FORMAT");
  });
});

describe("Megolm serialization", () => {
  it("reloads an outbound session that carries on at the same index, under the same key", () => {
    const ours = newOutboundGroupSession();
    const theirs = libolmInbound(ours.sessionKey());
    ours.encrypt("0");
    ours.encrypt("1");
    const reloaded = loadOutboundGroupSession(ours.serialize());
    expect(reloaded.sessionId()).toBe(ours.sessionId());
    expect(reloaded.messageIndex()).toBe(2);
    expect(reloaded.sessionKey()).toBe(ours.sessionKey());
    expect(theirs.decrypt(reloaded.encrypt("2"))).toEqual({ message_index: 2, plaintext: "2" });
  });

  it("reloads an inbound session that still decrypts from its first known index", () => {
    const theirs = libolmOutbound();
    theirs.encrypt("before");
    const ours = inboundGroupSessionFromKey(theirs.session_key());
    const messages = Array.from({ length: 4 }, (_, i) => theirs.encrypt(`m${i + 1}`));
    expect(ours.decrypt(messages[2]!).messageIndex).toBe(3);
    const reloaded = loadInboundGroupSession(ours.serialize());
    expect(reloaded.sessionId()).toBe(theirs.session_id());
    expect(reloaded.firstKnownIndex()).toBe(1);
    expect(reloaded.decrypt(messages[3]!)).toEqual({ plaintext: "m4", messageIndex: 4 });
    expect(reloaded.decrypt(messages[0]!)).toEqual({ plaintext: "m1", messageIndex: 1 });
    expect(reloaded.exportAt(1)).toBe(ours.exportAt(1));
    expect(() => loadInboundGroupSession(reloaded.serialize().replace('"version":1', '"version":9'))).toThrow();
  });
});
