// Requests refused before they reach the app: Node's HTTP parser refusing malformed HTTP or headers
// that are too large, Node's request timeouts, and the adapter refusing a bad Host header or target.
// Node answers these with a bare status line; here they are Matrix errors like every other answer
// (errcode, error, JSON content type, CORS headers), so a client can tell what happened.
// https://spec.matrix.org/latest/client-server-api/#standard-error-response
import { STATUS_CODES } from "node:http";
import type { Duplex } from "node:stream";
import type { Logger } from "pino";
import { CORS_HEADERS } from "./app.ts";

interface ClientErrorAnswer {
  status: 400 | 408 | 413 | 431;
  errcode: string;
  error: string;
}

/** What to answer for one of Node's parser or timeout error codes (the same statuses Node uses). */
export function answerForClientError(code: string | undefined): ClientErrorAnswer {
  switch (code) {
    case "HPE_HEADER_OVERFLOW":
      return { status: 431, errcode: "M_TOO_LARGE", error: "Request headers are too large" };
    case "HPE_CHUNK_EXTENSIONS_OVERFLOW":
      return { status: 413, errcode: "M_TOO_LARGE", error: "Chunk extensions are too large" };
    case "ERR_HTTP_REQUEST_TIMEOUT":
      return { status: 408, errcode: "M_UNKNOWN", error: "The request did not arrive in time" };
    default:
      return { status: 400, errcode: "M_UNKNOWN", error: "Malformed HTTP request" };
  }
}

/**
 * The server's `clientError` listener. Node calls it instead of writing its own bare answer; the
 * connection cannot be trusted for another request, so the answer closes it.
 */
export function answerClientErrors(logger: Logger) {
  return (err: NodeJS.ErrnoException, socket: Duplex) => {
    logger.debug({ code: err.code, reason: err.message }, "refused a malformed or late request");
    const inProgress = (socket as { _httpMessage?: { headersSent?: boolean } })._httpMessage?.headersSent === true;
    if (err.code === "ECONNRESET" || !socket.writable || inProgress) {
      // Nobody to answer, or an answer already under way that another status line would corrupt.
      socket.destroy();
      return;
    }
    const answer = answerForClientError(err.code);
    const body = JSON.stringify({ errcode: answer.errcode, error: answer.error });
    const headers = {
      "Content-Type": "application/json",
      "Content-Length": String(Buffer.byteLength(body)),
      Connection: "close",
      ...CORS_HEADERS,
    };
    const head = Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`).join("");
    socket.end(`HTTP/1.1 ${answer.status} ${STATUS_CODES[answer.status]}\r\n${head}\r\n${body}`, () => socket.destroy());
  };
}

/** The adapter's errorHandler: a request Node parsed but the adapter cannot make a URL of (bad Host, backslash). */
export function answerRequestError(err: unknown): Response {
  const reason = err instanceof Error ? err.message : "unreadable request";
  return new Response(JSON.stringify({ errcode: "M_UNKNOWN", error: `Malformed request: ${reason}` }), {
    status: 400,
    headers: { "Content-Type": "application/json", Connection: "close", ...CORS_HEADERS },
  });
}
