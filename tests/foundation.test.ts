import { stat } from "node:fs/promises";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { decodeBase64 } from "../federation/protocol/base64.ts";
import { verifyJsonSignature } from "../federation/protocol/signing.ts";
import { route } from "../server/http/route.ts";
import { z } from "zod";
import { createTestDatabase, request, startTestServer, type TestServer } from "./harness.ts";

describe("a fresh homeserver", () => {
  let hs: TestServer;
  beforeAll(async () => {
    hs = await startTestServer({
      extraRoutes: [
        route({
          method: "POST",
          path: "/_test/echo",
          auth: "none",
          body: z.object({ n: z.number() }),
          handler: ({ body }) => ({ n: body.n }),
        }),
        route({
          method: "GET",
          path: "/_test/crash",
          auth: "none",
          handler: () => {
            throw new Error("boom");
          },
        }),
      ],
    });
  });
  afterAll(() => hs.destroy());

  it("answers /_matrix/client/versions", async () => {
    const res = await request(hs.url, "GET", "/_matrix/client/versions");
    expect(res.status).toBe(200);
    expect(Array.isArray(res.json.versions)).toBe(true);
    expect(res.headers.get("content-type")).toMatch(/application\/json/);
  });

  it("serves a self-signed key response that verifies against the key it serves", async () => {
    const before = Date.now();
    const res = await request(hs.url, "GET", "/_matrix/key/v2/server");
    expect(res.status).toBe(200);
    const body = res.json;
    expect(body.server_name).toBe("test.local");
    expect(body.valid_until_ts).toBeGreaterThan(before);
    expect(body.old_verify_keys).toEqual({});
    const [keyId, ...others] = Object.keys(body.verify_keys);
    expect(others).toEqual([]);
    expect(keyId).toMatch(/^ed25519:[a-zA-Z0-9_]+$/);
    const publicKey = decodeBase64(body.verify_keys[keyId!].key);
    expect(verifyJsonSignature(body, "test.local", keyId!, publicKey)).toBe(true);
    // A tampered response must not verify.
    expect(verifyJsonSignature({ ...body, valid_until_ts: body.valid_until_ts + 1 }, "test.local", keyId!, publicKey)).toBe(false);
  });

  it("keeps the signing key file private (mode 0600)", async () => {
    const mode = (await stat(path.join(hs.dataDir, "signing.key"))).mode & 0o777;
    expect(mode).toBe(0o600);
  });

  it("answers the federation version and the well-known client document", async () => {
    const v = await request(hs.url, "GET", "/_matrix/federation/v1/version");
    expect(v.json.server.name).toBe("Parley");
    const wk = await request(hs.url, "GET", "/.well-known/matrix/client");
    expect(wk.json["m.homeserver"].base_url).toMatch(/^http/);
    const ws = await request(hs.url, "GET", "/.well-known/matrix/server");
    expect(ws.status).toBe(404);
    expect(ws.json.errcode).toBe("M_NOT_FOUND");
  });

  it("reports health", async () => {
    const res = await request(hs.url, "GET", "/health");
    expect(res.status).toBe(200);
    expect(res.text).toBe("OK");
  });

  it("puts CORS headers on every response, errors included", async () => {
    for (const [method, p] of [["GET", "/_matrix/client/versions"], ["GET", "/nope"], ["POST", "/_test/echo"]] as const) {
      const res = await request(hs.url, method, p, method === "POST" ? { raw: "{" } : {});
      expect(res.headers.get("access-control-allow-origin")).toBe("*");
      expect(res.headers.get("access-control-allow-headers")).toContain("Authorization");
    }
  });

  it("answers OPTIONS before any endpoint logic", async () => {
    const res = await request(hs.url, "OPTIONS", "/_test/crash");
    expect(res.status).toBe(204);
    expect(res.headers.get("access-control-allow-methods")).toContain("PUT");
  });

  it("answers unknown paths with 404 M_UNRECOGNIZED and wrong methods with 405 M_UNRECOGNIZED", async () => {
    const unknown = await request(hs.url, "GET", "/_matrix/client/v3/no/such/thing");
    expect(unknown.status).toBe(404);
    expect(unknown.json.errcode).toBe("M_UNRECOGNIZED");
    expect(unknown.headers.get("content-type")).toMatch(/application\/json/);
    const wrong = await request(hs.url, "DELETE", "/_matrix/key/v2/server");
    expect(wrong.status).toBe(405);
    expect(wrong.json.errcode).toBe("M_UNRECOGNIZED");
  });

  it("refuses a body that is not JSON with 400 M_NOT_JSON", async () => {
    const res = await request(hs.url, "POST", "/_test/echo", { raw: "{not json", headers: { "Content-Type": "application/json" } });
    expect(res.status).toBe(400);
    expect(res.json.errcode).toBe("M_NOT_JSON");
  });

  it("refuses JSON of the wrong shape with 400 M_BAD_JSON, whatever the content type", async () => {
    const wrong = await request(hs.url, "POST", "/_test/echo", { body: { n: "one" } });
    expect(wrong.json.errcode).toBe("M_BAD_JSON");
    const array = await request(hs.url, "POST", "/_test/echo", { raw: "[1,2]", headers: { "Content-Type": "text/plain" } });
    expect(array.status).toBe(400);
    expect(array.json.errcode).toBe("M_BAD_JSON");
    const ok = await request(hs.url, "POST", "/_test/echo", { raw: '{"n":3}', headers: { "Content-Type": "text/plain" } });
    expect(ok.json).toEqual({ n: 3 });
  });

  it("refuses a huge body with 413 M_TOO_LARGE, declared or streamed", async () => {
    const big = "x".repeat(hs.config.max_request_bytes + 10);
    const declared = await request(hs.url, "POST", "/_test/echo", { raw: big });
    expect(declared.status).toBe(413);
    expect(declared.json.errcode).toBe("M_TOO_LARGE");
    // Chunked, with no Content-Length to trust.
    const chunk = new TextEncoder().encode("x".repeat(1 << 20));
    let sent = 0;
    const stream = new ReadableStream<Uint8Array>({
      pull(controller) {
        if (sent > hs.config.max_request_bytes + (1 << 20)) return controller.close();
        sent += chunk.byteLength;
        controller.enqueue(chunk);
      },
    });
    const res = await fetch(hs.url + "/_test/echo", { method: "POST", body: stream, duplex: "half" } as RequestInit);
    expect(res.status).toBe(413);
    expect(((await res.json()) as { errcode: string }).errcode).toBe("M_TOO_LARGE");
  });

  it("answers an unexpected failure with 500 M_UNKNOWN as JSON and keeps serving", async () => {
    const res = await request(hs.url, "GET", "/_test/crash");
    expect(res.status).toBe(500);
    expect(res.json).toEqual({ errcode: "M_UNKNOWN", error: "Internal server error" });
    const after = await request(hs.url, "GET", "/_matrix/client/versions");
    expect(after.status).toBe(200);
  });

  it("gives every response a request ID", async () => {
    const a = await request(hs.url, "GET", "/_matrix/client/versions");
    const b = await request(hs.url, "GET", "/_matrix/client/versions");
    expect(a.headers.get("x-request-id")).toBeTruthy();
    expect(a.headers.get("x-request-id")).not.toBe(b.headers.get("x-request-id"));
  });
});

