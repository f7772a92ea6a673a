// Parley's own Olm (olm.ts) and Megolm (megolm.ts) as one OlmImplementation: what the E2EE machine
// runs on unless it is given another (the tests give it libolm to check the two against each other).
import * as megolm from "./megolm.ts";
import { olm } from "./olm.ts";
import type { OlmImplementation } from "./types.ts";

export const parleyOlm: OlmImplementation = {
  newAccount: olm.newAccount,
  loadAccount: olm.loadAccount,
  loadSession: olm.loadSession,
  newOutboundGroupSession: megolm.newOutboundGroupSession,
  loadOutboundGroupSession: megolm.loadOutboundGroupSession,
  inboundGroupSessionFromKey: megolm.inboundGroupSessionFromKey,
  importInboundGroupSession: megolm.importInboundGroupSession,
  loadInboundGroupSession: megolm.loadInboundGroupSession,
};
