// The /sync long-poll loop: one request at a time, the `since` token kept in memory, each response
// handed to the client before the next request goes out (so events are processed in order).
//
// Failures: a connection error, a timeout or a 5xx is retried after an exponential backoff with
// full jitter (capped), so a restarting server is not hammered by every client at the same moment;
// a 429 waits `retry_after_ms` (MatrixHttp already waits out short ones); M_UNKNOWN_TOKEN (the
// token was logged out or the device deleted) and any other 4xx end the loop: repeating the same
// request cannot succeed.
// https://spec.matrix.org/v1.16/client-server-api/#syncing
import { MatrixApiError, MatrixConnectionError, type MatrixHttp, encodePath, sleep } from "./http.ts";

export type SyncState = "PREPARED" | "SYNCING" | "ERROR" | "STOPPED";

export interface SyncStateData {
  /** The failure behind an ERROR. */
  error?: Error;
  /** For ERROR: true when the loop has ended (M_UNKNOWN_TOKEN, a 4xx), false when it will retry. */
  fatal?: boolean;
  /** For a retried ERROR: how long the loop waits before the next attempt. */
  retryInMs?: number;
}

export interface BackoffOptions {
  /** The first wait after a failure (default 1 s). */
  initialMs?: number;
  /** The longest wait (default 60 s). */
  maxMs?: number;
}

export interface SyncLoopOptions {
  http: MatrixHttp;
  userId: string;
  /** How long the server may hold a long-poll (default 30 s). */
  pollTimeoutMs?: number;
  /** Events per room in the timeline sections (default 20, as Element). */
  timelineLimit?: number;
  backoff?: BackoffOptions;
  /** Processes one response; the loop waits for it. A throw here is retried when isTransient, else ends the loop. */
  onResponse(response: any, initial: boolean): Promise<void>;
  onState(state: SyncState, data?: SyncStateData): void;
}

/**
 * The wait before retry number `attempt` (0-based): uniformly random in [0, min(max, initial·2^attempt)]
 * ("full jitter"), but at least a tenth of the initial wait so a flapping server is not busy-looped.
 */
export function backoffDelay(attempt: number, options: BackoffOptions = {}, random: () => number = Math.random): number {
  const initial = options.initialMs ?? 1_000;
  const max = options.maxMs ?? 60_000;
  const ceiling = Math.min(max, initial * 2 ** Math.min(attempt, 30));
  return Math.max(initial / 10, Math.round(random() * ceiling));
}

/**
 * The filter uploaded at start: members lazy-loaded (Element's setting: only the members of the
 * timeline's senders and the heroes come with the state, not thousands of members per room).
 */
export function syncFilter(timelineLimit: number): Record<string, unknown> {
  return {
    room: {
      state: { lazy_load_members: true },
      timeline: { limit: timelineLimit, lazy_load_members: true },
    },
  };
}

/** Whether a failed sync is worth repeating (the server may come back), rather than a refusal. */
export function isTransient(error: unknown): boolean {
  if (error instanceof MatrixConnectionError) return true;
  if (error instanceof MatrixApiError) return error.status >= 500 || error.status === 429 || error.status === 408;
  return false;
}

export class SyncLoop {
  /** The `next_batch` of the last processed response. */
  since: string | undefined;
  private filterId: string | undefined;
  private controller: AbortController | undefined;
  private running: Promise<void> | undefined;
  private readonly opts: SyncLoopOptions;

  constructor(opts: SyncLoopOptions) {
    this.opts = opts;
  }

  get isRunning(): boolean {
    return this.running !== undefined;
  }

  /** Starts the loop; resolves once the first response is processed, rejects if the loop ends before. */
  start(): Promise<void> {
    if (this.running) throw new Error("the sync loop is already running");
    const controller = new AbortController();
    this.controller = controller;
    return new Promise<void>((resolve, reject) => {
      this.running = this.run(controller.signal, resolve, reject).finally(() => {
        this.running = undefined;
      });
    });
  }

  /** Aborts the long-poll in flight and waits for the loop to end. */
  async stop(): Promise<void> {
    this.controller?.abort();
    await this.running;
  }

  private async run(signal: AbortSignal, firstDone: () => void, firstFailed: (error: Error) => void): Promise<void> {
    const { http, onResponse, onState } = this.opts;
    const pollTimeout = this.opts.pollTimeoutMs ?? 30_000;
    let first = true;
    let failures = 0;
    let ended: Error | undefined;
    while (!signal.aborted) {
      try {
        this.filterId ??= await this.uploadFilter(signal);
        // The first sync does not wait for news: start() resolves as soon as the state is in.
        const timeout = first ? 0 : pollTimeout;
        const response = await http.request("GET", "/_matrix/client/v3/sync", {
          query: { filter: this.filterId, since: this.since, timeout },
          signal,
          // The server holds the request up to `timeout`; the rest is for a slow answer.
          timeoutMs: timeout + 30_000,
        });
        if (signal.aborted) break;
        // A processing failure falls into the catch below like a failed request: a transient one
        // (crypto's own requests hit a dropped connection) is retried with the same `since`, so
        // nothing is lost (to-device messages stay on the server until a later since acknowledges
        // them); any other is a bug that the same response would hit again, and ends the loop.
        await onResponse(response, this.since === undefined);
        this.since = response.next_batch;
        failures = 0;
        onState(first ? "PREPARED" : "SYNCING");
        if (first) {
          first = false;
          firstDone();
        }
      } catch (err) {
        if (signal.aborted) break;
        const error = err instanceof Error ? err : new Error(String(err));
        if (!isTransient(error)) {
          ended = error;
          onState("ERROR", { error, fatal: true });
          break;
        }
        let wait = backoffDelay(failures++, this.opts.backoff);
        if (error instanceof MatrixApiError && error.retryAfterMs !== undefined) wait = Math.max(wait, error.retryAfterMs);
        onState("ERROR", { error, fatal: false, retryInMs: wait });
        try {
          await sleep(wait, signal);
        } catch {
          break;
        }
      }
    }
    if (first) firstFailed(ended ?? new Error("the sync loop was stopped before its first sync"));
    onState("STOPPED");
  }

  /** The filter's ID; undefined sends no filter when the server refuses filters (then the defaults apply). */
  private async uploadFilter(signal: AbortSignal): Promise<string> {
    const { http, userId } = this.opts;
    const filter = syncFilter(this.opts.timelineLimit ?? 20);
    try {
      const answer = await http.request<{ filter_id: string }>("POST", `/_matrix/client/v3/user/${encodePath(userId)}/filter`, { body: filter, signal });
      return answer.filter_id;
    } catch (err) {
      // A server without filter storage still takes the filter inline (a JSON object as `filter`).
      if (err instanceof MatrixApiError && (err.status === 404 || err.status === 400) && err.errcode !== "M_UNKNOWN_TOKEN") return JSON.stringify(filter);
      throw err;
    }
  }
}
