// Requests that never become a proper request (issue 20, finding 9): Node's own answers to malformed
// HTTP, oversized headers and slow clients are Matrix errors; a client that goes away mid-body is
// logged at debug, not as an unhandled error.
import net from "node:net";
import { Writable } from "node:stream";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { registerUser, type TestUser } from "./accounts-helpers.ts";
import { request, startTestServer, type TestServer } from "./harness.ts";

const logLines: { level: number; msg: string; [k: string]: unknown }[] = [];
const logger = pino(
  { level: "debug" },
  new Writable({
    write(chunk, _enc, done) {
      for (const line of String(chunk).split("\n")) if (line) logLines.push(JSON.parse(line));
      done();
    },
  }),
);

let hs: TestServer;
let alice: TestUser;
beforeAll(async () => {
  hs = await startTestServer({ logger, config: { request_timeout_ms: 1000 } });
  alice = await registerUser(hs.url, "alice");
});
afterAll(() => hs.destroy());

/** Writes raw bytes to the server and reads until it closes the connection (or `waitMs` passes). */
function raw(data: string | Buffer, waitMs = 5000): Promise<string> {
  const { port } = new URL(hs.url);
  return new Promise((resolve, reject) => {
    const socket = net.connect(Number(port), "127.0.0.1");
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => {
      socket.destroy();
      resolve(Buffer.concat(chunks).toString());
    }, waitMs);
    socket.on("data", (c) => chunks.push(c));
    socket.on("error", reject);
    socket.on("close", () => {
      clearTimeout(timer);
      resolve(Buffer.concat(chunks).toString());
    });
    socket.write(data);
  });
}

function parse(response: string) {
  const [head, body = ""] = response.split("\r\n\r\n");
  const [statusLine, ...headerLines] = head!.split("\r\n");
  const headers = new Map(headerLines.map((l) => [l.slice(0, l.indexOf(":")).toLowerCase(), l.slice(l.indexOf(":") + 1).trim()]));
  return { status: Number(statusLine!.split(" ")[1]), headers, json: JSON.parse(body) };
}

describe("Node's own answers are Matrix errors", () => {
  it("answers malformed HTTP with 400 and an errcode", async () => {
    const res = parse(await raw("GET /_matrix/client/versions HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n"));
    expect(res.status).toBe(400);
    expect(res.headers.get("content-type")).toBe("application/json");
    expect(res.headers.get("access-control-allow-origin")).toBe("*");
    expect(res.json).toEqual({ errcode: "M_UNKNOWN", error: expect.any(String) });
  });

  it("answers headers larger than Node's limit with 431 M_TOO_LARGE", async () => {
    const res = parse(await raw(`GET /_matrix/client/versions HTTP/1.1\r\nHost: x\r\nX-Big: ${"a".repeat(20_000)}\r\n\r\n`));
    expect(res.status).toBe(431);
    expect(res.json.errcode).toBe("M_TOO_LARGE");
  });

  it("answers a request whose target the adapter refuses (a backslash) with 400 and an errcode", async () => {
    const res = parse(await raw("GET /_matrix\\client/versions HTTP/1.1\r\nHost: x\r\n\r\n"));
    expect(res.status).toBe(400);
    expect(res.json.errcode).toBe("M_UNKNOWN");
  });

  it("answers a client too slow to send its body with 408 and an errcode", async () => {
    const started = Date.now();
    const res = parse(
      await raw("POST /_matrix/client/v3/login HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{", 4000),
    );
    expect(res.status).toBe(408);
    expect(res.json.errcode).toBe("M_UNKNOWN");
    expect(Date.now() - started).toBeLessThan(3000);
  });

  it("lets a long-poll wait longer than the request timeout", async () => {
    const first = await request(hs.url, "GET", "/_matrix/client/v3/sync?timeout=0", { token: alice.accessToken });
    const started = Date.now();
    const res = await request(hs.url, "GET", `/_matrix/client/v3/sync?timeout=2000&since=${first.json.next_batch}`, {
      token: alice.accessToken,
    });
    expect(res.status).toBe(200);
    expect(Date.now() - started).toBeGreaterThanOrEqual(1500);
  });
});

describe("bodies that are not JSON", () => {
  it("answers a body that is not valid UTF-8 with 400 M_NOT_JSON, not a repaired string", async () => {
    const body = Buffer.concat([Buffer.from('{ "username": "a'), Buffer.from([0x81]), Buffer.from('" }')]);
    const res = await fetch(`${hs.url}/_matrix/client/v3/register`, { method: "POST", headers: { "content-type": "application/json" }, body });
    expect(res.status).toBe(400);
    expect(((await res.json()) as { errcode: string }).errcode).toBe("M_NOT_JSON");
    // The same text in valid UTF-8 is JSON (and gets the registration flow).
    const ok = await fetch(`${hs.url}/_matrix/client/v3/register`, { method: "POST", headers: { "content-type": "application/json" }, body: '{ "username": "utf8user" }' });
    expect(ok.status).toBe(401);
  });
});

describe("a client that goes away mid-body", () => {
  it("is logged at debug, with no unhandled error and no 500", async () => {
    const path = `/_matrix/client/v3/user/${encodeURIComponent(alice.userId)}/account_data/org.example.half`;
    const { port } = new URL(hs.url);
    const socket = net.connect(Number(port), "127.0.0.1");
    await new Promise((resolve) => socket.once("connect", resolve));
    socket.write(
      `PUT ${path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${alice.accessToken}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"a":`,
    );
    // Let the handler start reading the body, then go away.
    const deadline = Date.now() + 3000;
    while (!logLines.some((l) => l.msg === "client aborted the request") && Date.now() < deadline) {
      if (Date.now() > deadline - 2900) socket.destroy();
      await new Promise((r) => setTimeout(r, 50));
    }
    const aborted = logLines.find((l) => l.msg === "client aborted the request");
    expect(aborted?.level).toBe(20); // debug
    expect(logLines.filter((l) => l.level >= 50)).toEqual([]);
    expect(logLines.filter((l) => l.msg === "request" && l.status === 500)).toEqual([]);
    // The server carries on.
    expect((await request(hs.url, "GET", "/_matrix/client/versions")).status).toBe(200);
  });
});
