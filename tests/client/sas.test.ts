// SAS verification: the primitives byte for byte against libolm's Olm.SAS, then two of our
// SasVerification machines (and one libolm-driven peer) verifying each other, and every way a
// verification must fail.
import Olm from "@towns-protocol/olm";
import { beforeAll, describe, expect, it } from "vitest";
import { canonicalJson } from "../../federation/protocol/canonical-json.ts";
import { cryptoReady, curve25519Generate, ed25519Generate, fromBase64, toBase64, x25519 } from "../../client/crypto/primitives.ts";
import {
  SAS_EMOJI,
  type SasOptions,
  type SasState,
  SasVerification,
  VerificationCancelledError,
  macInfoBase,
  sasBytes,
  sasCommitment,
  sasDecimals,
  sasEmojis,
  sasInfo,
  sasMac,
} from "../../client/crypto/sas.ts";

type LibOlm = Awaited<ReturnType<typeof Olm.initAsync>>;
let olm: LibOlm;

beforeAll(async () => {
  await cryptoReady();
  olm = await Olm.initAsync();
});

/** Our key pair and a libolm SAS object that agreed on a shared secret with it. */
function agreedWithLibolm() {
  const ours = curve25519Generate();
  const theirs = new olm.SAS();
  theirs.set_their_key(toBase64(ours.publicKey));
  const secret = x25519(ours.privateKey, fromBase64(theirs.get_pubkey()));
  return { secret, theirs };
}

describe("SAS primitives against libolm", () => {
  it("derives the same SAS bytes (HKDF of the X25519 secret, no salt)", () => {
    const { secret, theirs } = agreedWithLibolm();
    const info = sasInfo(
      { userId: "@alice:a.test", deviceId: "ALICE", publicKey: "A".repeat(43) },
      { userId: "@bob:b.test", deviceId: "BOB", publicKey: "B".repeat(43) },
      "txn1",
    );
    expect(info).toBe(`MATRIX_KEY_VERIFICATION_SAS|@alice:a.test|ALICE|${"A".repeat(43)}|@bob:b.test|BOB|${"B".repeat(43)}|txn1`);
    for (const length of [5, 6, 32]) {
      expect(toBase64(sasBytes(secret, info, length))).toBe(toBase64(theirs.generate_bytes(info, length)));
    }
  });

  it("computes hkdf-hmac-sha256.v2 MACs as calculate_mac_fixed_base64 and the old hkdf-hmac-sha256 as calculate_mac (broken base64)", () => {
    const { secret, theirs } = agreedWithLibolm();
    const info = `${macInfoBase({ userId: "@a:x", deviceId: "DA" }, { userId: "@b:y", deviceId: "DB" }, "t")}ed25519:DA`;
    for (const input of ["", "ed25519:DA", toBase64(ed25519Generate().publicKey), "ed25519:DA,ed25519:master+key/x"]) {
      const v2 = sasMac(secret, input, info, "hkdf-hmac-sha256.v2");
      const old = sasMac(secret, input, info, "hkdf-hmac-sha256");
      expect(v2).toBe(theirs.calculate_mac_fixed_base64(input, info));
      expect(old).toBe(theirs.calculate_mac(input, info));
      // The old encoding really differs (else the test would not tell the two apart).
      expect(old).not.toBe(v2);
      expect(v2).toHaveLength(43);
    }
  });

  it("makes the commitment as SHA-256 of the key and the start content's canonical JSON", () => {
    const start = { method: "m.sas.v1", from_device: "D", transaction_id: "t", hashes: ["sha256"], extra: { b: 1, a: "é" } };
    const key = toBase64(curve25519Generate().publicKey);
    expect(sasCommitment(key, start)).toBe(new olm.Utility().sha256(key + canonicalJson(start)));
  });

  it("maps SAS bytes to the spec's emoji table and decimals", () => {
    expect(SAS_EMOJI).toHaveLength(64);
    expect(new Set(SAS_EMOJI.map(([e]) => e)).size).toBe(64);
    expect(SAS_EMOJI[0]).toEqual(["🐶", "Dog"]);
    expect(SAS_EMOJI[63]).toEqual(["📌", "Pin"]);
    expect(SAS_EMOJI[21]).toEqual(["\u2601\uFE0F", "Cloud"]);
    // 0b000001 000010 000011 000100 000101 000110 000111 (42 bits) + 6 padding bits.
    const bytes = new Uint8Array([0x04, 0x20, 0xc4, 0x14, 0x61, 0xc0]);
    expect(sasEmojis(bytes).map((e) => e.number)).toEqual([1, 2, 3, 4, 5, 6, 7]);
    expect(sasEmojis(bytes)[0]).toEqual({ number: 1, emoji: "🐱", description: "Cat" });
    expect(sasEmojis(new Uint8Array(6).fill(0xff)).map((e) => e.description)).toEqual(Array(7).fill("Pin"));
    expect(sasDecimals(new Uint8Array(5))).toEqual([1000, 1000, 1000]);
    expect(sasDecimals(new Uint8Array(5).fill(0xff))).toEqual([9191, 9191, 9191]);
    // 13-bit groups: 0000000000001 0000000000010 0000000000011 + 1 spare bit.
    expect(sasDecimals(new Uint8Array([0x00, 0x08, 0x00, 0x80, 0x06]))).toEqual([1001, 1002, 1003]);
  });
});

