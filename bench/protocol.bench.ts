// The signed-event core on one core: Ed25519 verifications/s with our verifier (node:crypto,
// cached KeyObject) against @noble/ed25519 and libsodium in the same run, and full PDU checks/s
// (format + signature + content hash + event ID: checks 1–3 on receipt of a PDU) for a room
// version 12 event and the same event in room version 1's format (event ID in the event, hashed
// references, a second signature check when another server chose the ID).
// Run: `npx tsx bench/protocol.bench.ts` (about 15 s). Ends with one BENCH_RESULT line.

import { createHash } from "node:crypto";
import * as noble from "@noble/ed25519";
import sodium from "libsodium-wrappers-sumo";
import { canonicalJson } from "../federation/protocol/canonical-json.ts";
import { computeEventId } from "../federation/protocol/event-hashes.ts";
import { checkReceivedPdu, signEvent } from "../federation/protocol/event-signing.ts";
import { signEd25519, signingKeyFromSeed, verifyEd25519 } from "../federation/protocol/signing.ts";

const SECONDS = Number(process.env.BENCH_PROTOCOL_SECONDS ?? 2);

noble.hashes.sha512 = (message: Uint8Array) => new Uint8Array(createHash("sha512").update(message).digest());

/** Runs `op` repeatedly for about SECONDS (after a short warm-up) and returns operations per second. */
function measure(op: (i: number) => unknown): number {
  const warmUntil = performance.now() + 200;
  let i = 0;
  while (performance.now() < warmUntil) op(i++);
  const start = performance.now();
  const end = start + SECONDS * 1000;
  let count = 0;
  // Check the clock every 64 operations so reading it does not dominate fast operations.
  while (performance.now() < end) {
    for (let k = 0; k < 64; k++) op(count++);
  }
  return Math.round(count / ((performance.now() - start) / 1000));
}

const seed = new Uint8Array(32).map((_, i) => i * 7 + 1);
const key = signingKeyFromSeed(seed, "ed25519:bench");

// A realistic member event, signed as its server would send it.
const pdu = signEvent(
  "12",
  {
    type: "m.room.member",
    state_key: "@alice:bench.example",
    sender: "@alice:bench.example",
    room_id: "!Nhcu5BS-UMnFX7hBVfVSoXiD7OgH6iRT-xyIuqDnpYQ",
    content: { membership: "join", displayname: "Alice Example", avatar_url: "mxc://bench.example/abcdefghijklmnop" },
    origin_server_ts: 1_700_000_000_000,
    depth: 1234,
    prev_events: ["$Rqnc-F-dvnEYJTyHq_iKxU2bZ1CI92-kuZq3a5lr5Zg"],
    auth_events: ["$aaaaF-dvnEYJTyHq_iKxU2bZ1CI92-kuZq3a5lr5Zg", "$bbbbF-dvnEYJTyHq_iKxU2bZ1CI92-kuZq3a5lr5Zg"],
    unsigned: { age: 42 },
  },
  "bench.example",
  key,
);
// The same event in a version 1 room: its ID chosen by its server, prev and auth events with hashes.
const hashes = { sha256: "Rqnc+F+dvnEYJTyHq/iKxU2bZ1CI92+kuZq3a5lr5Zg" };
const pduV1 = signEvent(
  "1",
  {
    type: "m.room.member",
    state_key: "@alice:bench.example",
    sender: "@alice:bench.example",
    room_id: "!NhcuBSUMnFXhBVfVSoX:bench.example",
    event_id: "$1700000000000abcde:bench.example",
    content: { membership: "join", displayname: "Alice Example", avatar_url: "mxc://bench.example/abcdefghijklmnop" },
    origin_server_ts: 1_700_000_000_000,
    depth: 1234,
    prev_events: [["$1699999999999fghij:bench.example", hashes]],
    auth_events: [["$1600000000000aaaaa:bench.example", hashes], ["$1600000000000bbbbb:bench.example", hashes]],
    unsigned: { age: 42 },
  },
  "bench.example",
  key,
);
const message = new TextEncoder().encode(canonicalJson({ ...pdu, signatures: undefined, unsigned: undefined }));
const signature = signEd25519(key, message);

await sodium.ready;
const checks: Array<[string, boolean]> = [
  ["node:crypto verifies", verifyEd25519(key.publicKey, message, signature)],
  ["@noble/ed25519 verifies", noble.verify(signature, message, key.publicKey)],
  ["libsodium verifies", sodium.crypto_sign_verify_detached(signature, message, key.publicKey)],
  ["PDU check passes", checkReceivedPdu("12", pdu, () => key.publicKey).ok],
  ["v1 PDU check passes", checkReceivedPdu("1", pduV1, () => key.publicKey).ok],
];
for (const [what, ok] of checks) if (!ok) throw new Error(`benchmark setup is wrong: ${what} failed`);

const results: Array<{ name: string; value: number; unit: string }> = [];
function record(name: string, value: number) {
  results.push({ name, value, unit: "ops/s" });
  process.stdout.write(`  ${name.padEnd(44)} ${value.toLocaleString("en").padStart(12)} ops/s\n`);
}

process.stdout.write(`protocol benchmarks, one core, ${SECONDS} s each, ${message.length}-byte message, ${canonicalJson(pdu).length}-byte PDU\n`);
record("ed25519 verify (node:crypto, cached key)", measure(() => verifyEd25519(key.publicKey, message, signature)));
record("ed25519 verify (@noble/ed25519)", measure(() => noble.verify(signature, message, key.publicKey)));
record("ed25519 verify (libsodium)", measure(() => sodium.crypto_sign_verify_detached(signature, message, key.publicKey)));
record("ed25519 sign (node:crypto)", measure(() => signEd25519(key, message)));
record("canonical JSON of a PDU", measure(() => canonicalJson(pdu)));
record("event ID (redact + reference hash)", measure(() => computeEventId("12", pdu)));
record("full PDU check, room version 12", measure(() => checkReceivedPdu("12", pdu, () => key.publicKey)));
record("full PDU check, room version 1", measure(() => checkReceivedPdu("1", pduV1, () => key.publicKey)));

process.stdout.write(`BENCH_RESULT ${JSON.stringify({ bench: "protocol", results })}\n`);
