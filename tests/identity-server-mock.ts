// A small identity server for tests and benchmarks (Identity Service API v2: hash_details, hashed
// lookup, store-invite, pubkey/isvalid; and onbind calls to a homeserver when an address is bound),
// HTTPS on loopback with a self-signed certificate, signing with Ed25519 as Sydent does.
// https://spec.matrix.org/latest/identity-service-api/
import { createHash } from "node:crypto";
import { readFile } from "node:fs/promises";
import { type Server, createServer } from "node:https";
import type { AddressInfo } from "node:net";
import { encodeUnpaddedBase64Url } from "../federation/protocol/base64.ts";
import { signJson } from "../federation/protocol/signing.ts";
import { ed25519Key } from "./e2ee-helpers.ts";
import { request } from "./harness.ts";
import { selfSignedCertificate } from "./self-signed.ts";

export type Json = Record<string, any>;
export const ACCESS_TOKEN = "id-token-swordfish";
export const PEPPER = "matrixrocks";

/** An identity server as the spec describes it (v2 lookup with sha256, store-invite, isvalid). */
export class MockIdentityServer {
  name = "";
  key = ed25519Key("0");
  ephemeral = ed25519Key("ephemeral");
  /** Keys answered as valid by isvalid. */
  valid = new Set<string>();
  bindings = new Map<string, string>(); // sha256 hash → mxid
  invites: Json[] = [];
  /** Validated 3pid sessions (`requestToken` + `submitToken` done), by sid. */
  sessions = new Map<string, { medium: string; address: string; clientSecret: string }>();
  /** What `/3pid/unbind` should answer instead of unbinding (a status), if set. */
  unbindStatus: number | undefined;
  requests: Array<{ method: string; path: string; auth?: string; body?: Json }> = [];
  private next = 0;
  constructor(private readonly server: Server) {
    this.revalidate();
  }

  revalidate() {
    this.valid = new Set([this.key.publicKeyBase64, this.ephemeral.publicKeyBase64]);
  }

  rotateKeys() {
    this.key = ed25519Key("0");
    this.ephemeral = ed25519Key("ephemeral");
    this.revalidate();
  }