// ---- Two machines on an in-memory wire ----

interface Device {
  userId: string;
  deviceId: string;
  ed25519: string;
  masterKey?: string;
}

function device(userId: string, deviceId: string, withMaster = true): Device {
  return {
    userId,
    deviceId,
    ed25519: toBase64(ed25519Generate().publicKey),
    ...(withMaster ? { masterKey: toBase64(ed25519Generate().publicKey) } : {}),
  };
}

interface Message {
  from: "a" | "b";
  type: string;
  content: Record<string, unknown>;
}

/**
 * Two verifications joined by a wire that holds messages until `pump` delivers them, in order (as
 * to-device messages between two devices arrive). `tamper` may change or drop a message on its way.
 */
function pair(
  da: Device,
  db: Device,
  opts: { a?: Partial<SasOptions>; b?: Partial<SasOptions>; bSeesA?: Partial<Device>; tamper?: (m: Message) => Message | undefined } = {},
) {
  const wire: Message[] = [];
  const log: Message[] = [];
  const states = { a: [] as SasState[], b: [] as SasState[] };
  const a = new SasVerification({
    ...da,
    other: { ...db },
    send: (type, content) => void wire.push({ from: "a", type, content }),
    onStateChange: (s) => states.a.push(s),
    ...opts.a,
  });
  const b = new SasVerification({
    ...db,
    other: { ...da, ...opts.bSeesA },
    transactionId: a.transactionId,
    send: (type, content) => void wire.push({ from: "b", type, content }),
    onStateChange: (s) => states.b.push(s),
    ...opts.b,
  });
  async function pump() {
    for (let m = wire.shift(); m; m = wire.shift()) {
      log.push(m);
      const delivered = opts.tamper ? opts.tamper(structuredClone(m)) : m;
      if (delivered) await (delivered.from === "a" ? b : a).handle(delivered.type, delivered.content);
    }
  }
  return { a, b, wire, log, states, pump, types: () => log.map((m) => `${m.from}:${m.type.replace("m.key.verification.", "")}`) };
}

