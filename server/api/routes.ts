// Every HTTP endpoint of the homeserver, in one list.
import { federationVersion } from "../../federation/transport/version.ts";
import { serverKeys, serverKeysById } from "../../federation/transport/key-server.ts";
import type { AnyRoute } from "../http/route.ts";
import { versions } from "./client/versions.ts";
import { health } from "./health.ts";
import { wellKnownClient, wellKnownServer } from "./wellknown.ts";

export const routes: AnyRoute[] = [
  versions,
  wellKnownClient,
  wellKnownServer,
  health,
  federationVersion,
  serverKeys,
  serverKeysById,
];
