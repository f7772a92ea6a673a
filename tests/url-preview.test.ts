// URL previews when `url_preview_enabled` is on: a page server on loopback (allowed through
// `url_preview_insecure` for 127.0.0.1 only), Open Graph tags with fallbacks, the image stored as
// an mxc URI, redirects, the address policy, the size cap and the cache.
// https://spec.matrix.org/latest/client-server-api/#get_matrixclientv1mediapreview_url
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import sharp from "sharp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { registerUser, type TestUser } from "./accounts-helpers.ts";
import { request, startTestServer, type TestServer } from "./harness.ts";

const V1 = "/_matrix/client/v1/media";

describe("URL previews", () => {
  let hs: TestServer;
  let alice: TestUser;
  let pages: Server;
  let origin: string;
  let image: Buffer;
  const hits = new Map<string, number>();

  beforeAll(async () => {
    image = await sharp({ create: { width: 279, height: 129, channels: 3, background: { r: 10, g: 100, b: 200 } } }).png().toBuffer();
    pages = createServer((req, res) => {
      const url = req.url ?? "/";
      hits.set(url, (hits.get(url) ?? 0) + 1);
      if (url === "/og.html") {
        res.writeHead(200, { "Content-Type": "text/html; charset=utf-8" });
        res.end(`<!doctype html><html><head><title>Fallback title</title>
          <meta content="The Rock &amp; Roll" property="og:title">
          <meta property='og:type' content='video.movie' />
          <meta property="og:url" content="http://www.imdb.com/title/tt0117500/" />
          <meta property="og:description" content="A film">
          <meta property="og:image" content="/img/rock.png" />
          </head><body>ignored</body></html>`);
      } else if (url === "/plain.html") {
        res.writeHead(200, { "Content-Type": "text/html" });
        res.end(`<html><head><TITLE>  Just a
          title </TITLE><meta name="description" content="Described here"></head></html>`);
      } else if (url === "/img/rock.png") {
        res.writeHead(200, { "Content-Type": "image/png", "Content-Length": image.length });
        res.end(image);
      } else if (url === "/huge.html") {
        // No Content-Length: the cap is enforced while reading.
        res.writeHead(200, { "Content-Type": "text/html" });
        const chunk = Buffer.alloc(64 * 1024, "a");
        let sent = 0;
        const more = () => {
          while (sent < 2 * 1024 * 1024) {
            sent += chunk.length;
            if (!res.write(chunk)) return void res.once("drain", more);
          }
          res.end();
        };
        more();
      } else if (url.startsWith("/redirect/")) {
        const n = Number(url.slice("/redirect/".length));
        res.writeHead(302, { Location: n > 1 ? `/redirect/${n - 1}` : "/plain.html" });
        res.end();
      } else if (url === "/to-localhost") {
        const port = (pages.address() as AddressInfo).port;
        res.writeHead(302, { Location: `http://localhost:${port}/plain.html` });
        res.end();
      } else {
        res.writeHead(404);
        res.end();
      }
    });
    await new Promise<void>((resolve) => pages.listen(0, "127.0.0.1", resolve));
    origin = `http://127.0.0.1:${(pages.address() as AddressInfo).port}`;
    hs = await startTestServer({ config: { url_preview_enabled: true, url_preview_insecure: ["127.0.0.1"] } });
    alice = await registerUser(hs.url, "alice");
  });
  afterAll(async () => {
    await hs.destroy();
    await new Promise((resolve) => pages.close(resolve));
  });

  const preview = (url: string, options: { anonymous?: boolean } = {}) =>
    request(hs.url, "GET", `${V1}/preview_url?url=${encodeURIComponent(url)}&ts=${Date.now()}`, options.anonymous ? {} : { token: alice.accessToken });

  it("answers the page's Open Graph tags, its image stored here and named by an mxc URI", async () => {
    const res = await preview(`${origin}/og.html`);
    expect(res.status, res.text).toBe(200);
    expect(res.json["og:title"]).toBe("The Rock & Roll");
    expect(res.json["og:type"]).toBe("video.movie");
    expect(res.json["og:url"]).toBe("http://www.imdb.com/title/tt0117500/");
    expect(res.json["og:description"]).toBe("A film");
    expect(res.json["og:image:width"]).toBe(279);
    expect(res.json["og:image:height"]).toBe(129);
    expect(res.json["matrix:image:size"]).toBe(image.length);
    const mxc = res.json["og:image"] as string;
    expect(mxc).toMatch(/^mxc:\/\/test\.local\/[A-Za-z0-9_-]+$/);
    const got = await fetch(`${hs.url}${V1}/download/${mxc.slice("mxc://".length)}`, { headers: { Authorization: `Bearer ${alice.accessToken}` } });
    expect(got.status).toBe(200);
    expect(Buffer.from(await got.arrayBuffer()).equals(image)).toBe(true);
  });

  it("falls back to <title> and the meta description, and caches the answer per URL", async () => {
    const first = await preview(`${origin}/plain.html`);
    expect(first.status, first.text).toBe(200);
    expect(first.json).toEqual({ "og:title": "Just a title", "og:description": "Described here" });
    const before = hits.get("/plain.html");
    const again = await preview(`${origin}/plain.html`);
    expect(again.json).toEqual(first.json);
    expect(hits.get("/plain.html")).toBe(before);
  });

  it("follows up to 3 redirects, and no more", async () => {
    const three = await preview(`${origin}/redirect/3`);
    expect(three.status, three.text).toBe(200);
    expect(three.json["og:title"]).toBe("Just a title");
    const four = await preview(`${origin}/redirect/4`);
    expect(four.status).toBe(502);
  });

  it("refuses loopback addresses not named in url_preview_insecure, also reached by a redirect", async () => {
    const port = (pages.address() as AddressInfo).port;
    const byName = await preview(`http://localhost:${port}/plain.html`);
    expect(byName.status).toBe(403);
    expect(byName.json.errcode).toBe("M_FORBIDDEN");
    const literal = await preview(`http://[::1]:${port}/plain.html`);
    expect(literal.status).toBe(403);
    const redirected = await preview(`${origin}/to-localhost`);
    expect(redirected.status).toBe(403);
    expect(hits.get("/to-localhost")).toBe(1);
  });

  it("refuses a page larger than the cap, other schemes, and a request without a token", async () => {
    const huge = await preview(`${origin}/huge.html`);
    expect(huge.status).toBe(502);
    expect(huge.json.errcode).toBe("M_TOO_LARGE");
    const ftp = await preview("ftp://127.0.0.1/file");
    expect(ftp.status).toBe(400);
    expect(ftp.json.errcode).toBe("M_INVALID_PARAM");
    const garbage = await preview("not a url");
    expect(garbage.status).toBe(400);
    const anonymous = await preview(`${origin}/plain.html`, { anonymous: true });
    expect(anonymous.status).toBe(401);
  });
});
