// The content repository over HTTP: uploads (direct and asynchronous), downloads, thumbnails, the
// headers that keep uploaded pages from running, limits, and media fetched from another server.
// https://spec.matrix.org/latest/client-server-api/#content-repository
import { readdir } from "node:fs/promises";
import { request as httpRequest } from "node:http";
import path from "node:path";
import sharp from "sharp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { registerUser, type TestUser } from "./accounts-helpers.ts";
import { type Network, startNetwork } from "./federation-harness.ts";
import { request, startTestServer, type TestServer } from "./harness.ts";

const UPLOAD = "/_matrix/media/v3/upload";
const V1 = "/_matrix/client/v1/media";
const MAX_UPLOAD = 64 * 1024;

async function fetchBytes(url: string, token?: string) {
  const res = await fetch(url, { headers: token ? { Authorization: `Bearer ${token}` } : {} });
  return { status: res.status, headers: res.headers, bytes: Buffer.from(await res.arrayBuffer()) };
}

async function upload(base: string, token: string, bytes: Uint8Array | string, contentType: string, filename?: string) {
  const q = filename === undefined ? "" : `?filename=${encodeURIComponent(filename)}`;
  const res = await request(base, "POST", UPLOAD + q, { raw: bytes, token, headers: { "Content-Type": contentType } });
  expect(res.status, res.text).toBe(200);
  const uri = res.json.content_uri as string;
  expect(uri).toMatch(/^mxc:\/\/[^/]+\/[A-Za-z0-9_-]+$/);
  return uri.slice("mxc://".length);
}

async function filesUnder(dir: string): Promise<string[]> {
  try {
    const entries = await readdir(dir, { recursive: true, withFileTypes: true });
    return entries.filter((e) => e.isFile()).map((e) => path.join(e.parentPath, e.name));
  } catch {
    return [];
  }
}

async function png(width: number, height: number): Promise<Buffer> {
  return sharp({ create: { width, height, channels: 3, background: { r: 200, g: 30, b: 60 } } }).png().toBuffer();
}

