// Outbound requests to identity servers for third-party invites (Identity Service API v2): lookups,
// store-invite, and key validity URLs. The same outbound rules as federation: HTTPS with
// certificate checks, never a loopback, private or other blocked address (checked on the resolved
// address, federation/transport/address-policy.ts), small answers, short timeouts, no redirects.
// `identity_servers_insecure` names the exceptions (a test network's identity server on loopback).
// https://spec.matrix.org/latest/identity-service-api/
import { createHash } from "node:crypto";
import { isIP } from "node:net";
import { Agent } from "undici";
import { encodeUnpaddedBase64Url } from "../protocol/base64.ts";
import { isValidServerName } from "../protocol/identifiers.ts";
import { MAX_JSON_DEPTH, nestingExceeds } from "../protocol/json-nesting.ts";
import { MatrixError } from "../../server/http/errors.ts";
import { describeRequestFailure, policyLookup } from "../../server/http/outbound.ts";
import type { IdentityServers, StoredInvite } from "../../server/rooms/third-party-invites.ts";
import type { SigningKey } from "../protocol/signing.ts";
import type { BoundThreepid, IdentityServerBindings } from "../../server/accounts/threepid-bindings.ts";
import { isAllowedFederationAddress } from "./address-policy.ts";
import { xMatrixAuthorization } from "./request-auth.ts";

type JsonObject = Record<string, unknown>;

export interface IdentityServerClientOptions {
  /** `identity_servers_insecure`: host[:port] names reached without certificate checks or address policy; "*" for all. */
  insecure: readonly string[];
  connectTimeoutMs?: number;
  requestTimeoutMs?: number;
  maxResponseBytes?: number;
  /** Which resolved addresses may be connected to; defaults to the federation address policy. */
  allowAddress?(address: string): boolean;
  /** Our server name and key: `/3pid/unbind` is signed with X-Matrix as a homeserver. */
  signer?: { serverName: string; signingKey: SigningKey };
}

const isObject = (v: unknown): v is JsonObject => typeof v === "object" && v !== null && !Array.isArray(v);

const unreachable = (what: string, why: string) => new MatrixError(502, "M_UNKNOWN", `The identity server could not be reached for ${what}: ${why}`);

export class IdentityServerClient implements IdentityServers, IdentityServerBindings {
  private readonly checked: Agent;
  private readonly trusted: Agent;
  private readonly allowAddress: (address: string) => boolean;
  private readonly requestTimeoutMs: number;
  private readonly maxResponseBytes: number;

  constructor(private readonly opts: IdentityServerClientOptions) {
    this.allowAddress = opts.allowAddress ?? isAllowedFederationAddress;
    this.requestTimeoutMs = opts.requestTimeoutMs ?? 15_000;
    this.maxResponseBytes = opts.maxResponseBytes ?? 64 * 1024;
    const common = {
      connectTimeout: opts.connectTimeoutMs ?? 10_000,
      headersTimeout: this.requestTimeoutMs,
      bodyTimeout: this.requestTimeoutMs,
      maxResponseSize: this.maxResponseBytes,
      keepAliveTimeout: 10_000,
      connections: 4,
    };
    this.checked = new Agent({ ...common, connect: { lookup: policyLookup(this.allowAddress), rejectUnauthorized: true } });
    this.trusted = new Agent({ ...common, connect: { rejectUnauthorized: false } });
  }

  /** At shutdown: requests still in flight are aborted (they must not hold shutdown up). */
  async close(): Promise<void> {
    await Promise.all([this.checked.destroy(), this.trusted.destroy()]).catch(() => {});
  }

