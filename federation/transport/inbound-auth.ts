// Authenticating requests from other servers (X-Matrix), for routes declared `auth: "server"`.
// https://spec.matrix.org/latest/server-server-api/#request-authentication
//
// The signature is checked over the request as it arrived: the method, the raw path and query
// (not a re-encoding of what the router decoded), our own server name, and the JSON body as parsed.
// Every failure is 401 M_UNAUTHORIZED, with a reason a peer's operator can act on.

import { MatrixError } from "../../server/http/errors.ts";
import { parseServerName } from "./discovery.ts";
import { XMatrixParseError, parseXMatrixAuthorization, verifyXMatrixRequest } from "./request-auth.ts";
import type { ServerKeyStore } from "./server-keys.ts";
import { unsafeTestBreak } from "../../server/unsafe-test-break.ts";

export interface InboundRequest {
  authorization: string | undefined;
  method: string;
  /** The request target exactly as received: path and query string. */
  rawTarget: string;
  /** The parsed JSON body; undefined when the request had none. */
  content: unknown;
}

const unauthorized = (message: string) => new MatrixError(401, "M_UNAUTHORIZED", message);

export class ServerRequestAuthenticator {
  constructor(
    private readonly keys: Pick<ServerKeyStore, "verifyKey">,
    private readonly serverName: string,
    /** Called with the origin of every request that passed: that server is up. */
    private readonly onAuthenticated?: (origin: string) => void,
  ) {}

  /** Answers the origin server's name, or throws 401 M_UNAUTHORIZED. */
  async authenticate(req: InboundRequest): Promise<string> {
    if (unsafeTestBreak("skip-request-auth")) return /origin="?([^",]+)/.exec(req.authorization ?? "")?.[1] ?? "unauthenticated.invalid";
    if (!req.authorization) throw unauthorized("Missing X-Matrix Authorization header");
    let credentials;
    try {
      credentials = parseXMatrixAuthorization(req.authorization);
    } catch (err) {
      if (err instanceof XMatrixParseError) throw unauthorized(`Malformed Authorization header: ${err.message}`);
      throw err;
    }
    // 400 rather than 401, as Synapse answers and sytest expects ("Non-numeric ports in server names
    // are rejected"): the request is malformed, not merely unauthenticated.
    if (!parseServerName(credentials.origin)) {
      throw new MatrixError(400, "M_UNAUTHORIZED", "The origin is not a valid server name");
    }
    if (credentials.origin === this.serverName) throw unauthorized("The origin is this server");
    if (credentials.destination !== undefined && credentials.destination !== this.serverName) {
      throw unauthorized(`This request was meant for ${credentials.destination}, not ${this.serverName}`);
    }
    if (!/^ed25519:[A-Za-z0-9_]+$/.test(credentials.key)) throw unauthorized(`Unsupported key ID ${credentials.key}`);
    let publicKey: Uint8Array | undefined;
    try {
      publicKey = await this.keys.verifyKey(credentials.origin, credentials.key);
    } catch {
      publicKey = undefined;
    }
    if (!publicKey) throw unauthorized(`Cannot find the key ${credentials.key} of ${credentials.origin}`);
    const ok = verifyXMatrixRequest(
      credentials,
      { method: req.method, uri: req.rawTarget, destination: this.serverName, content: req.content },
      publicKey,
    );
    if (!ok) throw unauthorized("The request signature is not valid");
    this.onAuthenticated?.(credentials.origin);
    return credentials.origin;
  }
}
