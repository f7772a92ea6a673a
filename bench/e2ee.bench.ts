// E2EE throughput: a Parley process (`bin/parley.js serve`) under concurrent clients.
// - keys/claim: CLIENTS clients claim one-time keys of one device, one key per request, until the
//   pool (uploaded beforehand) is empty. Every key must come out exactly once (checked).
// - sendToDevice: CLIENTS senders each send to-device messages to their own recipient device (a
//   room-mate), one message per request.
// - to-device delivery latency: a recipient long-polls /sync while a sender PUTs one to-device
//   message; the sample is the time from the PUT until the waiting /sync returns with it, one
//   message at a time (p50/p95/p99 over LATENCY_ROUNDS messages). Then the same with
//   BUSY_PAIRS pairs at once (their requests queue for the CPU and the database).
// Throughput figures are requests per second over the measured phase. Embedded PGlite, and
// PostgreSQL when DATABASE_URL is set.
import { randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { createTestDatabase } from "../tests/harness.ts";
import { startParley, stopParley } from "./parley-process.ts";

const CLIENTS = 20;
const CLAIMS_PER_CLIENT = Number(process.env.BENCH_E2EE_CLAIMS ?? 100);
const SENDS_PER_CLIENT = Number(process.env.BENCH_E2EE_SENDS ?? 100);
const LATENCY_ROUNDS = Number(process.env.BENCH_E2EE_LATENCY_ROUNDS ?? 250);
const BUSY_PAIRS = 10;
const BUSY_ROUNDS = 20;
/** How long a recipient's /sync is given to start waiting before its sender sends. */
const SETTLE_MS = 10;

interface Session {
  userId: string;
  deviceId: string;
  token: string;
}

async function call(base: string, method: string, p: string, body: unknown, token?: string) {
  const res = await fetch(base + p, {
    method,
    headers: { "Content-Type": "application/json", ...(token ? { Authorization: `Bearer ${token}` } : {}) },
    body: JSON.stringify(body),
  });
  return { status: res.status, json: (await res.json()) as Record<string, any> };
}

async function register(base: string, username: string): Promise<Session> {
  const password = `bench password ${username}`;
  const first = await call(base, "POST", "/_matrix/client/v3/register", { username, password });
  const done = await call(base, "POST", "/_matrix/client/v3/register", {
    username,
    password,
    auth: { type: "m.login.dummy", session: first.json.session },
  });
  if (done.status !== 200) throw new Error(`registration failed: ${JSON.stringify(done.json)}`);
  return { userId: done.json.user_id, deviceId: done.json.device_id, token: done.json.access_token };
}

/** Runs `perClient` requests on each of CLIENTS concurrent clients; answers requests per second. */
async function measure(perClient: number, request: (client: number, i: number) => Promise<void>): Promise<number> {
  const started = performance.now();
  await Promise.all(
    Array.from({ length: CLIENTS }, async (_, c) => {
      for (let i = 0; i < perClient; i++) await request(c, i);
    }),
  );
  const seconds = (performance.now() - started) / 1000;
  return Math.round((CLIENTS * perClient) / seconds);
}

function percentile(sorted: number[], p: number): number {
  const value = sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
  return Math.round(value * 10) / 10;
}

/**
 * To-device delivery latency to a waiting /sync: each pair loops — the recipient starts a long-poll,
 * the sender PUTs a message, and the sample is the time from the PUT until the long-poll returns
 * with it. Answers the samples in ms.
 */
async function toDeviceLatency(
  base: string,
  phase: string,
  pairs: Array<{ sender: Session; recipient: Session }>,
  rounds: number,
): Promise<number[]> {
  const samples: number[] = [];
  const syncOnce = async (token: string, since: string | undefined, timeout: number) => {
    const q = new URLSearchParams({ timeout: String(timeout) });
    if (since) q.set("since", since);
    const res = await fetch(`${base}/_matrix/client/v3/sync?${q}`, { headers: { Authorization: `Bearer ${token}` } });
    if (res.status !== 200) throw new Error(`sync failed: ${res.status} ${await res.text()}`);
    return (await res.json()) as { next_batch: string; to_device?: { events: Array<{ content: { n?: number } }> } };
  };
  await Promise.all(
    pairs.map(async ({ sender, recipient }, p) => {
      let since = (await syncOnce(recipient.token, undefined, 0)).next_batch;
      for (let n = 0; n < rounds; n++) {
        const arrived = (async () => {
          const deadline = performance.now() + 30_000;
          for (;;) {
            if (performance.now() > deadline) throw new Error(`to-device message ${phase}-${p}-${n} did not arrive within 30 s`);
            const res = await syncOnce(recipient.token, since, 10_000);
            since = res.next_batch;
            if (res.to_device?.events.some((e) => e.content.n === n)) return performance.now();
          }
        })();
        await new Promise((r) => setTimeout(r, SETTLE_MS));
        const sentAt = performance.now();
        const put = await call(
          base,
          "PUT",
          `/_matrix/client/v3/sendToDevice/m.room.encrypted/latency-${phase}-${p}-${n}`,
          { messages: { [recipient.userId]: { [recipient.deviceId]: { n, ciphertext: "A".repeat(400) } } } },
          sender.token,
        );
        if (put.status !== 200) throw new Error(`sendToDevice failed: ${put.status} ${JSON.stringify(put.json)}`);
        samples.push((await arrived) - sentAt);
      }
    }),
  );
  return samples.sort((a, b) => a - b);
}

async function benchOne(kind: string, databaseUrl: string | undefined) {
  const dataDir = await mkdtemp(path.join(tmpdir(), "parley-bench-e2ee-"));
  const { child, base } = await startParley(dataDir, databaseUrl);
  try {
    const owner = await register(base, "keyowner");
    const clients: Session[] = [];
    const recipients: Session[] = [];
    // Registration hashes passwords (Argon2id, on libuv's thread pool): a few at once.
    clients.push(...(await Promise.all(Array.from({ length: CLIENTS }, (_, i) => register(base, `client${i}`)))));
    recipients.push(...(await Promise.all(Array.from({ length: CLIENTS }, (_, i) => register(base, `recipient${i}`)))));

    // The pool: exactly as many one-time keys as claims (the server does not check their signatures).
    const pool = CLIENTS * CLAIMS_PER_CLIENT;
    for (let start = 0; start < pool; start += 500) {
      const keys: Record<string, unknown> = {};
      for (let i = start; i < Math.min(pool, start + 500); i++) {
        keys[`signed_curve25519:K${i}`] = { key: randomBytes(32).toString("base64").replace(/=+$/, "") };
      }
      const res = await call(base, "POST", "/_matrix/client/v3/keys/upload", { one_time_keys: keys }, owner.token);
      if (res.status !== 200) throw new Error(`upload failed: ${JSON.stringify(res.json)}`);
    }

    // Each sender shares a room with its recipient, as Olm senders do (a stranger may leave only
    // `to_device_stranger_limit` messages waiting in a mailbox).
    await Promise.all(
      clients.map(async (c, i) => {
        const room = await call(base, "POST", "/_matrix/client/v3/createRoom", { preset: "public_chat" }, c.token);
        const join = await call(base, "POST", `/_matrix/client/v3/join/${encodeURIComponent(room.json.room_id)}`, {}, recipients[i]!.token);
        if (room.status !== 200 || join.status !== 200) throw new Error(`room failed: ${JSON.stringify(room.json)} ${JSON.stringify(join.json)}`);
      }),
    );

    // Warm-up: a few requests of each kind outside the measurement.
    for (const c of clients.slice(0, 2)) {
      await call(base, "POST", "/_matrix/client/v3/keys/claim", { one_time_keys: { [c.userId]: { [c.deviceId]: "signed_curve25519" } } }, c.token);
    }

    const claimed = new Set<string>();
    const claimRate = await measure(CLAIMS_PER_CLIENT, async (c) => {
      const res = await call(
        base,
        "POST",
        "/_matrix/client/v3/keys/claim",
        { one_time_keys: { [owner.userId]: { [owner.deviceId]: "signed_curve25519" } } },
        clients[c]!.token,
      );
      const keys = res.json.one_time_keys?.[owner.userId]?.[owner.deviceId] as Record<string, unknown> | undefined;
      const id = keys && Object.keys(keys)[0];
      if (res.status !== 200 || !id) throw new Error(`claim failed: ${res.status} ${JSON.stringify(res.json)}`);
      if (claimed.has(id)) throw new Error(`one-time key ${id} was handed out twice`);
      claimed.add(id);
    });

    const sendRate = await measure(SENDS_PER_CLIENT, async (c, i) => {
      const to = recipients[c]!;
      const res = await call(
        base,
        "PUT",
        `/_matrix/client/v3/sendToDevice/m.room.encrypted/bench-${c}-${i}`,
        { messages: { [to.userId]: { [to.deviceId]: { algorithm: "m.olm.v1.curve25519-aes-sha2", ciphertext: { x: { type: 0, body: "A".repeat(400) } } } } } },
        clients[c]!.token,
      );
      if (res.status !== 200) throw new Error(`sendToDevice failed: ${res.status} ${JSON.stringify(res.json)}`);
    });

    // The pairs of the throughput phase; each recipient's first sync takes (and its next one
    // acknowledges) what that phase left in its mailbox.
    const pairs = Array.from({ length: BUSY_PAIRS }, (_, i) => ({ sender: clients[i]!, recipient: recipients[i]! }));
    const alone = await toDeviceLatency(base, "alone", pairs.slice(0, 1), LATENCY_ROUNDS);
    const busy = await toDeviceLatency(base, "busy", pairs, BUSY_ROUNDS);
    const [p50, p95, p99] = [50, 95, 99].map((p) => percentile(alone, p)) as [number, number, number];
    const [busyP50, busyP99] = [50, 99].map((p) => percentile(busy, p)) as [number, number];
    console.log(
      `${kind}: keys/claim ${claimRate} req/s (${pool} keys, ${CLIENTS} clients, each key once); ` +
        `sendToDevice ${sendRate} req/s (${CLIENTS * SENDS_PER_CLIENT} messages, ${CLIENTS} senders); ` +
        `to-device delivery to a waiting /sync p50 ${p50} ms, p95 ${p95} ms, p99 ${p99} ms (${alone.length} messages, one pair); ` +
        `with ${BUSY_PAIRS} pairs at once p50 ${busyP50} ms, p99 ${busyP99} ms (${busy.length} messages)`,
    );
    return { claimRate, sendRate, p50, p95, p99, busyP50, busyP99 };
  } finally {
    await stopParley(child);
    await rm(dataDir, { recursive: true, force: true });
  }
}

const results: { name: string; value: number; unit: string }[] = [];
const targets: [string, boolean][] = [["pglite", false]];
if (process.env.DATABASE_URL) targets.push(["postgres", true]);
for (const [kind, usePostgres] of targets) {
  const database = usePostgres ? await createTestDatabase() : undefined;
  try {
    const f = await benchOne(kind, database?.url);
    results.push(
      { name: `keys/claim, ${CLIENTS} concurrent clients (${kind})`, value: f.claimRate, unit: "req/s" },
      { name: `sendToDevice, ${CLIENTS} concurrent senders (${kind})`, value: f.sendRate, unit: "req/s" },
      { name: `to-device delivery to a waiting /sync, p50 (${kind})`, value: f.p50, unit: "ms" },
      { name: `to-device delivery to a waiting /sync, p95 (${kind})`, value: f.p95, unit: "ms" },
      { name: `to-device delivery to a waiting /sync, p99 (${kind})`, value: f.p99, unit: "ms" },
      { name: `to-device delivery to a waiting /sync, ${BUSY_PAIRS} pairs at once, p50 (${kind})`, value: f.busyP50, unit: "ms" },
      { name: `to-device delivery to a waiting /sync, ${BUSY_PAIRS} pairs at once, p99 (${kind})`, value: f.busyP99, unit: "ms" },
    );
  } finally {
    await database?.drop();
  }
}
console.log(`BENCH_RESULT ${JSON.stringify({ bench: "e2ee", results })}`);
