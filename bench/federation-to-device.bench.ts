// To-device messages across servers: two Parley servers on loopback (tests/federation-harness.ts:
// in this process, each with its own database, federating over plain HTTP). @alice on hs1 sends
// to-device messages (`PUT /_matrix/client/v3/sendToDevice/...`) to @bob's device on hs2, whose
// client long-polls `/sync`. The path measured: hs1's client API, its durable per-destination
// queue, a signed `PUT /send` transaction to hs2, hs2's mailbox and the long-poll it wakes.
// - one at a time: bob's /sync waits, alice sends one message; the sample is the time from the
//   start of the send call until bob's /sync returns with it (p50/p99 over LATENCY_ROUNDS);
// - throughput: alice sends MESSAGES messages, SENDERS calls in flight at once, while bob syncs
//   in a loop; messages/s from the first send to the last message seen on hs2, and each message's
//   latency (send call start → seen in bob's /sync), p50/p99; and how many transactions carried
//   them (hs1 sends one at a time to a destination, up to 100 EDUs each).
// bob shares no room with alice (rooms across servers are not there yet), so the per-sender limits
// on a stranger's waiting messages are raised for the run. Embedded PGlite, or PostgreSQL when
// DATABASE_URL is set. Run: `npx tsx bench/federation-to-device.bench.ts` (about 30 s). Ends with
// one BENCH_RESULT line.
import os from "node:os";
import { performance } from "node:perf_hooks";
import { startNetwork } from "../tests/federation-harness.ts";
import { request } from "../tests/harness.ts";

const LATENCY_ROUNDS = Number(process.env.BENCH_FED_TO_DEVICE_ROUNDS ?? 100);
const MESSAGES = Number(process.env.BENCH_FED_TO_DEVICE_MESSAGES ?? 1000);
const SENDERS = 10;
/** How long bob's /sync is given to start waiting before alice sends. */
const SETTLE_MS = 10;

interface Session {
  userId: string;
  deviceId: string;
  token: string;
}

async function register(base: string, username: string): Promise<Session> {
  const password = `bench password ${username}`;
  const first = await request(base, "POST", "/_matrix/client/v3/register", { body: { username, password } });
  const done = await request(base, "POST", "/_matrix/client/v3/register", {
    body: { username, password, auth: { type: "m.login.dummy", session: first.json.session } },
  });
  if (done.status !== 200) throw new Error(`registration failed: ${JSON.stringify(done.json)}`);
  return { userId: done.json.user_id, deviceId: done.json.device_id, token: done.json.access_token };
}

function percentile(sorted: readonly number[], p: number): number {
  const value = sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
  return Math.round(value * 10) / 10;
}

interface ToDeviceEvent {
  type: string;
  content: { n?: number };
}

const limits = { to_device_stranger_limit: 1_000_000, to_device_per_sender_limit: 1_000_000, to_device_mailbox_limit: 1_000_000 };
const net = await startNetwork(2, { config: () => limits });
const results: Array<{ name: string; value: number; unit: string }> = [];
function record(name: string, value: number, unit: string) {
  results.push({ name, value, unit });
  process.stdout.write(`  ${name.padEnd(56)} ${value.toLocaleString("en").padStart(10)} ${unit}\n`);
}

