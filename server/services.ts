// The services of one homeserver process, built once at startup and handed to every route.
// Each service owns its tables' queries (STYLE.md, "Components own their storage"); routes call
// services, never tables.
import type { Logger } from "pino";
import type { Database, OpenedDatabase } from "../schema/db.ts";
import type { SigningKey } from "../federation/protocol/signing.ts";
import type { Config } from "./config.ts";
import type { Requester, RequestInfo } from "./http/route.ts";
import { MatrixError } from "./http/errors.ts";

/** Turns an access token into a requester, or throws 401 M_UNKNOWN_TOKEN. */
export interface Authenticator {
  authenticate(accessToken: string, request: RequestInfo): Promise<Requester>;
}

export interface Services {
  config: Config;
  database: OpenedDatabase;
  db: Database;
  logger: Logger;
  signingKey: SigningKey;
  /** The clock; tests may replace it. */
  now(): number;
  auth: Authenticator;
}

/** Until accounts exist, no token is valid. */
export const noAccounts: Authenticator = {
  async authenticate() {
    throw new MatrixError(401, "M_UNKNOWN_TOKEN", "Unknown access token");
  },
};
