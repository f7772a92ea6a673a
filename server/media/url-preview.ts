// URL previews (`GET /_matrix/client/v1/media/preview_url`), when `url_preview_enabled` is on: the
// server fetches the page for the client and answers its Open Graph tags, the image stored in the
// media repository and named by its mxc URI.
// https://spec.matrix.org/latest/client-server-api/#get_matrixclientv1mediapreview_url
//
// Fetching URLs that clients name is an SSRF risk: only http and https, at most 3 redirects (each
// hop checked again), every resolved address judged by the address policy (no loopback or private
// networks unless `url_preview_insecure` names the host), a size cap and a timeout on each fetch.
import { isIP } from "node:net";
import type { Readable } from "node:stream";
import type { Logger } from "pino";
import sharp from "sharp";
import { Agent } from "undici";
import { MatrixError } from "../http/errors.ts";
import { policyLookup } from "../http/outbound.ts";
import type { MediaRepository } from "./media.ts";
import { baseType } from "./thumbnails.ts";

export interface UrlPreviewOptions {
  media: MediaRepository;
  /** Whether an outbound connection may go to this resolved address (the federation address policy). */
  allowAddress(address: string): boolean;
  /** `url_preview_insecure`: hosts (or `*`) reached whatever they resolve to, certificates unchecked. */
  insecure: string[];
  logger: Logger;
  now(): number;
  /** The largest page read, in bytes. */
  maxPageBytes?: number;
  /** The largest image stored. */
  maxImageBytes?: number;
  timeoutMs?: number;
}

const MAX_REDIRECTS = 3;
const CACHE_TTL_MS = 60 * 60 * 1000;
const CACHE_ENTRIES = 1000;
/** Meta and title tags are looked for in this much of the page at most. */
const SCAN_CHARS = 256 * 1024;
const MAX_TEXT = 2000;

type Preview = Record<string, string | number>;

class PreviewFetchError extends Error {}

export class UrlPreviewer {
  private readonly checked: Agent;
  private readonly trusted: Agent;
  private readonly maxPageBytes: number;
  private readonly maxImageBytes: number;
  private readonly timeoutMs: number;
  /** Answers per URL for an hour, oldest evicted first beyond CACHE_ENTRIES. */
  private readonly cache = new Map<string, { expires: number; preview: Promise<Preview> }>();

  constructor(private readonly opts: UrlPreviewOptions) {
    this.maxPageBytes = opts.maxPageBytes ?? 1024 * 1024;
    this.maxImageBytes = Math.min(opts.maxImageBytes ?? 10 * 1024 * 1024, opts.media.maxUploadBytes);
    this.timeoutMs = opts.timeoutMs ?? 10_000;
    const common = { connectTimeout: this.timeoutMs, headersTimeout: this.timeoutMs, bodyTimeout: this.timeoutMs, connections: 8 };
    this.checked = new Agent({ ...common, connect: { lookup: policyLookup(this.opts.allowAddress) } });
    // Hosts of a closed test network: any address, and their certificates not checked (sytest's
    // page server has a self-signed one).
    this.trusted = new Agent({ ...common, pipelining: 0, connect: { rejectUnauthorized: false } });
  }

  async close(): Promise<void> {
    await Promise.all([this.checked.destroy(), this.trusted.destroy()]).catch(() => {});
  }

  /** The preview of `url` for `userId` (who owns the image stored for it), from the cache when fresh. */
  async preview(rawUrl: string, userId: string): Promise<Preview> {
    const url = parseHttpUrl(rawUrl);
    const key = url.href;
    const now = this.opts.now();
    const cached = this.cache.get(key);
    if (cached && cached.expires > now) return cached.preview;
    this.cache.delete(key);
    const preview = this.build(url, userId);
    this.cache.set(key, { expires: now + CACHE_TTL_MS, preview });
    while (this.cache.size > CACHE_ENTRIES) this.cache.delete(this.cache.keys().next().value!);
    // Failures are not kept: the next request tries again.
    preview.catch(() => {
      if (this.cache.get(key)?.preview === preview) this.cache.delete(key);
    });
    return preview;
  }

