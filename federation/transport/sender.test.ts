// The durable per-destination queue: https://spec.matrix.org/latest/server-server-api/#transactions
import { mkdtemp, rm } from "node:fs/promises";
import { type Server, createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import pino from "pino";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { type OpenedDatabase, openDatabase, schema } from "../../schema/db.ts";
import { createTestDatabase, type TestDatabase } from "../../tests/harness.ts";
import { signingKeyFromSeed } from "../protocol/signing.ts";
import { FederationHttpClient } from "./http-client.ts";
import { type Edu, FederationSender, listDestinations } from "./sender.ts";

const key = signingKeyFromSeed(new Uint8Array(32).fill(4), "ed25519:s");

interface Txn {
  txnId: string;
  pdus: { n: number }[];
  edus: Edu[];
}

/** A fake peer: idempotent on txnId like a real one, with switches to fail or hang. */
class FakePeer {
  server!: Server;
  port = 0;
  received: Txn[] = [];
  attempts: string[] = [];
  mode: "ok" | "fail" | "drop-response" | "slow" = "ok";
  inFlight = 0;
  maxInFlight = 0;
  async start() {
    this.server = createServer((req, res) => {
      let body = "";
      req.on("data", (c) => (body += c));
      req.on("end", async () => {
        const txnId = decodeURIComponent((req.url ?? "").split("/").pop() ?? "");
        this.attempts.push(txnId);
        this.inFlight++;
        this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
        try {
          if (this.mode === "fail") {
            res.statusCode = 502;
            res.end("{}");
            return;
          }
          if (this.mode === "slow") await new Promise((r) => setTimeout(r, 1500));
          const parsed = JSON.parse(body) as { pdus: { n: number }[]; edus: Edu[] };
          if (!this.received.some((t) => t.txnId === txnId)) this.received.push({ txnId, pdus: parsed.pdus, edus: parsed.edus });
          if (this.mode === "drop-response") {
            res.socket?.destroy();
            return;
          }
          res.end(JSON.stringify({ pdus: {} }));
        } finally {
          this.inFlight--;
        }
      });
    });
    await new Promise<void>((r) => this.server.listen(0, "127.0.0.1", r));
    this.port = (this.server.address() as AddressInfo).port;
  }
  stop() {
    return new Promise<void>((r) => this.server.close(() => r()));
  }
  pduNumbers() {
    return this.received.flatMap((t) => t.pdus.map((p) => p.n));
  }
  eduNumbers() {
    return this.received.flatMap((t) => t.edus.filter((e) => e.edu_type === "m.test").map((e) => (e.content as { n: number }).n));
  }
}

async function waitFor(check: () => boolean | Promise<boolean>, ms = 8000) {
  const until = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > until) throw new Error("timed out waiting");
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe("the federation sender", () => {
  const peers: Record<string, FakePeer> = {};
  let dataDir: string;
  let testDb: TestDatabase;
  let database: OpenedDatabase;
  const senders: FederationSender[] = [];

  beforeAll(async () => {
    for (const name of ["a.test", "b.test", "slow.test"]) {
      peers[name] = new FakePeer();
      await peers[name].start();
    }
    dataDir = await mkdtemp(path.join(tmpdir(), "parley-sender-"));
    testDb = await createTestDatabase();
    database = await openDatabase({ dataDir, databaseUrl: testDb.url, embedded: "memory" });
  });
  afterEach(async () => {
    await Promise.all(senders.splice(0).map((s) => s.stop()));
    await database.db.delete(schema.federationOutbox);
    await database.db.delete(schema.federationDestinations);
    for (const p of Object.values(peers)) {
      p.received = [];
      p.attempts = [];
      p.mode = "ok";
      p.maxInFlight = 0;
    }
  });
  afterAll(async () => {
    await database.close();
    await testDb.drop();
    await rm(dataDir, { recursive: true, force: true });
    for (const p of Object.values(peers)) await p.stop();
  });

  async function sender(db = database, extra: Partial<ConstructorParameters<typeof FederationSender>[0]> = {}) {
    const names = Object.keys(peers);
    const http = new FederationHttpClient({
      serverName: "us.test",
      signingKey: key,
      resolve: async () => {
        throw new Error("no discovery in tests");
      },
      pinnedHosts: new Map(names.map((n) => [n, { host: "127.0.0.1", port: (peers[n] as FakePeer).port }])),
      insecure: new Set(names),
      requestTimeoutMs: 5000,
    });
    const s = new FederationSender({
      database: db,
      http,
      serverName: "us.test",
      now: Date.now,
      logger: pino({ level: "silent" }),
      backoffInitialMs: 100,
      backoffMaxMs: 400,
      sweepIntervalMs: 200,
      ...extra,
    });
    await s.start();
    senders.push(s);
    return s;
  }

  it("delivers everything once, in order, at most 50 PDUs and 100 EDUs per transaction, and empties the queue", async () => {
    const s = await sender();
    for (let i = 0; i < 120; i++) {
      await s.enqueue(["a.test"], { pdus: i < 70 ? [{ n: i }] : [], edus: [{ edu_type: "m.test", content: { n: i } }] });
    }
    const a = peers["a.test"] as FakePeer;
    await waitFor(() => a.pduNumbers().length === 70 && a.eduNumbers().length === 120);
    expect(a.pduNumbers()).toEqual([...Array(70).keys()]);
    expect(a.eduNumbers()).toEqual([...Array(120).keys()]);
    for (const t of a.received) {
      expect(t.pdus.length).toBeLessThanOrEqual(50);
      expect(t.edus.length).toBeLessThanOrEqual(100);
    }
    expect(a.maxInFlight).toBe(1);
    await waitFor(async () => (await database.db.select().from(schema.federationOutbox)).length === 0);
  });

  it("retries a transaction whose answer was lost under the same ID, so the peer applies it once", async () => {
    const a = peers["a.test"] as FakePeer;
    a.mode = "drop-response";
    const s = await sender();
    await s.enqueue(["a.test"], { edus: [1, 2, 3].map((n) => ({ edu_type: "m.test", content: { n } })) });
    await waitFor(() => a.attempts.length >= 2);
    a.mode = "ok";
    await waitFor(async () => (await database.db.select().from(schema.federationOutbox)).length === 0);
    expect(new Set(a.attempts).size).toBe(1);
    expect(a.eduNumbers()).toEqual([1, 2, 3]);
  });

  it("keeps the queue across a restart: a new sender on the same database delivers what the old one could not", async () => {
    const b = peers["b.test"] as FakePeer;
    b.mode = "fail";
    const first = await sender();
    await first.enqueue(["b.test"], { pdus: [{ n: 1 }, { n: 2 }] });
    await waitFor(() => b.attempts.length >= 1);
    await first.stop();
    b.mode = "ok";
    await sender();
    await waitFor(() => b.pduNumbers().length === 2);
    expect(b.pduNumbers()).toEqual([1, 2]);
    await waitFor(async () => {
      const [row] = (await listDestinations(database)).filter((d) => d.destination === "b.test");
      return Number(row?.queued) === 0 && Number(row?.failures) === 0 && row?.last_success_ts !== null;
    });
  });

  it("backs off a failing destination, and sends at once when that server reaches us", async () => {
    const b = peers["b.test"] as FakePeer;
    b.mode = "fail";
    const s = await sender(database, { backoffInitialMs: 60_000, backoffMaxMs: 60_000 });
    await s.enqueue(["b.test"], { edus: [{ edu_type: "m.test", content: { n: 7 } }] });
    await waitFor(() => b.attempts.length === 1);
    await new Promise((r) => setTimeout(r, 400));
    expect(b.attempts).toHaveLength(1); // waiting out a minute of backoff
    const [row] = (await listDestinations(database)).filter((d) => d.destination === "b.test");
    expect(row?.failures).toBe(1);
    expect(row?.last_error).toMatch(/502/);
    b.mode = "ok";
    await s.markReachable("b.test");
    await waitFor(() => b.eduNumbers().length === 1);
  });

  it("never lets a slow destination delay another", async () => {
    const slow = peers["slow.test"] as FakePeer;
    const a = peers["a.test"] as FakePeer;
    slow.mode = "slow";
    const s = await sender();
    await s.enqueue(["slow.test"], { edus: [{ edu_type: "m.test", content: { n: 1 } }] });
    await waitFor(() => slow.attempts.length === 1);
    const started = Date.now();
    await s.enqueue(["a.test"], { edus: [{ edu_type: "m.test", content: { n: 2 } }] });
    await waitFor(() => a.eduNumbers().length === 1);
    expect(Date.now() - started).toBeLessThan(1000);
  });

  it("a queue idle after sending still delivers a row whose wake was lost (the sweep wakes it)", async () => {
    const s = await sender();
    const a = peers["a.test"] as FakePeer;
    await s.enqueue(["a.test"], { pdus: [{ n: 1 }] });
    await waitFor(() => a.pduNumbers().length === 1);
    // Written behind the sender's back, as by a process whose NOTIFY was lost.
    await database.db.insert(schema.federationOutbox).values({ destination: "a.test", kind: "pdu", payload: JSON.stringify({ n: 2 }), createdTs: Date.now() });
    await waitFor(() => a.pduNumbers().length === 2, 3000);
    expect(a.pduNumbers()).toEqual([1, 2]);
  });

  it("sends best-effort EDUs with the next transaction without storing them", async () => {
    const s = await sender();
    s.sendEphemeral(["a.test", "us.test"], { edu_type: "m.typing", content: { room_id: "!r:us.test", user_id: "@u:us.test", typing: true } });
    const a = peers["a.test"] as FakePeer;
    await waitFor(() => a.received.some((t) => t.edus.some((e) => e.edu_type === "m.typing")));
    expect(await database.db.select().from(schema.federationOutbox)).toEqual([]);
  });

  it.skipIf(!process.env.DATABASE_URL)("with two processes on one PostgreSQL, each destination is sent by one of them at a time", async () => {
    const other = await openDatabase({ dataDir, databaseUrl: testDb.url });
    try {
      const s1 = await sender(database);
      const s2 = await sender(other);
      const a = peers["a.test"] as FakePeer;
      a.mode = "slow";
      for (let i = 0; i < 6; i++) await (i % 2 ? s1 : s2).enqueue(["a.test"], { pdus: [{ n: i }] });
      await waitFor(() => a.pduNumbers().length === 6, 15_000);
      expect([...a.pduNumbers()].sort()).toEqual([0, 1, 2, 3, 4, 5]);
      expect(a.maxInFlight).toBe(1);
      // The owner dies: the other takes over.
      a.mode = "ok";
      await s1.stop();
      await s2.enqueue(["a.test"], { pdus: [{ n: 99 }] });
      await waitFor(() => a.pduNumbers().includes(99));
    } finally {
      await Promise.all(senders.splice(0).map((s) => s.stop()));
      await other.close();
    }
  }, 25_000);
});
