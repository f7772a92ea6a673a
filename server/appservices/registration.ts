// Application-service registrations: the YAML files every bridge generates, listed in the
// configuration (`app_service_config_files`), read and checked once at start. A registration names
// the service, where it listens (`url`, or null for no traffic), the two tokens (`as_token` the
// service presents to us, `hs_token` we present to it), its bot user (`sender_localpart`) and the
// namespaces of user IDs, room aliases and room IDs it is interested in, some exclusively.
// https://spec.matrix.org/latest/application-service-api/#registration
//
// Namespace regexes match from the start of the ID (as Synapse does: `@_irc_.*` matches
// `@_irc_alice:example.org`); a registration that needs a whole-ID match anchors its own `$`.
import { readFileSync } from "node:fs";
import { parse as parseYaml } from "yaml";
import { z } from "zod";
import { overlapWitness } from "./regex-overlap.ts";

/** One namespace entry: a regex and whether the service claims it for itself alone. */
export interface Namespace {
  exclusive: boolean;
  regex: RegExp;
  /** The regex as written in the registration (for messages and the admin listing). */
  source: string;
}

export interface AppService {
  id: string;
  /** Where the homeserver pushes transactions and asks queries; null when the service wants no traffic. */
  url: string | null;
  asToken: string;
  hsToken: string;
  senderLocalpart: string;
  /** `@{sender_localpart}:{server_name}`: the service's own bot user. */
  senderUserId: string;
  namespaces: { users: Namespace[]; aliases: Namespace[]; rooms: Namespace[] };
  /** Whether requests from users it masquerades as are rate-limited (the sender never is). Defaults to true. */
  rateLimited: boolean;
  protocols: string[];
  /** Whether it wants ephemeral events (typing, receipts, presence) in its transactions. */
  receiveEphemeral: boolean;
  /** Whether it wants to-device messages for its users in its transactions (MSC2409/MSC4203). */
  receiveToDevice: boolean;
  /** Which file it came from (for messages). */
  file: string;
}

const namespaceList = z
  .array(z.object({ exclusive: z.boolean().default(false), regex: z.string().min(1) }).loose())
  .nullish()
  .transform((v) => v ?? []);

const registrationSchema = z
  .object({
    id: z.union([z.string().min(1), z.number()]).transform(String),
    url: z.string().nullable(),
    as_token: z.string().min(1),
    hs_token: z.string().min(1),
    sender_localpart: z.string().min(1),
    namespaces: z
      .object({ users: namespaceList, aliases: namespaceList, rooms: namespaceList })
      .loose()
      .nullish()
      .transform((v) => v ?? { users: [], aliases: [], rooms: [] }),
    rate_limited: z.boolean().nullish(),
    protocols: z.array(z.string()).nullish(),
    receive_ephemeral: z.boolean().nullish(),
    "de.sorunome.msc2409.push_ephemeral": z.boolean().nullish(),
    "org.matrix.msc2409.push_ephemeral": z.boolean().nullish(),
    "org.matrix.msc4203.receive_to_device": z.boolean().nullish(),
    "org.matrix.msc2409.push_to_device": z.boolean().nullish(),
  })
  .loose();

/** A registration that cannot be used, with which file and what is wrong. */
export class AppServiceConfigError extends Error {
  override name = "AppServiceConfigError";
}

function namespaces(file: string, kind: string, list: Array<{ exclusive: boolean; regex: string }>): Namespace[] {
  return list.map(({ exclusive, regex }) => {
    try {
      return { exclusive, regex: new RegExp(`^(?:${regex})`, "u"), source: regex };
    } catch (err) {
      throw new AppServiceConfigError(`${file}: namespaces.${kind} has an invalid regex ${JSON.stringify(regex)}: ${(err as Error).message}`);
    }
  });
}

/** Parses one registration (already read from `file`) for a server named `serverName`. */
export function parseRegistration(text: string, file: string, serverName: string): AppService {
  let raw: unknown;
  try {
    raw = parseYaml(text);
  } catch (err) {
    throw new AppServiceConfigError(`${file}: not valid YAML: ${(err as Error).message}`);
  }
  const parsed = registrationSchema.safeParse(raw);
  if (!parsed.success) {
    const issues = parsed.error.issues.map((i) => `${i.path.join(".") || "(top)"}: ${i.message}`).join("; ");
    throw new AppServiceConfigError(`${file}: not an application-service registration: ${issues}`);
  }
  const r = parsed.data;
  if (r.url !== null) {
    let url: URL;
    try {
      url = new URL(r.url);
    } catch {
      throw new AppServiceConfigError(`${file}: url ${JSON.stringify(r.url)} is not a URL`);
    }
    if (url.protocol !== "http:" && url.protocol !== "https:") throw new AppServiceConfigError(`${file}: url must be http or https`);
  }
  if (!/^[a-z0-9._=\-/+]+$/.test(r.sender_localpart)) {
    throw new AppServiceConfigError(`${file}: sender_localpart ${JSON.stringify(r.sender_localpart)} is not a valid user localpart`);
  }
  return {
    id: r.id,
    url: r.url === null ? null : r.url.replace(/\/+$/, ""),
    asToken: r.as_token,
    hsToken: r.hs_token,
    senderLocalpart: r.sender_localpart,
    senderUserId: `@${r.sender_localpart}:${serverName}`,
    namespaces: {
      users: namespaces(file, "users", r.namespaces.users),
      aliases: namespaces(file, "aliases", r.namespaces.aliases),
      rooms: namespaces(file, "rooms", r.namespaces.rooms),
    },
    rateLimited: r.rate_limited ?? true,
    protocols: r.protocols ?? [],
    receiveEphemeral: r.receive_ephemeral ?? r["org.matrix.msc2409.push_ephemeral"] ?? r["de.sorunome.msc2409.push_ephemeral"] ?? false,
    receiveToDevice: r["org.matrix.msc4203.receive_to_device"] ?? r["org.matrix.msc2409.push_to_device"] ?? false,
    file,
  };
}

