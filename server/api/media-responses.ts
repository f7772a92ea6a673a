// How media is served, by the client and the federation endpoints alike: headers that keep an
// uploaded HTML or SVG file from ever running as a page on our origin, and the multipart/mixed
// answer of the federation endpoints.
// https://spec.matrix.org/latest/client-server-api/#serving-inline-content
import { randomBytes } from "node:crypto";
import { Readable } from "node:stream";
import type { OpenedMedia } from "../media/media.ts";
import { baseType } from "../media/thumbnails.ts";

/** The spec's list of types that may be served `inline`; everything else is an `attachment`. */
const INLINE_TYPES = new Set([
  "text/css",
  "text/plain",
  "text/csv",
  "application/json",
  "application/ld+json",
  "image/jpeg",
  "image/gif",
  "image/png",
  "image/apng",
  "image/webp",
  "image/avif",
  "video/mp4",
  "video/webm",
  "video/ogg",
  "video/quicktime",
  "audio/mp4",
  "audio/webm",
  "audio/aac",
  "audio/mpeg",
  "audio/ogg",
  "audio/wave",
  "audio/wav",
  "audio/x-wav",
  "audio/x-pn-wav",
  "audio/flac",
  "audio/x-flac",
]);

// https://spec.matrix.org/latest/client-server-api/#content-repository (the recommended policy,
// plus media-src so that audio and video still play).
const SECURITY_HEADERS: Record<string, string> = {
  "Content-Security-Policy":
    "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; style-src 'unsafe-inline'; media-src 'self'; object-src 'self';",
  "X-Content-Type-Options": "nosniff",
  "Cross-Origin-Resource-Policy": "cross-origin",
};

export function isInlineType(contentType: string): boolean {
  return INLINE_TYPES.has(baseType(contentType));
}

/**
 * `Content-Disposition` per RFC 6266: a plain token as `filename=name`, anything else as
 * `filename*=utf-8''…` (RFC 8187 percent-encoding), never a quoted string.
 */
export function contentDisposition(kind: "inline" | "attachment", filename: string | null | undefined): string {
  if (!filename) return kind;
  // RFC 2616 token: printable ASCII except separators.
  if (/^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/.test(filename)) return `${kind}; filename=${filename}`;
  const encoded = encodeURIComponent(filename).replace(/[!'()*]/g, (ch) => `%${ch.charCodeAt(0).toString(16).toUpperCase()}`);
  return `${kind}; filename*=utf-8''${encoded}`;
}

export interface ServeOptions {
  /** The file name from the request path, which wins over the one uploaded. */
  filename?: string;
  /**
   * The deprecated unauthenticated endpoints leave the header out for inline content without a
   * name, as servers did before v1.12 (sytest checks it).
   */
  legacy?: boolean;
  thumbnail?: boolean;
}

export function mediaResponse(opened: OpenedMedia, options: ServeOptions = {}): Response {
  const inline = isInlineType(opened.contentType);
  const filename = options.thumbnail ? thumbnailName(opened.contentType) : (options.filename ?? opened.uploadName);
  const headers: Record<string, string> = {
    "Content-Type": opened.contentType,
    "Content-Length": String(opened.size),
    "Cache-Control": "public, max-age=86400, s-maxage=86400",
    ...SECURITY_HEADERS,
  };
  if (!(options.legacy && inline && !filename)) headers["Content-Disposition"] = contentDisposition(inline ? "inline" : "attachment", filename);
  return new Response(Readable.toWeb(opened.stream) as ReadableStream<Uint8Array>, { status: 200, headers });
}

/**
 * The federation endpoints' answer: a JSON metadata part (empty for now) and the content part.
 * https://spec.matrix.org/latest/server-server-api/#content-repository
 */
export function multipartMediaResponse(opened: OpenedMedia, options: { thumbnail?: boolean } = {}): Response {
  const boundary = randomBytes(16).toString("hex");
  const inline = isInlineType(opened.contentType);
  const filename = options.thumbnail ? thumbnailName(opened.contentType) : opened.uploadName;
  const head =
    `--${boundary}\r\nContent-Type: application/json\r\n\r\n{}\r\n` +
    `--${boundary}\r\nContent-Type: ${opened.contentType}\r\n` +
    `Content-Disposition: ${contentDisposition(inline ? "inline" : "attachment", filename)}\r\n\r\n`;
  const tail = `\r\n--${boundary}--\r\n`;
  async function* parts() {
    yield Buffer.from(head, "utf8");
    yield* opened.stream;
    yield Buffer.from(tail, "utf8");
  }
  const body = Readable.from(parts(), { objectMode: false });
  return new Response(Readable.toWeb(body) as ReadableStream<Uint8Array>, {
    status: 200,
    headers: {
      "Content-Type": `multipart/mixed; boundary=${boundary}`,
      "Content-Length": String(Buffer.byteLength(head) + opened.size + Buffer.byteLength(tail)),
      ...SECURITY_HEADERS,
    },
  });
}

function thumbnailName(contentType: string): string {
  const ext = baseType(contentType).split("/")[1] ?? "bin";
  return `thumbnail.${ext}`;
}
