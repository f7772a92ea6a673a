// Errors are Matrix errors: one type carries the HTTP status, the errcode and a message; services
// throw it and the HTTP layer renders it as `{errcode, error, ...extra}` with a JSON content type.
// https://spec.matrix.org/latest/client-server-api/#standard-error-response
import type { ContentfulStatusCode } from "hono/utils/http-status";

export class MatrixError extends Error {
  override name = "MatrixError";
  constructor(
    readonly status: ContentfulStatusCode,
    readonly errcode: string,
    message: string,
    /** Extra top-level fields of the error body, such as `retry_after_ms` or `soft_logout`. */
    readonly extra: Record<string, unknown> = {},
    /** Extra response headers, such as `Retry-After`. */
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }

  toJSON(): Record<string, unknown> {
    return { errcode: this.errcode, error: this.message, ...this.extra };
  }
}

export const forbidden = (message: string) => new MatrixError(403, "M_FORBIDDEN", message);
export const notFound = (message: string) => new MatrixError(404, "M_NOT_FOUND", message);
export const badJson = (message: string) => new MatrixError(400, "M_BAD_JSON", message);
export const invalidParam = (message: string) => new MatrixError(400, "M_INVALID_PARAM", message);
export const missingParam = (message: string) => new MatrixError(400, "M_MISSING_PARAM", message);
export const unrecognized = (status: 404 | 405, message: string) =>
  new MatrixError(status, "M_UNRECOGNIZED", message);
export const limitExceeded = (retryAfterMs: number) =>
  new MatrixError(
    429,
    "M_LIMIT_EXCEEDED",
    "Too many requests",
    { retry_after_ms: retryAfterMs },
    { "Retry-After": String(Math.max(1, Math.ceil(retryAfterMs / 1000))) },
  );