describe("one server", () => {
  let hs: TestServer;
  let alice: TestUser;
  let bob: TestUser;
  let image: Buffer;
  beforeAll(async () => {
    hs = await startTestServer({ config: { max_upload_size: MAX_UPLOAD } });
    [alice, bob] = await Promise.all([registerUser(hs.url, "alice"), registerUser(hs.url, "bob")]);
    image = await png(400, 300);
  });
  afterAll(() => hs.destroy());

  it("uploads a file and serves it back byte for byte, with and without a file name", async () => {
    const bytes = Buffer.from("Hello, media repository\n");
    const id = await upload(hs.url, alice.accessToken, bytes, "text/plain", "hello.txt");
    const plain = await fetchBytes(`${hs.url}${V1}/download/${id}`, bob.accessToken);
    expect(plain.status).toBe(200);
    expect(plain.bytes.equals(bytes)).toBe(true);
    expect(plain.headers.get("content-type")).toBe("text/plain");
    expect(plain.headers.get("content-disposition")).toBe("inline; filename=hello.txt");
    expect(plain.headers.get("cross-origin-resource-policy")).toBe("cross-origin");
    const named = await fetchBytes(`${hs.url}${V1}/download/${id}/${encodeURIComponent("été ☕.txt")}`, bob.accessToken);
    expect(named.bytes.equals(bytes)).toBe(true);
    expect(named.headers.get("content-disposition")).toBe("inline; filename*=utf-8''%C3%A9t%C3%A9%20%E2%98%95.txt");
  });

  it("requires an access token on the authenticated endpoints", async () => {
    const id = await upload(hs.url, alice.accessToken, "x", "text/plain");
    const res = await request(hs.url, "GET", `${V1}/download/${id}`);
    expect(res.status).toBe(401);
    expect(res.json.errcode).toBe("M_MISSING_TOKEN");
    expect((await request(hs.url, "POST", UPLOAD, { raw: "x" })).status).toBe(401);
  });

  it("answers 404 for unknown media and media IDs outside the allowed alphabet", async () => {
    for (const p of [`${V1}/download/test.local/nosuchmedia`, `${V1}/download/test.local/bad.id`]) {
      const res = await request(hs.url, "GET", p, { token: bob.accessToken });
      expect(res.status).toBe(404);
      expect(res.json.errcode).toBe("M_NOT_FOUND");
    }
  });

  it("serves an uploaded HTML page as an attachment under a sandboxing policy", async () => {
    const id = await upload(hs.url, alice.accessToken, "<script>alert(document.cookie)</script>", "text/html", "page.html");
    const res = await fetchBytes(`${hs.url}${V1}/download/${id}`, bob.accessToken);
    expect(res.status).toBe(200);
    expect(res.headers.get("content-disposition")).toBe("attachment; filename=page.html");
    expect(res.headers.get("content-security-policy")).toContain("sandbox");
    expect(res.headers.get("content-security-policy")).toContain("script-src 'none'");
    expect(res.headers.get("x-content-type-options")).toBe("nosniff");
  });

  it("publishes the upload limit", async () => {
    const res = await request(hs.url, "GET", `${V1}/config`, { token: alice.accessToken });
    expect(res.status).toBe(200);
    expect(res.json).toEqual({ "m.upload.size": MAX_UPLOAD });
  });

  it("refuses an upload over the limit, by its Content-Length or as it streams, and stores nothing", async () => {
    const mediaDir = path.join(hs.dataDir, "media");
    const before = await filesUnder(mediaDir);
    const declared = await request(hs.url, "POST", UPLOAD, { raw: new Uint8Array(MAX_UPLOAD + 1), token: alice.accessToken });
    expect(declared.status).toBe(413);
    expect(declared.json.errcode).toBe("M_TOO_LARGE");
    // No Content-Length: chunked, so the limit is only found while the bytes arrive.
    const chunk = new Uint8Array(16 * 1024).fill(7);
    let sent = 0;
    const body = new ReadableStream<Uint8Array>({
      pull(controller) {
        if (sent >= MAX_UPLOAD * 2) return controller.close();
        sent += chunk.byteLength;
        controller.enqueue(chunk);
      },
    });
    const streamed = await fetch(hs.url + UPLOAD, {
      method: "POST",
      headers: { Authorization: `Bearer ${alice.accessToken}`, "Content-Type": "application/octet-stream" },
      body,
      duplex: "half",
    } as RequestInit);
    expect(streamed.status).toBe(413);
    expect(((await streamed.json()) as { errcode: string }).errcode).toBe("M_TOO_LARGE");
    expect(await filesUnder(mediaDir)).toEqual(before);
  });

  it("keeps nothing of an upload whose client goes away mid-body", async () => {
    const mediaDir = path.join(hs.dataDir, "media");
    const before = await filesUnder(mediaDir);
    const { port } = new URL(hs.url);
    await new Promise<void>((resolve) => {
      const req = httpRequest({
        host: "127.0.0.1",
        port: Number(port),
        method: "POST",
        path: UPLOAD,
        headers: { Authorization: `Bearer ${alice.accessToken}`, "Content-Length": String(MAX_UPLOAD - 1) },
      });
      req.on("error", () => resolve());
      req.on("close", () => resolve());
      req.write(new Uint8Array(20_000), () => setTimeout(() => req.destroy(), 200));
    });
    for (let i = 0; i < 40 && (await filesUnder(mediaDir)).length !== before.length; i++) await new Promise((r) => setTimeout(r, 50));
    expect(await filesUnder(mediaDir)).toEqual(before);
    // The server carries on.
    await upload(hs.url, alice.accessToken, "after the abort", "text/plain");
  });

  it("stores identical uploads once", async () => {
    const contentDir = path.join(hs.dataDir, "media", "content");
    const bytes = Buffer.from(`the same bytes ${Math.random()}`);
    const before = (await filesUnder(contentDir)).length;
    const first = await upload(hs.url, alice.accessToken, bytes, "text/plain", "one.txt");
    const second = await upload(hs.url, bob.accessToken, bytes, "application/octet-stream", "two.bin");
    expect(first).not.toBe(second);
    expect((await filesUnder(contentDir)).length).toBe(before + 1);
    const a = await fetchBytes(`${hs.url}${V1}/download/${first}`, bob.accessToken);
    const b = await fetchBytes(`${hs.url}${V1}/download/${second}`, bob.accessToken);
    expect(a.bytes.equals(bytes) && b.bytes.equals(bytes)).toBe(true);
    // Each keeps its own description.
    expect(a.headers.get("content-disposition")).toBe("inline; filename=one.txt");
    expect(b.headers.get("content-disposition")).toBe("attachment; filename=two.bin");
  });

  it("thumbnails by scale (the original's aspect) and by crop (the requested one)", async () => {
    const id = await upload(hs.url, alice.accessToken, image, "image/png", "photo.png");
    const scaled = await fetchBytes(`${hs.url}${V1}/thumbnail/${id}?width=100&height=100&method=scale`, bob.accessToken);
    expect(scaled.status).toBe(200);
    expect(scaled.headers.get("content-type")).toBe("image/png");
    expect(scaled.headers.get("content-disposition")).toBe("inline; filename=thumbnail.png");
    const s = await sharp(scaled.bytes).metadata();
    expect([s.width, s.height]).toEqual([100, 75]);
    const cropped = await fetchBytes(`${hs.url}${V1}/thumbnail/${id}?width=96&height=96&method=crop`, bob.accessToken);
    const c = await sharp(cropped.bytes).metadata();
    expect([c.width, c.height]).toEqual([96, 96]);
    // Made once: the second answer is the stored thumbnail.
    const again = await fetchBytes(`${hs.url}${V1}/thumbnail/${id}?width=96&height=96&method=crop`, bob.accessToken);
    expect(again.bytes.equals(cropped.bytes)).toBe(true);
  });

  it("serves the original when it is no larger than the thumbnail asked for, and refuses what is no image", async () => {
    const small = await png(20, 10);
    const id = await upload(hs.url, alice.accessToken, small, "image/png");
    const res = await fetchBytes(`${hs.url}${V1}/thumbnail/${id}?width=64&height=64`, bob.accessToken);
    expect(res.status).toBe(200);
    expect(res.bytes.equals(small)).toBe(true);
    const text = await upload(hs.url, alice.accessToken, "not an image", "text/plain");
    const refused = await request(hs.url, "GET", `${V1}/thumbnail/${text}?width=64&height=64`, { token: bob.accessToken });
    expect(refused.status).toBe(400);
    const bad = await request(hs.url, "GET", `${V1}/thumbnail/${id}?width=-3&height=64`, { token: bob.accessToken });
    expect(bad.status).toBe(400);
  });

  it("refuses to thumbnail an image with more pixels than allowed", async () => {
    const other = await startTestServer({ config: { max_image_pixels: 10_000 } });
    try {
      const carol = await registerUser(other.url, "carol");
      const id = await upload(other.url, carol.accessToken, image, "image/png");
      const res = await request(other.url, "GET", `${V1}/thumbnail/${id}?width=32&height=32`, { token: carol.accessToken });
      expect(res.status).toBe(413);
      expect(res.json.errcode).toBe("M_TOO_LARGE");
    } finally {
      await other.destroy();
    }
  });

  it("refuses an upload past the user's quota and keeps nothing of it", async () => {
    const other = await startTestServer({ config: { media_quota_bytes: 1000 } });
    try {
      const carol = await registerUser(other.url, "carol");
      const contentDir = path.join(other.dataDir, "media", "content");
      await upload(other.url, carol.accessToken, new Uint8Array(600).fill(1), "application/octet-stream");
      const before = await filesUnder(contentDir);
      const over = await request(other.url, "POST", UPLOAD, { raw: new Uint8Array(600).fill(2), token: carol.accessToken });
      expect(over.status).toBe(403);
      expect(over.json.errcode).toBe("M_FORBIDDEN");
      expect(await filesUnder(contentDir)).toEqual(before);
      await upload(other.url, carol.accessToken, new Uint8Array(400).fill(3), "application/octet-stream");
      const full = await request(other.url, "POST", UPLOAD, { raw: "x", token: carol.accessToken });
      expect(full.status).toBe(403);
      // Another user's quota is their own.
      const dave = await registerUser(other.url, "dave");
      await upload(other.url, dave.accessToken, new Uint8Array(600).fill(2), "application/octet-stream");
    } finally {
      await other.destroy();
    }
  });

  it("creates a media ID, waits for its upload, and never overwrites it", async () => {
    const created = await request(hs.url, "POST", "/_matrix/media/v1/create", { token: alice.accessToken, body: {} });
    expect(created.status).toBe(200);
    expect(created.json.unused_expires_at).toBeGreaterThan(Date.now());
    const id = (created.json.content_uri as string).slice("mxc://".length);
    const early = await request(hs.url, "GET", `${V1}/download/${id}?timeout_ms=50`, { token: bob.accessToken });
    expect(early.status).toBe(504);
    expect(early.json.errcode).toBe("M_NOT_YET_UPLOADED");
    const byBob = await request(hs.url, "PUT", `/_matrix/media/v3/upload/${id}`, { raw: "x", token: bob.accessToken });
    expect(byBob.status).toBe(403);
    expect(byBob.json.errcode).toBe("M_FORBIDDEN");
    // A download that waits is answered when the upload lands.
    const waiting = fetchBytes(`${hs.url}${V1}/download/${id}?timeout_ms=10000`, bob.accessToken);
    await new Promise((r) => setTimeout(r, 100));
    const put = await request(hs.url, "PUT", `/_matrix/media/v3/upload/${id}?filename=late.txt`, {
      raw: "arrived later",
      token: alice.accessToken,
      headers: { "Content-Type": "text/plain" },
    });
    expect(put.status, put.text).toBe(200);
    const got = await waiting;
    expect(got.status).toBe(200);
    expect(got.bytes.toString()).toBe("arrived later");
    expect(got.headers.get("content-disposition")).toBe("inline; filename=late.txt");
    const overwrite = await request(hs.url, "PUT", `/_matrix/media/v3/upload/${id}`, { raw: "again", token: alice.accessToken });
    expect(overwrite.status).toBe(409);
    expect(overwrite.json.errcode).toBe("M_CANNOT_OVERWRITE_MEDIA");
    const unknown = await request(hs.url, "PUT", "/_matrix/media/v3/upload/test.local/neverCreated", { raw: "x", token: alice.accessToken });
    expect(unknown.status).toBe(404);
  });

  it("keeps media uploaded under the freeze off the unauthenticated endpoints", async () => {
    const id = await upload(hs.url, alice.accessToken, "fresh", "text/plain");
    const legacy = await request(hs.url, "GET", `/_matrix/media/v3/download/${id}`);
    expect(legacy.status).toBe(404);
    const config = await request(hs.url, "GET", "/_matrix/media/v3/config");
    expect(config.json["m.upload.size"]).toBe(MAX_UPLOAD);
    const preview = await request(hs.url, "GET", `${V1}/preview_url?url=https://example.org`, { token: alice.accessToken });
    expect(preview.status).toBe(403);
    expect(preview.json.error).toMatch(/disabled/);
  });
});

