// What Parley logs, and what it never logs. Log lines go to operators, log collectors and bug
// reports: a secret (a password, a token, a key, a message body, a value sent to the database)
// must never reach them, however deep in the logged object it sits. pino's own `redact` takes fixed
// paths (`*.password` covers one level only), so every line's fields are scrubbed here by key name,
// at any depth, and errors are serialized without the request content that drivers attach to them
// (drizzle puts a failed query's parameters in its message; postgres.js keeps `parameters` and the
// query text, which Parley's pipelined statements carry with their values inlined).
import pino, { type Logger, type LoggerOptions } from "pino";

export const REDACTED = "<redacted>";

/**
 * Field names whose values are secrets or request content. Matched case-insensitively against the
 * whole key: `access_token`, `refresh_token`, `as_token`, `registration_shared_secret`,
 * `private_key`, `password`, `new_password`, `authorization`...
 */
const SECRET_KEY = /^(.*password.*|passphrase|.*secret.*|.*token|.*_tokens?|authorization|cookie|set-cookie|.*private_?key.*|seed|mac|signatures?)$/i;
/** Fields that carry what a client or the database was sent, whatever it holds. */
const CONTENT_KEY = /^(body|content|parameters|params|args|query|detail)$/i;

const MAX_DEPTH = 8;

/** A copy of `value` with every secret or content field replaced by REDACTED, at any depth. */
export function scrubSecrets(value: unknown, depth = 0): unknown {
  if (value === null || typeof value !== "object") return value;
  // Errors are serialized (and scrubbed) by serializeError; pino applies it after this.
  if (value instanceof Error) return value;
  if (depth >= MAX_DEPTH) return "[nested too deep]";
  if (Array.isArray(value)) return value.map((v) => scrubSecrets(v, depth + 1));
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(value as Record<string, unknown>)) {
    out[k] = v !== undefined && (SECRET_KEY.test(k) || CONTENT_KEY.test(k)) ? REDACTED : scrubSecrets(v, depth + 1);
  }
  return out;
}

/**
 * An error message without the values a driver put in it: drizzle's "Failed query: <sql>\nparams:
 * <values>" keeps its first line, and SQL text with literals in it (statements Parley pipelines
 * with values inlined) is cut at the first literal.
 */
export function scrubErrorMessage(message: string): string {
  const firstLine = message.split("\n", 1)[0] ?? "";
  if (!/^Failed query:/.test(firstLine)) return message.length > 2000 ? `${message.slice(0, 2000)}…` : message;
  const quote = firstLine.search(/'/);
  const sqlText = quote < 0 ? firstLine : `${firstLine.slice(0, quote)}… (values not logged)`;
  return sqlText.length > 1000 ? `${sqlText.slice(0, 1000)}…` : sqlText;
}

/** Fields of driver errors that say what went wrong without saying what was sent. */
const SAFE_ERROR_FIELDS = ["code", "errcode", "status", "severity", "routine", "constraint_name", "table_name", "column_name", "schema_name"];

/** pino's `err` serializer: type, scrubbed message and stack, safe fields, and the cause likewise. */
export function serializeError(err: unknown, depth = 0): unknown {
  if (!(err instanceof Error)) return scrubSecrets(err);
  const sqlState = (err as { code?: unknown }).code;
  // PostgreSQL quotes the offending value in its messages (invalid input syntax for type bigint:
  // "<value>"); the SQLSTATE, routine and constraint say what went wrong without it.
  const message = typeof sqlState === "string" && /^[0-9A-Z]{5}$/.test(sqlState)
    ? scrubErrorMessage(err.message).replace(/"[^"]*"|'[^']*'|\([^)]*\)/g, "…")
    : scrubErrorMessage(err.message);
  const frames = (err.stack ?? "").split("\n").filter((line) => /^\s+at /.test(line));
  const out: Record<string, unknown> = {
    type: err.constructor?.name ?? err.name,
    message,
    stack: [`${err.name}: ${message}`, ...frames].join("\n"),
  };
  const fields = err as unknown as Record<string, unknown>;
  for (const f of SAFE_ERROR_FIELDS) {
    if (typeof fields[f] === "string" || typeof fields[f] === "number") out[f] = fields[f];
  }
  if (err.cause !== undefined && depth < 4) out.cause = serializeError(err.cause, depth + 1);
  return out;
}

/** The pino options every Parley logger uses: level, ISO times, and the scrubbing above. */
export function loggerOptions(level: string): LoggerOptions {
  return {
    level,
    base: { name: "parley" },
    timestamp: pino.stdTimeFunctions.isoTime,
    serializers: { err: serializeError, error: serializeError },
    formatters: { log: (fields) => scrubSecrets(fields) as Record<string, unknown> },
  };
}

/** A logger writing JSON lines to `destination` (standard output by default). */
export function createParleyLogger(level: string, destination?: pino.DestinationStream): Logger {
  return destination ? pino(loggerOptions(level), destination) : pino(loggerOptions(level));
}