  // https://spec.matrix.org/latest/identity-service-api/#post_matrixidentityv2lookup
  async lookup(idServer: string, accessToken: string, medium: string, address: string): Promise<string | undefined> {
    const base = this.baseUrl(idServer);
    const auth = { authorization: `Bearer ${accessToken}` };
    const details = await this.call("GET", new URL("/_matrix/identity/v2/hash_details", base), auth, undefined, "the lookup");
    if (details.status !== 200 || !isObject(details.body)) throw this.refused("hash_details", details);
    const algorithms = Array.isArray(details.body.algorithms) ? details.body.algorithms : [];
    const pepper = details.body.lookup_pepper;
    let request: JsonObject;
    let key: string;
    // sha256 when offered: the identity server then never sees the address in the clear.
    if (algorithms.includes("sha256") && typeof pepper === "string") {
      key = encodeUnpaddedBase64Url(createHash("sha256").update(`${address} ${medium} ${pepper}`).digest());
      request = { addresses: [key], algorithm: "sha256", pepper };
    } else if (algorithms.includes("none")) {
      key = `${address} ${medium}`;
      request = { addresses: [key], algorithm: "none", pepper: typeof pepper === "string" ? pepper : "" };
    } else {
      throw new MatrixError(502, "M_UNKNOWN", "The identity server offers no lookup algorithm this server knows");
    }
    const answer = await this.call("POST", new URL("/_matrix/identity/v2/lookup", base), auth, request, "the lookup");
    if (answer.status !== 200 || !isObject(answer.body)) throw this.refused("lookup", answer);
    const mappings = isObject(answer.body.mappings) ? answer.body.mappings : {};
    const mxid = Object.hasOwn(mappings, key) ? mappings[key] : undefined;
    return typeof mxid === "string" ? mxid : undefined;
  }

  // https://spec.matrix.org/latest/identity-service-api/#post_matrixidentityv2store-invite
  async storeInvite(idServer: string, accessToken: string, request: JsonObject): Promise<StoredInvite> {
    const answer = await this.call(
      "POST",
      new URL("/_matrix/identity/v2/store-invite", this.baseUrl(idServer)),
      { authorization: `Bearer ${accessToken}` },
      request,
      "storing the invite",
    );
    if (answer.status !== 200 || !isObject(answer.body)) throw this.refused("store-invite", answer);
    const { token, display_name, public_keys, public_key } = answer.body;
    const keys: StoredInvite["public_keys"] = [];
    if (Array.isArray(public_keys)) {
      for (const k of public_keys) {
        if (!isObject(k) || typeof k.public_key !== "string") continue;
        keys.push(typeof k.key_validity_url === "string" ? { public_key: k.public_key, key_validity_url: k.key_validity_url } : { public_key: k.public_key });
      }
    }
    // An older identity server gives one `public_key`, checked at its usual validity URL.
    if (keys.length === 0 && typeof public_key === "string") {
      keys.push({ public_key, key_validity_url: `https://${idServer}/_matrix/identity/v2/pubkey/isvalid` });
    }
    if (typeof token !== "string" || token === "" || typeof display_name !== "string" || keys.length === 0) {
      throw new MatrixError(502, "M_UNKNOWN", "The identity server's answer to store-invite lacks a token, display name or public key");
    }
    return { token, display_name, public_keys: keys };
  }

  // https://spec.matrix.org/latest/identity-service-api/#post_matrixidentityv23pidbind
  async bind(idServer: string, accessToken: string, sid: string, clientSecret: string, mxid: string): Promise<BoundThreepid> {
    const answer = await this.call(
      "POST",
      new URL("/_matrix/identity/v2/3pid/bind", this.baseUrl(idServer)),
      { authorization: `Bearer ${accessToken}` },
      { sid, client_secret: clientSecret, mxid },
      "binding the identifier",
    );
    // "Homeservers should simply proxy any errors received by the identity server to the caller."
    if (answer.status !== 200 || !isObject(answer.body)) {
      const body = isObject(answer.body) ? answer.body : {};
      const status = answer.status;
      if ((status === 400 || status === 403 || status === 404) && typeof body.errcode === "string") {
        throw new MatrixError(status, body.errcode.slice(0, 100), typeof body.error === "string" ? body.error.slice(0, 300) : "The identity server refused the bind");
      }
      throw this.refused("the bind", answer);
    }
    const { medium, address } = answer.body;
    if (typeof medium !== "string" || typeof address !== "string" || answer.body.mxid !== mxid) {
      throw new MatrixError(502, "M_UNKNOWN", "The identity server's answer to the bind lacks the medium, address or our user");
    }
    return { medium, address };
  }

