// The HTTP side of pushing: `POST /_matrix/push/v1/notify` to a pusher's gateway.
// https://spec.matrix.org/latest/push-gateway-api/#post_matrixpushv1notify
//
// A pusher's URL is the user's to choose, so where it may point is the operator's: never a
// loopback, private or other blocked address (judged on the resolved address, so a name cannot
// smuggle one in), unless the gateway's host is named in `push_gateways_insecure`. No redirects,
// short timeouts, small answers.
import { isIP } from "node:net";
import { Agent } from "undici";
import { describeRequestFailure, policyLookup } from "../http/outbound.ts";

export interface GatewayClientOptions {
  /** `push_gateways_insecure`: host[:port] names reached without certificate checks or address policy; "*" for all. */
  insecure: readonly string[];
  /** Which resolved addresses may be connected to (the federation address policy, wired by the homeserver). */
  allowAddress(address: string): boolean;
  requestTimeoutMs?: number;
}

/** What became of one notify request. */
export type NotifyOutcome =
  | { kind: "sent"; rejected: string[] }
  /** The gateway is down or answered 5xx / 429: try again later. */
  | { kind: "retry"; why: string }
  /** The gateway refused this notification (another 4xx), or may not be reached: trying again would not help. */
  | { kind: "refused"; why: string };

const MAX_ANSWER_BYTES = 64 * 1024;

export class PushGatewayClient {
  private readonly checked: Agent;
  private readonly trusted: Agent;
  private readonly requestTimeoutMs: number;

  constructor(private readonly opts: GatewayClientOptions) {
    this.requestTimeoutMs = opts.requestTimeoutMs ?? 15_000;
    const common = {
      connectTimeout: 10_000,
      headersTimeout: this.requestTimeoutMs,
      bodyTimeout: this.requestTimeoutMs,
      maxResponseSize: MAX_ANSWER_BYTES,
      keepAliveTimeout: 10_000,
      connections: 8,
    };
    this.checked = new Agent({ ...common, connect: { lookup: policyLookup(this.opts.allowAddress), rejectUnauthorized: true } });
    // Gateways of a closed test network get a connection per request: sytest's mock gateway reads a
    // kept-alive connection's next request into the previous one's body.
    this.trusted = new Agent({ ...common, pipelining: 0, connect: { rejectUnauthorized: false } });
  }

  async close(): Promise<void> {
    await Promise.all([this.checked.destroy(), this.trusted.destroy()]).catch(() => {});
  }

  async notify(rawUrl: string, notification: Record<string, unknown>): Promise<NotifyOutcome> {
    let url: URL;
    try {
      url = new URL(rawUrl);
    } catch {
      return { kind: "refused", why: "not a URL" };
    }
    const insecure = this.opts.insecure.includes("*") || this.opts.insecure.includes(url.host) || this.opts.insecure.includes(url.hostname);
    const host = url.hostname.replace(/^\[|\]$/g, "");
    // net.connect skips the lookup for IP literals, so they are judged here.
    if (!insecure && isIP(host) && !this.opts.allowAddress(host)) return { kind: "refused", why: `${host} is an address this server may not reach` };
    let status: number;
    let text: string;
    try {
      const response = await (insecure ? this.trusted : this.checked).request({
        origin: url.origin,
        method: "POST",
        path: url.pathname + url.search,
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ notification }),
        signal: AbortSignal.timeout(this.requestTimeoutMs),
      });
      status = response.statusCode;
      text = await response.body.text();
    } catch (err) {
      const code = (err as { code?: string }).code ?? (err as { cause?: { code?: string } }).cause?.code;
      if (code === "EPARLEYBLOCKED") return { kind: "refused", why: "the gateway resolves only to addresses this server may not reach" };
      return { kind: "retry", why: describeRequestFailure(err) };
    }
    if (status >= 500 || status === 429 || status === 408) return { kind: "retry", why: `HTTP ${status}` };
    if (status < 200 || status >= 300) return { kind: "refused", why: `HTTP ${status}` };
    let rejected: string[] = [];
    try {
      const body = text.trim() === "" ? {} : (JSON.parse(text) as unknown);
      const r = typeof body === "object" && body !== null ? (body as { rejected?: unknown }).rejected : undefined;
      if (Array.isArray(r)) rejected = r.filter((k): k is string => typeof k === "string");
    } catch {
      // A 2xx with a body that is not JSON: delivered, nothing rejected.
    }
    return { kind: "sent", rejected };
  }

}