describe("two servers", () => {
  let net: Network;
  let alice: TestUser;
  let bob: TestUser;
  beforeAll(async () => {
    // The legacy endpoints open (no freeze), as the sytest run has them.
    net = await startNetwork(2, { config: () => ({ enable_authenticated_media: false }) });
    const [hs1, hs2] = net.servers as [TestServer, TestServer];
    [alice, bob] = await Promise.all([registerUser(hs1.url, "alice"), registerUser(hs2.url, "bob")]);
  });
  afterAll(() => net.destroy());

  it("serves a client of one server the media of another, fetched over federation and cached", async () => {
    const [hs1, hs2] = net.servers as [TestServer, TestServer];
    const image = await png(300, 200);
    const id = await upload(hs1.url, alice.accessToken, image, "image/png", "café.png");
    expect(id.startsWith("hs1.test/")).toBe(true);
    const got = await fetchBytes(`${hs2.url}${V1}/download/${id}`, bob.accessToken);
    expect(got.status).toBe(200);
    expect(got.bytes.equals(image)).toBe(true);
    expect(got.headers.get("content-type")).toBe("image/png");
    expect(got.headers.get("content-disposition")).toBe("inline; filename*=utf-8''caf%C3%A9.png");
    const thumb = await fetchBytes(`${hs2.url}${V1}/thumbnail/${id}?width=30&height=30&method=crop`, bob.accessToken);
    expect(thumb.status).toBe(200);
    expect((await sharp(thumb.bytes).metadata()).width).toBe(30);
  });

  it("answers 404 for media the origin does not have, and the legacy endpoint serves unfrozen media", async () => {
    const [hs1, hs2] = net.servers as [TestServer, TestServer];
    const missing = await request(hs2.url, "GET", `${V1}/download/hs1.test/doesNotExist`, { token: bob.accessToken });
    expect(missing.status).toBe(404);
    const id = await upload(hs1.url, alice.accessToken, "legacy bytes", "text/plain");
    const legacy = await fetchBytes(`${hs2.url}/_matrix/media/v3/download/${id}`);
    expect(legacy.status).toBe(200);
    expect(legacy.bytes.toString()).toBe("legacy bytes");
    expect(legacy.headers.has("content-disposition")).toBe(false);
  });

  it("answers the federation endpoint as multipart/mixed, and only to a signed request", async () => {
    const [hs1] = net.servers as [TestServer];
    const id = await upload(hs1.url, alice.accessToken, "for servers", "text/plain");
    const unsigned = await request(hs1.url, "GET", `/_matrix/federation/v1/media/download/${id.split("/")[1]}`);
    expect(unsigned.status).toBe(401);
  });
});
