// Application services: pushing events to one service (a mock on loopback answering 200 at once),
// in one in-process server (embedded PGlite, or PostgreSQL when DATABASE_URL is set):
// - backlog: BACKLOG messages sent while the service answers 503, then it recovers: events per
//   second delivered while the queue drains (transactions of up to 100 events);
// - live: messages sent by CONCURRENCY clients at once into a room the service is interested in:
//   events per second delivered, and the time from a send's answer to the event's arrival (p50/p99);
// - PUT /send latency (p50/p99, one at a time, REPEAT each, interleaved) into a room with the
//   interested service and into a room it is not interested in.
// `npx tsx bench/appservices.bench.ts` (or `npm run bench appservices`).
//
// On the 2-core VM shared with other work (load average 5.5–7): PGlite: backlog 2,400 events/s
// (21 transactions for 2,000 events), live 128 events/s (bounded by the sends), send -> service
// p50 84 ms; PUT /send p50 31.7 ms with the interested service, 31.8 ms without (p99 181 / 143).
// PostgreSQL: backlog 1,800 events/s, live 368 events/s, send -> service p50 24 ms / p99 63 ms;
// PUT /send p50 9.2 ms with, 9.1 ms without (p99 33 / 37).
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { registerUser } from "../tests/accounts-helpers.ts";
import { request, startTestServer } from "../tests/harness.ts";

const BACKLOG = Number(process.env.BENCH_AS_BACKLOG ?? 2_000);
const LIVE = Number(process.env.BENCH_AS_LIVE ?? 2_000);
const CONCURRENCY = Number(process.env.BENCH_AS_CONCURRENCY ?? 8);
const REPEAT = Number(process.env.BENCH_AS_REPEAT ?? 300);
const enc = encodeURIComponent;

// The mock service: counts events, notes when each message arrived.
let failing = false;
let delivered = 0;
let transactions = 0;
const arrivals = new Map<string, number>();
const service = createServer((req, res) => {
  const chunks: Buffer[] = [];
  req.on("data", (c: Buffer) => chunks.push(c));
  req.on("end", () => {
    if (failing || req.method !== "PUT" || !req.url?.startsWith("/_matrix/app/v1/transactions/")) {
      res.writeHead(failing ? 503 : 404).end("{}");
      return;
    }
    const now = performance.now();
    const body = JSON.parse(Buffer.concat(chunks).toString("utf8")) as { events: Array<{ type: string; content: { body?: string } }> };
    transactions++;
    for (const e of body.events) {
      delivered++;
      if (e.type === "m.room.message" && e.content.body) arrivals.set(e.content.body, now);
    }
    res.writeHead(200, { "content-type": "application/json" }).end("{}");
  });
});
await new Promise<void>((resolve) => service.listen(0, "127.0.0.1", resolve));
const url = `http://127.0.0.1:${(service.address() as AddressInfo).port}`;

const dir = await mkdtemp(path.join(tmpdir(), "parley-bench-as-"));
const registration = path.join(dir, "registration.yaml");
await writeFile(
  registration,
  `id: bench\nurl: ${JSON.stringify(url)}\nas_token: bench-as-token-0123456789\nhs_token: bench-hs-token-0123456789\nsender_localpart: benchbot\nnamespaces:\n  users:\n    - exclusive: false\n      regex: '@bridged_.*'\n`,
);
const hs = await startTestServer({ config: { log_level: "warn", app_service_config_files: [registration] } });

async function ok(res: Promise<{ status: number; json: any }>, what: string): Promise<any> {
  const r = await res;
  if (r.status !== 200) throw new Error(`${what}: ${r.status} ${JSON.stringify(r.json)}`);
  return r.json;
}