/**
 * Reads every registration file and checks them together: `id` and `as_token` unique (the spec:
 * the homeserver MUST enforce it), no two services' tokens alike, no user namespace of one service
 * claiming another's bot exclusively.
 */
export function loadAppServices(files: readonly string[], serverName: string, read: (file: string) => string = (f) => readFileSync(f, "utf8")): AppService[] {
  const services = files.map((file) => {
    let text: string;
    try {
      text = read(file);
    } catch (err) {
      throw new AppServiceConfigError(`${file}: cannot read the application-service registration: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    }
    return parseRegistration(text, file, serverName);
  });
  const seen = new Map<string, string>();
  const once = (what: string, value: string, file: string) => {
    const key = `${what}\u0000${value}`;
    const other = seen.get(key);
    if (other !== undefined) throw new AppServiceConfigError(`${file}: the same ${what} as ${other}; each application service needs its own`);
    seen.set(key, file);
  };
  for (const s of services) {
    once("id", s.id, s.file);
    once("token", s.asToken, s.file);
    once("token", s.hsToken, s.file);
    once("sender user", s.senderUserId, s.file);
  }
  for (const s of services) {
    for (const other of services) {
      if (other === s) continue;
      if (matches(other.namespaces.users, s.senderUserId, true)) {
        throw new AppServiceConfigError(`${s.file}: its sender ${s.senderUserId} lies in an exclusive user namespace of ${other.file}`);
      }
    }
  }
  // Two services may not claim the same names exclusively: each would be refused the other's users.
  // Shared (non-exclusive) namespaces may overlap anything.
  for (const [i, s] of services.entries()) {
    for (const other of services.slice(i + 1)) {
      for (const kind of ["users", "aliases", "rooms"] as const) {
        for (const a of s.namespaces[kind].filter((n) => n.exclusive)) {
          for (const b of other.namespaces[kind].filter((n) => n.exclusive)) {
            const witness = overlapWitness(a.source, b.source);
            if (witness === null || witness === "unknown") continue;
            throw new AppServiceConfigError(
              `${other.file}: its exclusive ${kind} namespace ${JSON.stringify(b.source)} overlaps ${JSON.stringify(a.source)} of ${s.file} (both claim ${JSON.stringify(witness)}); exclusive namespaces of two services must not overlap`,
            );
          }
        }
      }
    }
  }
  return services;
}

function matches(list: readonly Namespace[], value: string, exclusiveOnly = false): boolean {
  return list.some((n) => (!exclusiveOnly || n.exclusive) && n.regex.test(value));
}

/** The service's own bot, or a user ID in its user namespaces. */
export function isInterestedInUser(service: AppService, userId: string): boolean {
  return userId === service.senderUserId || matches(service.namespaces.users, userId);
}

/** A user ID in one of its exclusive user namespaces (or its bot). */
export function claimsUserExclusively(service: AppService, userId: string): boolean {
  return userId === service.senderUserId || matches(service.namespaces.users, userId, true);
}

export function isInterestedInAlias(service: AppService, alias: string): boolean {
  return matches(service.namespaces.aliases, alias);
}

export function claimsAliasExclusively(service: AppService, alias: string): boolean {
  return matches(service.namespaces.aliases, alias, true);
}

export function isInterestedInRoomId(service: AppService, roomId: string): boolean {
  return matches(service.namespaces.rooms, roomId);
}

/** The registered services, with lookups by token and by claimed IDs. */
export class AppServiceRegistry {
  private readonly byToken = new Map<string, AppService>();

  constructor(readonly services: readonly AppService[]) {
    for (const s of services) this.byToken.set(s.asToken, s);
  }

  /** The service whose `as_token` this is. */
  byAsToken(token: string): AppService | undefined {
    return this.byToken.get(token);
  }

  byId(id: string): AppService | undefined {
    return this.services.find((s) => s.id === id);
  }

  /** The service that claims this user ID exclusively, if any (no one else may register or use it). */
  exclusiveOwnerOfUser(userId: string): AppService | undefined {
    return this.services.find((s) => claimsUserExclusively(s, userId));
  }

  /** The service that claims this alias exclusively, if any (no one else may create or delete it). */
  exclusiveOwnerOfAlias(alias: string): AppService | undefined {
    return this.services.find((s) => claimsAliasExclusively(s, alias));
  }

  /** Services whose user namespaces hold this user ID (to ask them about an unknown user). */
  interestedInUser(userId: string): AppService[] {
    return this.services.filter((s) => matches(s.namespaces.users, userId));
  }

  /** Services whose alias namespaces hold this alias (to ask them about an unknown alias). */
  interestedInAlias(alias: string): AppService[] {
    return this.services.filter((s) => isInterestedInAlias(s, alias));
  }
}
