// Prometheus metrics (issue 18): /metrics on its own loopback listener, scraped here the way
// Prometheus does, with each family the issue names checked against what the requests did.
import { readFile } from "node:fs/promises";
import { networkInterfaces } from "node:os";
import { connect } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { freePort } from "./free-port.ts";
import { request, startTestServer, type TestServer } from "./harness.ts";
import { type RoomUser, registerRoomUser } from "./rooms-helpers.ts";

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** The text exposition format's samples (comments skipped). */
function parse(text: string): Sample[] {
  const samples: Sample[] = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)/.exec(line);
    if (!m) throw new Error(`not an exposition line: ${line}`);
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? "").matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]!] = l[2]!;
    samples.push({ name: m[1]!, labels, value: Number(m[3]) });
  }
  return samples;
}

/** The value of the one sample of `name` whose labels include `labels`; undefined if none. */
function value(samples: Sample[], name: string, labels: Record<string, string> = {}): number | undefined {
  const found = samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
  if (found.length > 1) throw new Error(`${found.length} samples of ${name} match ${JSON.stringify(labels)}`);
  return found[0]?.value;
}

const SEND_ROUTE = "/_matrix/client/v3/rooms/:roomId/send/:eventType/:txnId";

describe("metrics", () => {
  let hs: TestServer;
  let alice: RoomUser;
  let roomId: string;
  let deadPort: number;

  const scrape = async () => {
    const res = await fetch(hs.metricsUrl!);
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toMatch(/^text\/plain; version=0\.0\.4/);
    return parse(await res.text());
  };

  beforeAll(async () => {
    // A peer pinned to a port nobody listens on: what is queued for it stays queued.
    deadPort = await freePort();
    hs = await startTestServer({ config: { metrics_port: await freePort(), federation_hosts: { "dead.test": `127.0.0.1:${deadPort}` } } });
    alice = await registerRoomUser(hs.url, "alice");
    roomId = await alice.createRoom();
  });
  afterAll(async () => {
    await hs?.destroy();
  });

  it("listens on loopback by default, and serves /metrics only there", async () => {
    expect(hs.config.metrics_bind).toBe("127.0.0.1");
    expect(hs.metricsUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/metrics$/);
    const port = Number(new URL(hs.metricsUrl!).port);
    // Another address of this machine, when it has one, must not reach the metrics.
    const external = Object.values(networkInterfaces()).flat().find((a) => a && !a.internal && a.family === "IPv4");
    if (external) {
      const reached = await new Promise<boolean>((resolve) => {
        const socket = connect(port, external.address);
        socket.once("connect", () => (socket.destroy(), resolve(true)));
        socket.once("error", () => resolve(false));
      });
      expect(reached).toBe(false);
    }
    const main = await request(hs.url, "GET", "/metrics");
    expect(main.status).toBe(404);
    expect(main.text).not.toContain("parley_http_requests_total");
    expect((await fetch(hs.metricsUrl!.replace(/\/metrics$/, "/_matrix/client/versions"))).status).toBe(404);
    expect((await fetch(hs.metricsUrl!, { method: "POST" })).status).toBe(404);
  });

  it("counts requests by route pattern and status, with their latency", async () => {
    const before = await scrape();
    const sends = value(before, "parley_http_requests_total", { method: "PUT", route: SEND_ROUTE, status: "200" }) ?? 0;
    await alice.send(roomId, { msgtype: "m.text", body: "one" });
    await alice.send(roomId, { msgtype: "m.text", body: "two" });
    await request(hs.url, "GET", "/_matrix/client/v3/no/such/endpoint/abc123");
    const after = await scrape();
    expect(value(after, "parley_http_requests_total", { method: "PUT", route: SEND_ROUTE, status: "200" })).toBe(sends + 2);
    expect(value(after, "parley_http_request_duration_seconds_count", { method: "PUT", route: SEND_ROUTE })).toBeGreaterThanOrEqual(sends + 2);
    expect(value(after, "parley_http_request_duration_seconds_bucket", { method: "PUT", route: SEND_ROUTE, le: "+Inf" })).toBeGreaterThanOrEqual(sends + 2);
    expect(value(after, "parley_http_requests_total", { method: "GET", route: "unmatched", status: "404" })).toBeGreaterThanOrEqual(1);
    // Labels are route patterns, never what a client put in the URL.
    const routes = after.filter((s) => s.name === "parley_http_requests_total").map((s) => s.labels.route);
    expect(routes.some((r) => r?.includes("abc123") || r?.includes(roomId) || r?.includes("!"))).toBe(false);
    // The failed register of the UIA flow: a 401 on the register route.
    expect(value(after, "parley_http_requests_total", { method: "POST", route: "/_matrix/client/v3/register", status: "401" })).toBeGreaterThanOrEqual(1);
  });

  it("counts the events persisted", async () => {
    const local = async () => value(await scrape(), "parley_events_persisted_total", { origin: "local" }) ?? 0;
    const before = await local();
    // createRoom alone persisted several events (create, member, power levels, ...).
    expect(before).toBeGreaterThanOrEqual(5);
    await alice.send(roomId, { msgtype: "m.text", body: "three" });
    expect(await local()).toBe(before + 1);
    expect(value(await scrape(), "parley_events_persisted_total", { origin: "remote" })).toBe(0);
  });

  it("shows a /sync long-poll waiting while it waits", async () => {
    const first = await alice.call("GET", "/_matrix/client/v3/sync?timeout=0");
    expect(first.status).toBe(200);
    expect(value(await scrape(), "parley_sync_waiters")).toBe(0);
    const longPoll = alice.call("GET", `/_matrix/client/v3/sync?timeout=20000&since=${encodeURIComponent(first.json.next_batch)}`);
    let waiting: number | undefined;
    for (const until = Date.now() + 5_000; Date.now() < until; ) {
      waiting = value(await scrape(), "parley_sync_waiters");
      if (waiting === 1) break;
      await new Promise((r) => setTimeout(r, 20));
    }
    expect(waiting).toBe(1);
    await alice.send(roomId, { msgtype: "m.text", body: "wake up" });
    expect((await longPoll).status).toBe(200);
    expect(value(await scrape(), "parley_sync_waiters")).toBe(0);
  });

  it("reports the database pool and query latency", async () => {
    const samples = await scrape();
    expect(value(samples, "parley_database_pool_size")).toBe(hs.config.database_url ? hs.config.database_pool_size : 1);
    expect(value(samples, "parley_database_pool_in_use")).toBeGreaterThanOrEqual(0);
    expect(value(samples, "parley_database_pool_waiting")).toBeGreaterThanOrEqual(0);
    const queries = value(samples, "parley_database_query_duration_seconds_count", { kind: "query" }) ?? 0;
    expect(queries).toBeGreaterThan(10);
    expect(value(samples, "parley_database_query_duration_seconds_sum", { kind: "query" })).toBeGreaterThan(0);
    // Sending an event runs at least one query of its own.
    await alice.send(roomId, { msgtype: "m.text", body: "four" });
    expect(value(await scrape(), "parley_database_query_duration_seconds_count", { kind: "query" })).toBeGreaterThan(queries);
  });

  it("reports event loop lag and memory", async () => {
    const samples = await scrape();
    expect(value(samples, "nodejs_eventloop_lag_seconds")).toBeGreaterThanOrEqual(0);
    expect(value(samples, "nodejs_eventloop_lag_p99_seconds")).toBeGreaterThanOrEqual(0);
    expect(value(samples, "process_resident_memory_bytes")).toBeGreaterThan(10_000_000);
    expect(value(samples, "nodejs_heap_size_used_bytes")).toBeGreaterThan(1_000_000);
  });

  it("exposes every family the Grafana dashboard (docker/) queries", async () => {
    const dashboard = await readFile(new URL("../docker/grafana-dashboard.json", import.meta.url), "utf8");
    const used = new Set([...dashboard.matchAll(/\b(?:parley|nodejs|process)_[a-z0-9_]+/g)].map((m) => m[0]));
    expect(used.size).toBeGreaterThan(10);
    // A family is there once declared (# TYPE), even with no sample yet (no queue, say).
    const text = await (await fetch(hs.metricsUrl!)).text();
    const declared = new Set([...text.matchAll(/^# TYPE (\S+) (\S+)$/gm)].flatMap(([, name, type]) =>
      type === "histogram" ? [`${name}_bucket`, `${name}_count`, `${name}_sum`] : [name!],
    ));
    expect([...used].filter((name) => !declared.has(name))).toEqual([]);
  });

  it("reports the federation queue depth per destination", async () => {
    expect((await scrape()).some((s) => s.name === "parley_federation_queue_depth" && s.labels.destination === "dead.test")).toBe(false);
    // No peer joins a room in this test, so the queue is fed directly, as the services feed it.
    const edu = { edu_type: "m.direct_to_device", content: { sender: alice.userId, type: "m.test", message_id: "m1", messages: {} } };
    await hs.services.federation.sender.enqueue(["dead.test"], { edus: [edu, edu, edu] });
    hs.services.federation.sender.sendEphemeral(["dead.test"], { edu_type: "m.typing", content: { room_id: roomId, user_id: alice.userId, typing: true } });
    const samples = await scrape();
    expect(value(samples, "parley_federation_queue_depth", { destination: "dead.test", kind: "edu" })).toBe(3);
    // The best-effort EDU may already ride in a (failing) attempt: it is counted only while held.
    expect(value(samples, "parley_federation_queue_depth", { destination: "dead.test", kind: "ephemeral" }) ?? 0).toBeLessThanOrEqual(1);
  });
});