async function until(check: () => boolean, what: string, timeoutMs = 600_000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!check()) {
    if (performance.now() > deadline) throw new Error(`timed out: ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

const pct = (sorted: number[], p: number) => sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))]!;

try {
  const [alice, bridged] = await Promise.all([registerUser(hs.url, "alice"), registerUser(hs.url, "bridged_bob")]);
  const call = (token: string, method: string, p: string, body?: unknown) => request(hs.url, method, p, { token, ...(body !== undefined ? { body } : {}) });
  let txn = 0;
  const send = (roomId: string, body: string) =>
    ok(call(alice.accessToken, "PUT", `/_matrix/client/v3/rooms/${enc(roomId)}/send/m.room.message/b${txn++}`, { msgtype: "m.text", body }), "send");
  const portal = (await ok(call(alice.accessToken, "POST", "/_matrix/client/v3/createRoom", { preset: "public_chat" }), "createRoom")).room_id as string;
  await ok(call(bridged.accessToken, "POST", `/_matrix/client/v3/join/${enc(portal)}`, {}), "join");
  const plain = (await ok(call(alice.accessToken, "POST", "/_matrix/client/v3/createRoom", { preset: "public_chat" }), "createRoom")).room_id as string;
  await until(() => arrivals.size === 0 && delivered > 0, "the room's first events");

  // Backlog: the service is down while BACKLOG messages are sent, then recovers.
  failing = true;
  for (let i = 0; i < BACKLOG; i += CONCURRENCY) {
    await Promise.all(Array.from({ length: Math.min(CONCURRENCY, BACKLOG - i) }, (_, k) => send(portal, `backlog ${i + k}`)));
  }
  const before = delivered;
  const txnsBefore = transactions;
  failing = false;
  hs.services.appServiceDelivery.markReachable("bench");
  const drainStart = performance.now();
  await until(() => delivered - before >= BACKLOG, "the backlog");
  const drainMs = performance.now() - drainStart;
  const drainTxns = transactions - txnsBefore;

  // Live: CONCURRENCY senders at once; delivery as the events commit.
  const sentAt = new Map<string, number>();
  const liveStart = performance.now();
  for (let i = 0; i < LIVE; i += CONCURRENCY) {
    await Promise.all(
      Array.from({ length: Math.min(CONCURRENCY, LIVE - i) }, async (_, k) => {
        const body = `live ${i + k}`;
        await send(portal, body);
        sentAt.set(body, performance.now());
      }),
    );
  }
  await until(() => [...sentAt.keys()].every((b) => arrivals.has(b)), "the live messages");
  const liveMs = performance.now() - liveStart;
  const lag = [...sentAt].map(([b, t]) => Math.max(0, arrivals.get(b)! - t)).sort((a, b) => a - b);

  // PUT /send latency, one at a time, interleaved: the interested room and the other.
  const withService: number[] = [];
  const without: number[] = [];
  for (let i = 0; i < REPEAT; i++) {
    for (const [roomId, times] of [[portal, withService], [plain, without]] as const) {
      const t = performance.now();
      await send(roomId, `latency ${i} ${roomId === portal ? "p" : "x"}`);
      times.push(performance.now() - t);
    }
  }
  withService.sort((a, b) => a - b);
  without.sort((a, b) => a - b);

  const results = [
    { name: `backlog of ${BACKLOG} delivered`, value: (BACKLOG / drainMs) * 1000, unit: "events/s" },
    { name: `backlog transactions (events per transaction ${Math.round(BACKLOG / Math.max(1, drainTxns))})`, value: drainTxns, unit: "count" },
    { name: `live: ${LIVE} sent by ${CONCURRENCY} clients, delivered`, value: (LIVE / liveMs) * 1000, unit: "events/s" },
    { name: "live: send answered -> event at the service p50", value: pct(lag, 0.5), unit: "ms" },
    { name: "live: send answered -> event at the service p99", value: pct(lag, 0.99), unit: "ms" },
    { name: "PUT /send into a room with an interested service p50", value: pct(withService, 0.5), unit: "ms" },
    { name: "PUT /send into a room with an interested service p99", value: pct(withService, 0.99), unit: "ms" },
    { name: "PUT /send into a room of no interest p50", value: pct(without, 0.5), unit: "ms" },
    { name: "PUT /send into a room of no interest p99", value: pct(without, 0.99), unit: "ms" },
  ].map((r) => ({ ...r, value: Math.round(r.value * 10) / 10 }));
  for (const r of results) process.stderr.write(`${r.name}: ${r.value} ${r.unit}\n`);
  console.log(`BENCH_RESULT ${JSON.stringify({ bench: "appservices", results })}`);
} finally {
  await hs.destroy();
  service.close();
  await rm(dir, { recursive: true, force: true });
}
