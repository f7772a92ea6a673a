// Another server's media, fetched for our clients: the authenticated federation endpoint
// (`GET /_matrix/federation/v1/media/download/{mediaId}`, multipart/mixed), and for servers older
// than v1.11 the legacy `GET /_matrix/media/v3/download/{serverName}/{mediaId}?allow_remote=false`.
// The body is handed on as a stream: the media repository stores it as it arrives.
// https://spec.matrix.org/latest/server-server-api/#content-repository
import type { Logger } from "pino";
import type { RemoteMedia, RemoteMediaFetcher } from "../../server/media/media.ts";
import { MatrixError } from "../../server/http/errors.ts";
import { FederationRequestError, type FederationHttpClient, type FederationStreamResponse } from "./http-client.ts";

const MAX_PREAMBLE = 64 * 1024;
const MAX_PART_HEADERS = 16 * 1024;
const MAX_METADATA = 1024 * 1024;

export function remoteMediaFetcher(http: FederationHttpClient, logger: Logger): RemoteMediaFetcher {
  return async (serverName, mediaId) => {
    const id = encodeURIComponent(mediaId);
    try {
      const response = await http.requestStream(serverName, { method: "GET", path: `/_matrix/federation/v1/media/download/${id}` });
      if (response.status === 200) return await fromMultipart(response);
      const error = await errorBody(response);
      // A server from before v1.11 does not know the endpoint: ask its legacy one.
      if (error.errcode !== "M_UNRECOGNIZED" && !(response.status === 404 && error.errcode === undefined)) {
        throw refused(serverName, response.status, error.errcode);
      }
      const legacy = await http.requestStream(serverName, {
        method: "GET",
        path: `/_matrix/media/v3/download/${encodeURIComponent(serverName)}/${id}?allow_remote=false`,
      });
      if (legacy.status !== 200) {
        const legacyError = await errorBody(legacy);
        throw refused(serverName, legacy.status, legacyError.errcode);
      }
      return {
        contentType: header(legacy, "content-type"),
        uploadName: filenameOf(header(legacy, "content-disposition")),
        body: legacy.body,
      };
    } catch (err) {
      if (err instanceof MatrixError) throw err;
      if (err instanceof FederationRequestError) {
        logger.info({ serverName, mediaId, failure: err.failure }, "remote media could not be fetched");
        throw new MatrixError(502, "M_UNKNOWN", `Could not fetch the media from ${serverName}: ${err.failure}`);
      }
      throw err;
    }
  };
}

/** The origin refused: a 4xx means it has nothing for us (404 to our client), anything else 502. */
function refused(serverName: string, status: number, errcode: string | undefined): MatrixError {
  if (status >= 400 && status < 500) return new MatrixError(404, "M_NOT_FOUND", "Media not found");
  return new MatrixError(502, "M_UNKNOWN", `${serverName} answered ${status}${errcode ? ` ${errcode}` : ""}`);
}

async function errorBody(response: FederationStreamResponse): Promise<{ errcode?: string }> {
  try {
    const text = await readAtMost(response.body, 64 * 1024);
    const json = JSON.parse(text) as { errcode?: unknown };
    return typeof json.errcode === "string" ? { errcode: json.errcode } : {};
  } catch {
    response.body.destroy();
    return {};
  }
}

async function readAtMost(body: AsyncIterable<Uint8Array> & { destroy(): unknown }, max: number): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of body) {
    size += chunk.byteLength;
    if (size > max) {
      body.destroy();
      throw new Error("too large");
    }
    chunks.push(Buffer.from(chunk));
  }
  return Buffer.concat(chunks).toString("utf8");
}

function header(response: FederationStreamResponse, name: string): string | undefined {
  const value = response.headers[name];
  return Array.isArray(value) ? value[0] : value;
}