async function cancelCode(p: Promise<unknown>): Promise<{ code: string; byUs: boolean }> {
  const err = await p.then(
    () => {
      throw new Error("expected the verification to be cancelled");
    },
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(VerificationCancelledError);
  const c = err as VerificationCancelledError;
  return { code: c.code, byUs: c.byUs };
}

/** request → ready → start (by `starter`) → accept → keys. */
async function toKeysExchanged(p: ReturnType<typeof pair>, starter: "a" | "b" = "a") {
  await p.a.request();
  await p.pump();
  expect(p.b.state).toBe("request_received");
  await p.b.ready();
  await p.pump();
  expect(p.a.state).toBe("ready");
  await p[starter].start();
  await p.pump();
}

describe("SasVerification between two of our devices", () => {
  it("verifies two users' devices and master keys end to end: same emoji and numbers, done on both sides", async () => {
    const da = device("@alice:a.test", "ALICEDEV");
    const db = device("@bob:b.test", "BOBDEV");
    const p = pair(da, db);
    await toKeysExchanged(p);
    await expect(p.a.keysExchanged).resolves.toBeUndefined();
    expect(p.a.state).toBe("keys_exchanged");
    expect(p.b.state).toBe("keys_exchanged");
    expect(p.a.emojis()).toHaveLength(7);
    expect(p.a.emojis()).toEqual(p.b.emojis());
    expect(p.a.decimals()).toEqual(p.b.decimals());

    await p.a.confirm();
    await p.b.confirm();
    await p.pump();
    expect(p.types()).toEqual(["a:request", "b:ready", "a:start", "b:accept", "a:key", "b:key", "a:mac", "b:mac", "b:done", "a:done"]);
    expect((await p.a.done).sort()).toEqual([`ed25519:${db.deviceId}`, `ed25519:${db.masterKey}`].sort());
    expect((await p.b.done).sort()).toEqual([`ed25519:${da.deviceId}`, `ed25519:${da.masterKey}`].sort());
    expect(p.a.state).toBe("done");
    expect(p.b.state).toBe("done");

    // What went over the wire is what the spec and Element expect.
    const start = p.log.find((m) => m.type === "m.key.verification.start")!.content;
    expect(start).toEqual({
      from_device: "ALICEDEV",
      method: "m.sas.v1",
      transaction_id: p.a.transactionId,
      key_agreement_protocols: ["curve25519-hkdf-sha256"],
      hashes: ["sha256"],
      message_authentication_codes: ["hkdf-hmac-sha256.v2", "hkdf-hmac-sha256"],
      short_authentication_string: ["decimal", "emoji"],
    });
    const accept = p.log.find((m) => m.type === "m.key.verification.accept")!.content;
    expect(accept).toMatchObject({ method: "m.sas.v1", key_agreement_protocol: "curve25519-hkdf-sha256", hash: "sha256", message_authentication_code: "hkdf-hmac-sha256.v2", short_authentication_string: ["decimal", "emoji"] });
    const bKey = p.log.find((m) => m.from === "b" && m.type === "m.key.verification.key")!.content.key as string;
    expect(accept.commitment).toBe(sasCommitment(bKey, start));
    const mac = p.log.find((m) => m.from === "a" && m.type === "m.key.verification.mac")!.content;
    expect(Object.keys(mac.mac as object).sort()).toEqual([`ed25519:${da.deviceId}`, `ed25519:${da.masterKey}`].sort());
    for (const m of p.log) expect(m.content.transaction_id).toBe(p.a.transactionId);
    expect(p.states.b).toEqual(["request_received", "ready", "accepted", "keys_exchanged", "confirmed", "done_sent", "done"]);
  });

  it("verifies a user's own two devices (no master key: only the device keys)", async () => {
    const p = pair(device("@carol:c.test", "PHONE", false), device("@carol:c.test", "LAPTOP", false));
    await toKeysExchanged(p, "b");
    expect(p.a.emojis()).toEqual(p.b.emojis());
    await p.b.confirm();
    await p.pump();
    await p.a.confirm();
    await p.pump();
    expect(await p.a.done).toEqual(["ed25519:LAPTOP"]);
    expect(await p.b.done).toEqual(["ed25519:PHONE"]);
  });

  it("settles two simultaneous starts for the smaller user ID, and still verifies", async () => {
    const da = device("@zed:z.test", "Z");
    const db = device("@amy:a.test", "A");
    const p = pair(da, db);
    await p.a.request();
    await p.pump();
    await p.b.ready();
    await p.pump();
    await p.a.start();
    await p.b.start();
    await p.pump();
    // @amy < @zed: b's start stands, a accepts it.
    expect(p.types().slice(2, 5)).toEqual(["a:start", "b:start", "a:accept"]);
    expect(p.a.emojis()).toEqual(p.b.emojis());
    await p.a.confirm();
    await p.b.confirm();
    await p.pump();
    await expect(p.a.done).resolves.toContain("ed25519:A");
    await expect(p.b.done).resolves.toContain("ed25519:Z");
  });

  it("detects a start altered in transit (a MAC downgrade) by the commitment", async () => {
    const p = pair(device("@a:x", "DA"), device("@b:x", "DB"), {
      tamper: (m) => {
        if (m.type === "m.key.verification.start") m.content.message_authentication_codes = ["hkdf-hmac-sha256"];
        return m;
      },
    });
    await toKeysExchanged(p);
    // b accepted the old MAC it was offered, but committed over the start it saw, not the one a sent.
    expect(p.log.find((m) => m.type === "m.key.verification.accept")?.content.message_authentication_code).toBe("hkdf-hmac-sha256");
    expect(await cancelCode(p.a.done)).toEqual({ code: "m.mismatched_commitment", byUs: true });
    expect(p.a.emojis()).toBeUndefined();
  });

  it("cancels with m.key_mismatch when the other device's key is not the one /keys/query gave", async () => {
    const da = device("@alice:a.test", "ALICEDEV");
    const p = pair(da, device("@bob:b.test", "BOBDEV"), { bSeesA: { ed25519: toBase64(ed25519Generate().publicKey) } });
    await toKeysExchanged(p);
    expect(p.a.emojis()).toEqual(p.b.emojis());
    await p.a.confirm();
    await p.pump();
    expect(await cancelCode(p.b.done)).toEqual({ code: "m.key_mismatch", byUs: true });
    await p.b.confirm().catch(() => {});
    await p.pump();
    expect(await cancelCode(p.a.done)).toEqual({ code: "m.key_mismatch", byUs: false });
    expect(p.types()).toContain("b:cancel");
    expect(p.types()).not.toContain("a:done");
  });

  it("cancels with m.key_mismatch when a MAC is altered on the way, or a key is added to the MAC without its list", async () => {
    for (const alter of ["mac", "add"] as const) {
      const p = pair(device("@a:x", "DA"), device("@b:x", "DB"), {
        tamper: (m) => {
          if (m.type === "m.key.verification.mac" && m.from === "a") {
            const mac = m.content.mac as Record<string, string>;
            if (alter === "mac") mac["ed25519:DA"] = toBase64(new Uint8Array(32));
            else mac["ed25519:EXTRA"] = mac["ed25519:DA"]!;
          }
          return m;
        },
      });
      await toKeysExchanged(p);
      await p.a.confirm();
      await p.pump();
      expect(await cancelCode(p.b.done)).toEqual({ code: "m.key_mismatch", byUs: true });
    }
  });

  it("cancels with m.mismatched_commitment when the accepter's key is not the one it committed to", async () => {
    const p = pair(device("@a:x", "DA"), device("@b:x", "DB"), {
      tamper: (m) => {
        if (m.type === "m.key.verification.key" && m.from === "b") m.content.key = toBase64(curve25519Generate().publicKey);
        return m;
      },
    });
    await toKeysExchanged(p);
    expect(await cancelCode(p.a.done)).toEqual({ code: "m.mismatched_commitment", byUs: true });
    expect(p.a.emojis()).toBeUndefined();
    expect(await cancelCode(p.b.done)).toEqual({ code: "m.mismatched_commitment", byUs: false });
  });

  it("cancels with m.unexpected_message on a message out of order", async () => {
    const p = pair(device("@a:x", "DA"), device("@b:x", "DB"));
    await p.a.request();
    await p.pump();
    await p.b.ready();
    await p.pump();
    // A key before any start/accept:
    await p.b.handle("m.key.verification.key", { transaction_id: p.a.transactionId, key: toBase64(curve25519Generate().publicKey) });
    expect(p.b.state).toBe("cancelled");
    expect(await cancelCode(p.b.done)).toEqual({ code: "m.unexpected_message", byUs: true });
    expect(p.wire.at(-1)).toMatchObject({ from: "b", type: "m.key.verification.cancel", content: { code: "m.unexpected_message" } });
    await p.pump();
    expect(await cancelCode(p.a.done)).toEqual({ code: "m.unexpected_message", byUs: false });
    // Nothing answers a message after the end (no cancel loops).
    await p.a.handle("m.key.verification.mac", { transaction_id: p.a.transactionId, mac: {}, keys: "x" });
    expect(p.wire).toEqual([]);
  });

  it("ignores messages of other transactions and of types it does not know (another method's, or a name like toString)", async () => {
    const p = pair(device("@a:x", "DA"), device("@b:x", "DB"));
    await toKeysExchanged(p);
    const txn = p.a.transactionId;
    await p.a.handle("m.key.verification.mac", { transaction_id: "another", mac: {}, keys: "x" });
    await p.a.handle("toString", { transaction_id: txn });
    await p.a.handle("__proto__", { transaction_id: txn });
    await p.a.handle("m.reciprocate.v1", { transaction_id: txn });
    expect(p.a.state).toBe("keys_exchanged");
    expect(p.wire).toEqual([]);
  });

  it("cancels with m.unexpected_message when done comes before the MACs", async () => {
    const p = pair(device("@a:x", "DA"), device("@b:x", "DB"));
    await toKeysExchanged(p);
    await p.b.handle("m.key.verification.done", { transaction_id: p.a.transactionId });
    expect(await cancelCode(p.b.done)).toEqual({ code: "m.unexpected_message", byUs: true });
  });

  it("cancels with m.mismatched_sas when a user says the emoji differ; the other side learns why", async () => {
    const p = pair(device("@a:x", "DA"), device("@b:x", "DB"));
    await toKeysExchanged(p);
    await p.a.confirm();
    await p.b.cancel("m.mismatched_sas");
    await p.pump();
    expect(await cancelCode(p.b.done)).toEqual({ code: "m.mismatched_sas", byUs: true });
    expect(await cancelCode(p.a.done)).toEqual({ code: "m.mismatched_sas", byUs: false });
    await expect(p.b.confirm()).rejects.toThrow(/cannot confirm/);
  });

  it("cancels with m.unknown_method when nothing is in common, m.invalid_message on a malformed message", async () => {
    const p = pair(device("@a:x", "DA"), device("@b:x", "DB"), {
      tamper: (m) => {
        if (m.type === "m.key.verification.start") m.content.key_agreement_protocols = ["curve25519"];
        return m;
      },
    });
    await toKeysExchanged(p);
    expect(await cancelCode(p.b.done)).toEqual({ code: "m.unknown_method", byUs: true });

    const q = pair(device("@a:x", "DA"), device("@b:x", "DB"));
    await q.a.request();
    await q.pump();
    await q.a.handle("m.key.verification.ready", { transaction_id: q.a.transactionId, methods: "m.sas.v1" });
    expect(await cancelCode(q.a.done)).toEqual({ code: "m.invalid_message", byUs: true });
  });

  it("times out with m.timeout and tells the other device", async () => {
    const p = pair(device("@a:x", "DA"), device("@b:x", "DB"), { a: { timeoutMs: 20 } });
    await p.a.request();
    expect(await cancelCode(p.a.done)).toEqual({ code: "m.timeout", byUs: true });
    await p.pump();
    expect(await cancelCode(p.b.done)).toEqual({ code: "m.timeout", byUs: false });
  });

  it("cancels at once while a send hangs (the user's cancel and the timeout), and sends nothing more after", async () => {
    for (const how of ["user", "timeout"] as const) {
      const sent: string[] = [];
      const v = new SasVerification({
        ...device("@a:x", "DA"),
        other: device("@b:x", "DB"),
        timeoutMs: how === "timeout" ? 30 : 60_000,
        send: (type) => {
          sent.push(type);
          // The request never gets through (a server that does not answer).
          return type === "m.key.verification.request" ? new Promise<void>(() => {}) : undefined;
        },
      });
      void v.request();
      await new Promise((r) => setTimeout(r, 5));
      if (how === "user") await v.cancel();
      expect(await cancelCode(v.done)).toEqual({ code: how === "user" ? "m.user" : "m.timeout", byUs: true });
      expect(v.state).toBe("cancelled");
      await v.handle("m.key.verification.ready", { transaction_id: v.transactionId, from_device: "DB", methods: ["m.sas.v1"] });
      expect(v.state).toBe("cancelled");
      expect(sent).toEqual(["m.key.verification.request", "m.key.verification.cancel"]);
    }
  });

  it("takes a request only within the spec's time window and with SAS among its methods", () => {
    const now = 1_700_000_000_000;
    const req = (timestamp: number, methods = ["m.sas.v1"]) => ({ from_device: "D", methods, timestamp, transaction_id: "t" });
    expect(SasVerification.isAcceptableRequest(req(now - 9 * 60_000), now)).toBe(true);
    expect(SasVerification.isAcceptableRequest(req(now - 11 * 60_000), now)).toBe(false);
    expect(SasVerification.isAcceptableRequest(req(now + 6 * 60_000), now)).toBe(false);
    expect(SasVerification.isAcceptableRequest(req(now, ["m.qr_code.show.v1"]), now)).toBe(false);
  });
});

describe("SasVerification against a libolm-driven peer", () => {
  it.each([
    ["hkdf-hmac-sha256.v2", "calculate_mac_fixed_base64"],
    ["hkdf-hmac-sha256", "calculate_mac"],
  ] as const)("agrees on the SAS and %s MACs with a peer that does the crypto with Olm.SAS", async (macMethod, olmMac) => {
    const us = device("@alice:a.test", "ALICEDEV");
    const peer = device("@bob:b.test", "BOBDEV", false);
    const sent: Message[] = [];
    const v = new SasVerification({ ...us, other: { ...peer }, send: (type, content) => void sent.push({ from: "a", type, content }) });
    const txn = v.transactionId;
    const olmSas = new olm.SAS();
    const peerKey = olmSas.get_pubkey();

    await v.start();
    const start = sent.shift()!.content;
    await v.handle("m.key.verification.accept", {
      transaction_id: txn,
      method: "m.sas.v1",
      key_agreement_protocol: "curve25519-hkdf-sha256",
      hash: "sha256",
      message_authentication_code: macMethod,
      short_authentication_string: ["decimal", "emoji"],
      commitment: new olm.Utility().sha256(peerKey + canonicalJson(start)),
    });
    const ourKey = sent.shift()!.content.key as string;
    olmSas.set_their_key(ourKey);
    await v.handle("m.key.verification.key", { transaction_id: txn, key: peerKey });
    expect(v.state).toBe("keys_exchanged");

    const info = `MATRIX_KEY_VERIFICATION_SAS|${us.userId}|${us.deviceId}|${ourKey}|${peer.userId}|${peer.deviceId}|${peerKey}|${txn}`;
    expect(v.emojis()).toEqual(sasEmojis(olmSas.generate_bytes(info, 6)));
    expect(v.decimals()).toEqual(sasDecimals(olmSas.generate_bytes(info, 5)));

    await v.confirm();
    const ourMac = sent.shift()!.content;
    const toPeer = `MATRIX_KEY_VERIFICATION_MAC${us.userId}${us.deviceId}${peer.userId}${peer.deviceId}${txn}`;
    const macOf = (input: string, keyId: string) => olmSas[olmMac](input, toPeer + keyId);
    const ids = [`ed25519:${us.deviceId}`, `ed25519:${us.masterKey}`].sort();
    expect(ourMac).toEqual({
      transaction_id: txn,
      mac: { [`ed25519:${us.deviceId}`]: macOf(us.ed25519, `ed25519:${us.deviceId}`), [`ed25519:${us.masterKey}`]: macOf(us.masterKey!, `ed25519:${us.masterKey}`) },
      keys: olmSas[olmMac](ids.join(","), `${toPeer}KEY_IDS`),
    });

    const fromPeer = `MATRIX_KEY_VERIFICATION_MAC${peer.userId}${peer.deviceId}${us.userId}${us.deviceId}${txn}`;
    const keyId = `ed25519:${peer.deviceId}`;
    await v.handle("m.key.verification.mac", {
      transaction_id: txn,
      mac: { [keyId]: olmSas[olmMac](peer.ed25519, fromPeer + keyId) },
      keys: olmSas[olmMac](keyId, `${fromPeer}KEY_IDS`),
    });
    expect(sent.shift()).toMatchObject({ type: "m.key.verification.done" });
    await v.handle("m.key.verification.done", { transaction_id: txn });
    expect(await v.done).toEqual([keyId]);
  });
});