describe("restarts", () => {
  it("keep the same signing key and the same data", async () => {
    const database = await createTestDatabase();
    const first = await startTestServer({ database, embedded: "disk" });
    const key1 = (await request(first.url, "GET", "/_matrix/key/v2/server")).json.verify_keys;
    await first.services.db.execute(
      (await import("drizzle-orm")).sql`insert into server_settings (key, value, updated_ts) values ('probe', 'kept', 1)`,
    );
    await first.stop();

    const second = await startTestServer({ database, dataDir: first.dataDir });
    try {
      const key2 = (await request(second.url, "GET", "/_matrix/key/v2/server")).json.verify_keys;
      expect(key2).toEqual(key1);
      const { sql } = await import("drizzle-orm");
      const { rowsOf } = await import("../schema/db.ts");
      const rows = rowsOf<{ value: string }>(
        await second.services.db.execute(sql`select value from server_settings where key = 'probe'`),
      );
      expect(rows.map((r) => r.value)).toEqual(["kept"]);
    } finally {
      await second.destroy();
    }
  }, 90_000); // two starts on disk, the first creating the embedded cluster (initdb)

  it("refuse to start a database under a different server name", async () => {
    const database = await createTestDatabase();
    const first = await startTestServer({ database, embedded: "disk" });
    await first.stop();
    await expect(
      startTestServer({ database, dataDir: first.dataDir, config: { server_name: "other.local" } }),
    ).rejects.toThrow(/server name/);
    const again = await startTestServer({ database, dataDir: first.dataDir });
    await again.destroy();
  }, 90_000); // two starts on disk, the first creating the embedded cluster (initdb)
});

describe("graceful shutdown", () => {
  it("finishes an in-flight request, then refuses new connections", async () => {
    let release!: () => void;
    const released = new Promise<void>((r) => (release = r));
    let entered!: () => void;
    const inHandler = new Promise<void>((r) => (entered = r));
    const hs = await startTestServer({
      extraRoutes: [
        route({
          method: "GET",
          path: "/_test/slow",
          auth: "none",
          handler: async () => {
            entered();
            await released;
            return { finished: true };
          },
        }),
      ],
    });
    const inflight = request(hs.url, "GET", "/_test/slow");
    await inHandler;
    const closed = hs.destroy();
    await new Promise((r) => setTimeout(r, 100));
    await expect(fetch(hs.url + "/_matrix/client/versions")).rejects.toThrow();
    release();
    const res = await inflight;
    expect(res.status).toBe(200);
    expect(res.json).toEqual({ finished: true });
    await closed;
  });
});