  private async build(url: URL, userId: string): Promise<Preview> {
    const page = await this.fetch(url, "text/html,application/xhtml+xml;q=0.9,image/*;q=0.8,*/*;q=0.5");
    const type = baseType(page.contentType);
    if (type.startsWith("image/")) {
      // The URL is an image itself: it is the preview's image.
      const image = await this.storeImage(page.body, page.contentType, userId);
      return { "og:url": page.url.href, ...image };
    }
    if (type !== "text/html" && type !== "application/xhtml+xml") {
      discard(page.body);
      return { "og:url": page.url.href };
    }
    const html = await readCapped(page.body, this.maxPageBytes);
    const tags = parseHtml(html.toString("utf8"));
    const preview: Preview = {};
    for (const [k, v] of Object.entries(tags.og)) {
      if (k === "og:image" || k.startsWith("og:image:")) continue;
      preview[k] = v;
    }
    if (!preview["og:title"] && tags.title) preview["og:title"] = tags.title;
    if (!preview["og:description"] && tags.description) preview["og:description"] = tags.description;
    const imageUrl = tags.og["og:image"] ?? tags.og["og:image:url"] ?? tags.og["og:image:secure_url"];
    if (imageUrl) {
      try {
        const image = await this.fetch(new URL(imageUrl, page.url), "image/*");
        if (!baseType(image.contentType).startsWith("image/")) throw new PreviewFetchError("not an image");
        Object.assign(preview, await this.storeImage(image.body, image.contentType, userId));
        for (const side of ["og:image:width", "og:image:height"]) {
          const given = Number(tags.og[side]);
          if (preview[side] === undefined && Number.isInteger(given) && given > 0) preview[side] = given;
        }
      } catch (err) {
        // No image rather than no preview.
        this.opts.logger.debug({ err, imageUrl }, "url preview: image not stored");
      }
    }
    return preview;
  }

  /** Stores the image as the user's media; its mxc URI, type, size and dimensions. */
  private async storeImage(body: Readable, contentType: string, userId: string): Promise<Preview> {
    const stored = await this.opts.media.saveFetched(userId, body, { contentType: baseType(contentType), maxBytes: this.maxImageBytes });
    const out: Preview = { "og:image": stored.contentUri, "og:image:type": baseType(contentType), "matrix:image:size": stored.size };
    try {
      const opened = await this.opts.media.download(stored.serverName, stored.mediaId, { timeoutMs: 0, allowRemote: false, legacy: false });
      const reader = sharp({ limitInputPixels: 100_000_000 });
      opened.stream.pipe(reader);
      const meta = await reader.metadata();
      opened.stream.destroy();
      if (meta.width) out["og:image:width"] = meta.width;
      if (meta.height) out["og:image:height"] = meta.pageHeight ?? meta.height;
    } catch {
      // Not an image sharp reads: the dimensions stay unknown.
    }
    return out;
  }

  /** GET with the redirects followed (at most MAX_REDIRECTS, each checked again); the body unread. */
  private async fetch(start: URL, accept: string): Promise<{ url: URL; contentType: string; body: Readable }> {
    let url = start;
    for (let hop = 0; ; hop++) {
      const insecure = this.isInsecure(url);
      const host = url.hostname.replace(/^\[|\]$/g, "");
      // net.connect skips the lookup for IP literals, so they are judged here.
      if (!insecure && isIP(host) && !this.opts.allowAddress(host)) throw refused(url);
      let response;
      try {
        response = await (insecure ? this.trusted : this.checked).request({
          origin: url.origin,
          method: "GET",
          path: url.pathname + url.search,
          headers: { accept: accept, "user-agent": "Parley URL preview" },
          signal: AbortSignal.timeout(this.timeoutMs),
        });
      } catch (err) {
        const code = (err as { code?: string }).code ?? (err as { cause?: { code?: string } }).cause?.code;
        if (code === "EPARLEYBLOCKED") throw refused(url);
        throw new MatrixError(502, "M_UNKNOWN", `Could not fetch ${url.href}`);
      }
      const { statusCode, headers, body } = response;
      if ([301, 302, 303, 307, 308].includes(statusCode)) {
        discard(body);
        const location = header(headers.location);
        if (!location || hop >= MAX_REDIRECTS) throw new MatrixError(502, "M_UNKNOWN", `Too many redirects fetching ${start.href}`);
        url = parseHttpUrl(new URL(location, url).href);
        continue;
      }
      if (statusCode < 200 || statusCode >= 300) {
        discard(body);
        throw new MatrixError(502, "M_UNKNOWN", `${url.href} answered HTTP ${statusCode}`);
      }
      const length = Number(header(headers["content-length"]));
      if (Number.isFinite(length) && length > Math.max(this.maxPageBytes, this.maxImageBytes)) {
        discard(body);
        throw tooLarge(url);
      }
      return { url, contentType: header(headers["content-type"]) ?? "application/octet-stream", body };
    }
  }