  static async start(dir: string): Promise<MockIdentityServer> {
    const cert = await selfSignedCertificate(dir);
    const server = createServer({ cert: await readFile(cert.certFile), key: await readFile(cert.keyFile) });
    const mock = new MockIdentityServer(server);
    server.on("request", (req, res) => {
      let data = "";
      req.on("data", (c) => (data += c));
      req.on("end", () => {
        const url = new URL(req.url!, "https://x");
        const body = data ? JSON.parse(data) : undefined;
        mock.requests.push({ method: req.method!, path: url.pathname, auth: req.headers.authorization, body });
        const [status, answer] = mock.handle(req.method!, url, req.headers.authorization, body);
        res.writeHead(status, { "content-type": "application/json" }).end(JSON.stringify(answer));
      });
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    mock.name = `127.0.0.1:${(server.address() as AddressInfo).port}`;
    return mock;
  }

  close() {
    this.server.closeAllConnections();
    return new Promise((resolve) => this.server.close(resolve));
  }

  private handle(method: string, url: URL, auth: string | undefined, body: Json | undefined): [number, Json] {
    const authorised = auth === `Bearer ${ACCESS_TOKEN}`;
    switch (`${method} ${url.pathname}`) {
      case "GET /_matrix/identity/v2/hash_details":
        if (!authorised) return [401, { errcode: "M_UNAUTHORIZED", error: "no token" }];
        return [200, { algorithms: ["none", "sha256"], lookup_pepper: PEPPER }];
      case "POST /_matrix/identity/v2/lookup": {
        if (!authorised) return [401, { errcode: "M_UNAUTHORIZED", error: "no token" }];
        if (body?.algorithm !== "sha256" || body.pepper !== PEPPER) return [400, { errcode: "M_INVALID_PEPPER", error: "wrong" }];
        const mappings: Json = {};
        for (const hash of body.addresses) if (this.bindings.has(hash)) mappings[hash] = this.bindings.get(hash);
        return [200, { mappings }];
      }
      case "POST /_matrix/identity/v2/store-invite": {
        if (!authorised) return [401, { errcode: "M_UNAUTHORIZED", error: "no token" }];
        const token = `tok${this.next++}`;
        this.invites.push({ ...body, token });
        const key_validity_url = `https://${this.name}/_matrix/identity/v2/pubkey/isvalid`;
        return [
          200,
          {
            token,
            display_name: "B***@example.org",
            public_keys: [
              { public_key: this.key.publicKeyBase64, key_validity_url },
              { public_key: this.ephemeral.publicKeyBase64, key_validity_url },
            ],
          },
        ];
      }
      // https://spec.matrix.org/latest/identity-service-api/#post_matrixidentityv23pidbind
      case "POST /_matrix/identity/v2/3pid/bind": {
        if (!authorised) return [401, { errcode: "M_UNAUTHORIZED", error: "no token" }];
        const session = this.sessions.get(body?.sid);
        if (!session || session.clientSecret !== body?.client_secret) return [404, { errcode: "M_NO_VALID_SESSION", error: "no such session" }];
        this.bindings.set(this.hash(session.address, session.medium), body.mxid);
        const answer = { medium: session.medium, address: session.address, mxid: body.mxid, not_before: 0, not_after: 4582425849161, ts: 0 };
        return [200, signJson(answer, this.name, this.key)];
      }
      // https://spec.matrix.org/latest/identity-service-api/#post_matrixidentityv23pidunbind
      // (a homeserver signs with X-Matrix; the test checks the signature from `requests`).
      case "POST /_matrix/identity/v2/3pid/unbind": {
        if (!auth?.startsWith("X-Matrix ")) return [401, { errcode: "M_UNAUTHORIZED", error: "not signed" }];
        if (this.unbindStatus !== undefined) return [this.unbindStatus, { errcode: "M_UNKNOWN", error: "refused" }];
        const hash = this.hash(body?.threepid?.address, body?.threepid?.medium);
        if (this.bindings.get(hash) !== body?.mxid) return [404, { errcode: "M_NOT_FOUND", error: "not bound" }];
        this.bindings.delete(hash);
        return [200, {}];
      }
      case "GET /_matrix/identity/v2/pubkey/isvalid":
        return [200, { valid: this.valid.has(url.searchParams.get("public_key") ?? "") }];
      default:
        return [404, { errcode: "M_UNRECOGNIZED", error: "unknown" }];
    }
  }

  private hash(address: string, medium: string): string {
    return encodeUnpaddedBase64Url(createHash("sha256").update(`${address} ${medium} ${PEPPER}`).digest());
  }

  /** A validated session for `address` (as if the user had clicked the e-mail's link); its sid. */
  validate(medium: string, address: string, clientSecret: string): string {
    const sid = `sid${this.next++}`;
    this.sessions.set(sid, { medium, address, clientSecret });
    return sid;
  }

  /** The user `address` is bound to, if any (what a hashed lookup would answer). */
  boundTo(address: string, medium = "email"): string | undefined {
    return this.bindings.get(this.hash(address, medium));
  }

  /** Binds an address to a user; `onbind` of their homeserver hears of the invites pending for it. */
  async bind(address: string, mxid: string, homeserver?: string, beforeNotify?: () => void) {
    const hash = encodeUnpaddedBase64Url(createHash("sha256").update(`${address} email ${PEPPER}`).digest());
    this.bindings.set(hash, mxid);
    if (!homeserver) return undefined;
    const invites = this.invites
      .filter((i) => i.address === address)
      .map((i) => ({
        medium: "email",
        address,
        mxid,
        room_id: i.room_id,
        sender: i.sender,
        signed: signJson({ mxid, token: i.token }, this.name, this.key),
      }));
    beforeNotify?.();
    return request(homeserver, "POST", "/_matrix/federation/v1/3pid/onbind", { body: { medium: "email", address, mxid, invites } });
  }
}