async function fromMultipart(response: FederationStreamResponse): Promise<RemoteMedia> {
  const contentType = header(response, "content-type") ?? "";
  const boundary = /^multipart\/mixed\s*;.*\bboundary=(?:"([^"]+)"|([^;\s]+))/i.exec(contentType);
  const value = boundary?.[1] ?? boundary?.[2];
  if (!value) {
    response.body.destroy();
    throw new MatrixError(502, "M_UNKNOWN", "The origin's answer is not multipart/mixed");
  }
  try {
    const parts = await openMultipart(response.body, value);
    if (parts.headers.has("location")) {
      // A redirect to a URL of the origin's choosing: not followed (it could point anywhere).
      parts.content.return?.(undefined);
      response.body.destroy();
      throw new MatrixError(502, "M_UNKNOWN", "The origin redirected the media elsewhere; redirects are not followed");
    }
    return {
      contentType: parts.headers.get("content-type"),
      uploadName: filenameOf(parts.headers.get("content-disposition")),
      body: parts.content,
    };
  } catch (err) {
    response.body.destroy();
    if (err instanceof MatrixError) throw err;
    throw new MatrixError(502, "M_UNKNOWN", `The origin's multipart answer could not be read: ${(err as Error).message}`);
  }
}

/**
 * Reads a multipart/mixed body (RFC 2046) of two parts as the spec has it: the JSON metadata part,
 * read whole, then the headers of the content part; the content itself is streamed.
 */
export async function openMultipart(
  body: AsyncIterable<Uint8Array>,
  boundary: string,
): Promise<{ metadata: unknown; headers: Map<string, string>; content: AsyncGenerator<Buffer> }> {
  const source = body[Symbol.asyncIterator]();
  let buf = Buffer.alloc(0);
  let ended = false;
  const pull = async (): Promise<boolean> => {
    if (ended) return false;
    const next = await source.next();
    if (next.done) {
      ended = true;
      return false;
    }
    buf = buf.length === 0 ? Buffer.from(next.value) : Buffer.concat([buf, next.value]);
    return true;
  };
  const readUntil = async (marker: string, max: number): Promise<Buffer> => {
    const m = Buffer.from(marker, "latin1");
    for (;;) {
      const at = buf.indexOf(m);
      if (at >= 0) {
        const before = buf.subarray(0, at);
        buf = buf.subarray(at + m.length);
        return before;
      }
      if (buf.length > max + m.length) throw new Error("a part is larger than allowed");
      if (!(await pull())) throw new Error("the body ended early");
    }
  };
  const partHeaders = async (): Promise<Map<string, string>> => {
    const text = (await readUntil("\r\n\r\n", MAX_PART_HEADERS)).toString("latin1");
    const headers = new Map<string, string>();
    // The first line is the rest of the boundary line (transport padding), or "--" when it closes.
    const [first, ...lines] = text.split("\r\n");
    if (first?.startsWith("--")) throw new Error("fewer parts than expected");
    for (const line of lines) {
      const colon = line.indexOf(":");
      if (colon > 0) headers.set(line.slice(0, colon).trim().toLowerCase(), line.slice(colon + 1).trim());
    }
    return headers;
  };
  const delimiter = `\r\n--${boundary}`;
  // Preamble, then the first boundary (which need not follow a CRLF when nothing precedes it).
  buf = Buffer.concat([Buffer.from("\r\n"), buf]);
  await readUntil(delimiter, MAX_PREAMBLE);
  await partHeaders();
  const metadata = JSON.parse((await readUntil(delimiter, MAX_METADATA)).toString("utf8")) as unknown;
  const headers = await partHeaders();
  const marker = Buffer.from(delimiter, "latin1");
  async function* content(): AsyncGenerator<Buffer> {
    for (;;) {
      const at = buf.indexOf(marker);
      if (at >= 0) {
        if (at > 0) yield buf.subarray(0, at);
        return;
      }
      // Keep what could be the start of the delimiter for the next round.
      const keep = Math.min(buf.length, marker.length - 1);
      if (buf.length > keep) {
        const out = buf.subarray(0, buf.length - keep);
        buf = buf.subarray(buf.length - keep);
        yield out;
      }
      if (!(await pull())) throw new Error("the body ended before the closing boundary");
    }
  }
  return { metadata, headers, content: content() };
}

/** The file name of a `Content-Disposition` header: `filename*=utf-8''…` first, else `filename`. */
export function filenameOf(disposition: string | undefined): string | undefined {
  if (!disposition) return undefined;
  const extended = /filename\*\s*=\s*utf-8''([^;\s]+)/i.exec(disposition);
  if (extended?.[1]) {
    try {
      return decodeURIComponent(extended[1]);
    } catch {
      return undefined;
    }
  }
  const plain = /filename\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]+))/i.exec(disposition);
  if (plain?.[1] !== undefined) return plain[1].replace(/\\(.)/g, "$1");
  return plain?.[2];
}