  /**
   * `/v2/3pid/unbind`, signed by this homeserver (X-Matrix, destination the identity server).
   * True when the identity server unbound it; false when it refused (it does not support the
   * request, or knows no such binding).
   * https://spec.matrix.org/latest/identity-service-api/#post_matrixidentityv23pidunbind
   */
  async unbind(idServer: string, mxid: string, medium: string, address: string): Promise<boolean> {
    if (!this.opts.signer) throw new MatrixError(500, "M_UNKNOWN", "This server has no key to sign an unbind with");
    const url = new URL("/_matrix/identity/v2/3pid/unbind", this.baseUrl(idServer));
    const content = { mxid, threepid: { medium, address } };
    const { serverName, signingKey } = this.opts.signer;
    const authorization = xMatrixAuthorization({ method: "POST", uri: url.pathname, origin: serverName, destination: idServer, content }, signingKey);
    const answer = await this.call("POST", url, { authorization }, content, "unbinding the identifier");
    if (answer.status === 200) return true;
    if (answer.status >= 500 && answer.status !== 501) throw this.refused("the unbind", answer);
    return false;
  }

  // https://spec.matrix.org/latest/identity-service-api/#get_matrixidentityv2pubkeyisvalid
  async isKeyValid(keyValidityUrl: string, publicKey: string): Promise<boolean> {
    let url: URL;
    try {
      url = new URL(keyValidityUrl);
    } catch {
      throw new MatrixError(502, "M_UNKNOWN", "The invite's key_validity_url is not a URL");
    }
    if (url.protocol !== "https:" || url.username !== "" || url.password !== "") {
      throw new MatrixError(502, "M_UNKNOWN", "The invite's key_validity_url is not an https URL");
    }
    url.searchParams.set("public_key", publicKey);
    const answer = await this.call("GET", url, {}, undefined, "checking the invite's key");
    if (answer.status !== 200 || !isObject(answer.body)) throw this.refused("the key validity check", answer);
    return answer.body.valid === true;
  }

  /** `https://<id_server>`; id_server is "the hostname+port of the identity server" (invite_3pid.yaml). */
  private baseUrl(idServer: string): URL {
    if (!isValidServerName(idServer)) throw new MatrixError(400, "M_INVALID_PARAM", "id_server is not a host name with an optional port");
    return new URL(`https://${idServer}`);
  }

  private isInsecure(url: URL): boolean {
    return this.opts.insecure.includes("*") || this.opts.insecure.includes(url.host) || this.opts.insecure.includes(url.hostname);
  }

  private refused(what: string, answer: { status: number; body: unknown }): MatrixError {
    const body = isObject(answer.body) ? answer.body : {};
    const why = typeof body.errcode === "string" ? `${body.errcode}${typeof body.error === "string" ? `: ${body.error.slice(0, 200)}` : ""}` : `HTTP ${answer.status}`;
    return new MatrixError(502, "M_UNKNOWN", `The identity server refused ${what} (${why})`);
  }

  private async call(
    method: "GET" | "POST",
    url: URL,
    headers: Record<string, string>,
    body: JsonObject | undefined,
    what: string,
  ): Promise<{ status: number; body: unknown }> {
    const insecure = this.isInsecure(url);
    const host = url.hostname.replace(/^\[|\]$/g, "");
    // net.connect skips the lookup for IP literals, so they are judged here.
    if (!insecure && isIP(host) && !this.allowAddress(host)) throw unreachable(what, `${host} is an address this server may not reach`);
    let response;
    try {
      response = await (insecure ? this.trusted : this.checked).request({
        origin: url.origin,
        method,
        path: url.pathname + url.search,
        headers: { ...headers, ...(body === undefined ? {} : { "content-type": "application/json" }) },
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: AbortSignal.timeout(this.requestTimeoutMs),
      });
    } catch (err) {
      throw unreachable(what, describeRequestFailure(err));
    }
    let text: string;
    try {
      text = await response.body.text();
    } catch (err) {
      throw unreachable(what, describeRequestFailure(err));
    }
    if (text.trim() === "") return { status: response.statusCode, body: undefined };
    if (nestingExceeds(text, MAX_JSON_DEPTH)) throw new MatrixError(502, "M_UNKNOWN", "The identity server answered with JSON nested too deep");
    try {
      return { status: response.statusCode, body: JSON.parse(text) };
    } catch {
      throw new MatrixError(502, "M_UNKNOWN", `The identity server answered ${response.statusCode} with a body that is not JSON`);
    }
  }
}