  private isInsecure(url: URL): boolean {
    const list = this.opts.insecure;
    return list.includes("*") || list.includes(url.host) || list.includes(url.hostname);
  }

}

function parseHttpUrl(raw: string): URL {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new MatrixError(400, "M_INVALID_PARAM", "url is not a valid URL");
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") throw new MatrixError(400, "M_INVALID_PARAM", "Only http and https URLs can be previewed");
  if (url.username || url.password) throw new MatrixError(400, "M_INVALID_PARAM", "URLs with credentials cannot be previewed");
  url.hash = "";
  return url;
}

/** Drops a body not wanted; undici's streams report their destruction as an error, heard here. */
function discard(body: Readable): void {
  body.on("error", () => {});
  body.destroy();
}

const header = (v: string | string[] | undefined) => (Array.isArray(v) ? v[0] : v);
const refused = (url: URL) => new MatrixError(403, "M_FORBIDDEN", `${url.hostname} is an address this server may not fetch`);
const tooLarge = (url: URL) => new MatrixError(502, "M_TOO_LARGE", `${url.href} is too large to preview`);

/** The body, or a 502 M_TOO_LARGE once it passes `maxBytes`. */
async function readCapped(body: Readable, maxBytes: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  try {
    for await (const chunk of body as AsyncIterable<Buffer>) {
      size += chunk.byteLength;
      if (size > maxBytes) {
        discard(body);
        throw new PreviewFetchError("too large");
      }
      chunks.push(chunk);
    }
  } catch (err) {
    if (err instanceof PreviewFetchError) throw new MatrixError(502, "M_TOO_LARGE", `The page is larger than ${maxBytes} bytes`);
    throw new MatrixError(502, "M_UNKNOWN", "Could not read the page");
  }
  return Buffer.concat(chunks);
}

/**
 * A small tolerant scan of the head of a page: `<meta property|name="og:…" content="…">`, the
 * meta description and `<title>`. Not a full HTML parser: attributes in any order and quoting.
 */
export function parseHtml(html: string): { og: Record<string, string>; title?: string; description?: string } {
  const text = html.slice(0, SCAN_CHARS);
  const og: Record<string, string> = {};
  let description: string | undefined;
  for (const match of text.matchAll(/<meta\b([^>]*)>/gi)) {
    const attrs = attributes(match[1] ?? "");
    const name = (attrs.property ?? attrs.name ?? "").toLowerCase();
    const content = attrs.content;
    if (content === undefined) continue;
    if (name.startsWith("og:") && !(name in og)) og[name] = clip(decodeEntities(content));
    else if (name === "description" && description === undefined) description = clip(decodeEntities(content));
  }
  const title = /<title\b[^>]*>([\s\S]*?)<\/title>/i.exec(text)?.[1];
  const cleanTitle = title === undefined ? undefined : clip(decodeEntities(title).replace(/\s+/g, " ").trim());
  return { og, title: cleanTitle || undefined, description: description || undefined };
}

function attributes(source: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const m of source.matchAll(/([a-zA-Z_:][-a-zA-Z0-9_:.]*)\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'=<>`]+))/g)) {
    const name = m[1]!.toLowerCase();
    if (!(name in out)) out[name] = m[2] ?? m[3] ?? m[4] ?? "";
  }
  return out;
}

const NAMED: Record<string, string> = { amp: "&", lt: "<", gt: ">", quot: '"', apos: "'", nbsp: "\u00a0" };

function decodeEntities(s: string): string {
  return s.replace(/&(#x[0-9a-f]+|#[0-9]+|[a-z]+);/gi, (whole, e: string) => {
    if (e[0] === "#") {
      const code = e[1] === "x" || e[1] === "X" ? parseInt(e.slice(2), 16) : parseInt(e.slice(1), 10);
      return code > 0 && code <= 0x10ffff ? String.fromCodePoint(code) : whole;
    }
    return NAMED[e.toLowerCase()] ?? whole;
  });
}

const clip = (s: string) => (s.length > MAX_TEXT ? s.slice(0, MAX_TEXT) : s);