try {
  const [hs1, hs2] = net.servers as [(typeof net.servers)[0], (typeof net.servers)[0]];
  const alice = await register(hs1.url, "alice");
  const bob = await register(hs2.url, "bob");
  let txn = 0;
  const sendToDevice = async (type: string, n: number) => {
    const res = await request(hs1.url, "PUT", `/_matrix/client/v3/sendToDevice/${type}/t${++txn}`, {
      token: alice.token,
      body: { messages: { [bob.userId]: { [bob.deviceId]: { n, algorithm: "m.olm.v1.curve25519-aes-sha2", ciphertext: { x: { type: 0, body: "A".repeat(400) } } } } } },
    });
    if (res.status !== 200) throw new Error(`sendToDevice failed: ${res.status} ${JSON.stringify(res.json)}`);
  };
  const syncOnce = async (since: string | undefined, timeout: number) => {
    const q = new URLSearchParams({ timeout: String(timeout) });
    if (since) q.set("since", since);
    const res = await request(hs2.url, "GET", `/_matrix/client/v3/sync?${q}`, { token: bob.token });
    if (res.status !== 200) throw new Error(`sync failed: ${res.status} ${JSON.stringify(res.json)}`);
    return res.json as { next_batch: string; to_device?: { events: ToDeviceEvent[] } };
  };
  let since = (await syncOnce(undefined, 0)).next_batch;
  // How the messages travel: hs1's transactions to hs2 and the EDUs in them.
  const transactions = { count: 0, edus: 0 };
  const http = hs1.services.federation.http;
  const request0 = http.request.bind(http);
  http.request = (destination, options) => {
    if (options.path.startsWith("/_matrix/federation/v1/send/")) {
      transactions.count++;
      transactions.edus += ((options.body as { edus?: unknown[] } | undefined)?.edus ?? []).length;
    }
    return request0(destination, options);
  };
  /** Syncs until `wanted` messages of `type` arrived, calling `seen` with each message's n as it arrives. */
  const receive = async (type: string, wanted: number, seen: (n: number) => void) => {
    let count = 0;
    let deadline = performance.now() + 60_000;
    while (count < wanted) {
      if (performance.now() > deadline) throw new Error(`${count} of ${wanted} ${type} messages arrived, then none for 60 s`);
      const res = await syncOnce(since, 10_000);
      since = res.next_batch;
      for (const e of res.to_device?.events ?? []) {
        if (e.type !== type || typeof e.content.n !== "number") continue;
        seen(e.content.n);
        count++;
        deadline = performance.now() + 60_000;
      }
    }
  };

  // Warm-up: hs2 fetches hs1's keys, the destination queue and connections start.
  for (let n = 0; n < 5; n++) {
    const arrived = receive("m.bench.warmup", 1, () => {});
    await sendToDevice("m.bench.warmup", n);
    await arrived;
  }

  process.stdout.write(
    `to-device across two servers on loopback (${process.env.DATABASE_URL ? "PostgreSQL" : "PGlite"}); ` +
      `${os.availableParallelism()} cores, load average ${os.loadavg()[0]!.toFixed(1)}\n`,
  );
  const alone: number[] = [];
  for (let n = 0; n < LATENCY_ROUNDS; n++) {
    let arrivedAt = 0;
    const arrived = receive("m.bench.alone", 1, () => (arrivedAt = performance.now()));
    await new Promise((r) => setTimeout(r, SETTLE_MS));
    const sentAt = performance.now();
    await sendToDevice("m.bench.alone", n);
    await arrived;
    alone.push(arrivedAt - sentAt);
  }
  alone.sort((a, b) => a - b);
  record(`one at a time: latency p50 (${LATENCY_ROUNDS} messages)`, percentile(alone, 50), "ms");
  record("one at a time: latency p99", percentile(alone, 99), "ms");

  const before = { ...transactions };
  const sentAt = new Array<number>(MESSAGES);
  const latencies: number[] = [];
  let lastSeen = 0;
  const arrived = receive("m.bench.load", MESSAGES, (n) => {
    lastSeen = performance.now();
    latencies.push(lastSeen - sentAt[n]!);
  });
  const start = performance.now();
  let next = 0;
  await Promise.all(
    Array.from({ length: SENDERS }, async () => {
      while (next < MESSAGES) {
        const n = next++;
        sentAt[n] = performance.now();
        await sendToDevice("m.bench.load", n);
      }
    }),
  );
  const sendSeconds = (performance.now() - start) / 1000;
  await arrived;
  latencies.sort((a, b) => a - b);
  record(`throughput: ${MESSAGES} messages, ${SENDERS} sends at once`, Math.round(MESSAGES / ((lastSeen - start) / 1000)), "messages/s");
  record("  sendToDevice calls answered on hs1", Math.round(MESSAGES / sendSeconds), "requests/s");
  record("  latency p50", percentile(latencies, 50), "ms");
  record("  latency p99", percentile(latencies, 99), "ms");
  const sent = { count: transactions.count - before.count, edus: transactions.edus - before.edus };
  record("  transactions hs1 → hs2", sent.count, "transactions");
  record("  EDUs per transaction", Math.round((sent.edus / Math.max(1, sent.count)) * 10) / 10, "EDUs");
} finally {
  await net.destroy();
}

process.stdout.write(`BENCH_RESULT ${JSON.stringify({ bench: "federation-to-device", results })}\n`);
