// Fuzz test over the route table (issue 20): every route of server/api/routes.ts, with path
// parameters, queries and bodies drawn from hostile values (truncated JSON, wrong types, huge and
// fractional numbers, deep nesting, NUL, invalid UTF-8, lone surrogates, strings near the size
// limit, `__proto__`/`constructor` keys, arrays for objects, empty bodies, wrong content types), as
// a throwaway user and without authentication. It fails on any 5xx, on any 4xx that is not a Matrix
// error (JSON with an errcode), on any change to the built-in prototypes, and, afterwards, if a
// canary user's data changed or the server stopped answering. New routes are covered as they are
// added to the table.
//
// Seeded: the seed is printed; FUZZ_SEED=<n> replays a run (the order of requests under
// concurrency varies, what is sent does not). FUZZ_REQUESTS=<n> changes the number of requests.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { z } from "zod";
import { routes } from "../server/api/routes.ts";
import type { AnyRoute } from "../server/http/route.ts";
import { loginUser, registerUser, type TestUser } from "./accounts-helpers.ts";
import { deviceIdentity, oneTimeKeys } from "./e2ee-helpers.ts";
import { snapshotGlobals } from "./globals-guard.ts";
import { request, startTestServer, type TestServer } from "./harness.ts";

const SEED = process.env.FUZZ_SEED ? Number(process.env.FUZZ_SEED) >>> 0 : (Math.random() * 2 ** 32) >>> 0;
const REQUESTS = Number(process.env.FUZZ_REQUESTS ?? 2400);
/**
 * Each of the two runs stops sending after this long even if it has not sent all its requests (a
 * busy machine): every route still gets its turn, as routes are visited in full passes.
 */
const BUDGET_MS = Number(process.env.FUZZ_BUDGET_MS ?? 6000);
const CONCURRENCY = 6;
const MAX_BODY = 64 * 1024;
const enc = encodeURIComponent;

// ---- Seeded randomness (mulberry32) -------------------------------------------------------------------

function prng(seed: number) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return {
    next,
    int: (n: number) => Math.floor(next() * n),
    chance: (p: number) => next() < p,
    pick<T>(items: readonly T[]): T {
      return items[Math.floor(next() * items.length)]!;
    },
  };
}
type Rng = ReturnType<typeof prng>;

// ---- What to send -------------------------------------------------------------------------------------

/** Keys that reach a prototype when code uses a plain object as a map or walks a path. */
const PROTO_KEYS = ["__proto__", "constructor", "prototype", "toString", "hasOwnProperty", "valueOf"];

const HOSTILE_STRINGS = [
  ...PROTO_KEYS,
  "",
  " ",
  "\u0000",
  "a\u0000b",
  "\ud800",
  "\udfff\ud800",
  "\u202e",
  "🦀".repeat(50),
  "x".repeat(3000),
  "../../etc/passwd",
  "%00",
  "%s%n",
  "@",
  "@:",
  "!:",
  "$",
  "#:",
  "@user:",
  ":test.local",
  "@x:test.local:99999999",
  "@ùser:test.local",
  "!room:[::1]",
  "1e309",
  "-1",
  "NaN",
  "null",
  "{}",
  "[]",
];

/** Path segments, already encoded: hostile strings, and encodings that are themselves broken. */
const HOSTILE_SEGMENTS = [
  ...HOSTILE_STRINGS.filter((s) => s !== "" && !/[\ud800-\udfff]/.test(s)).map(enc),
  "%",
  "%ZZ",
  "%FF%FE",
  "%C0%AF",
  "%ED%A0%80",
  "%00",
  "%2F",
  "%2e%2e",
  "a%20b",
  "%E2%80%AE",
];

const HOSTILE_NUMBERS_TEXT = ["1e309", "-1e309", "123456789012345678901234567890", "1.5", "-0", "0.0000001", "9007199254740993", "-9007199254740993", "1E400"];

const QUERY_KEYS = [
  "filter", "timeout", "since", "limit", "from", "to", "dir", "full_state", "set_presence", "server", "via",
  "server_name", "kind", "username", "user_id", "include_leave", "membership", "not_membership", "at",
  "event_filter", "ts", "recurse", "token", "__proto__", "constructor", "org.matrix.msc3575.proxy",
];
const HOSTILE_FILTERS = [
  '{"event_fields":["content.__proto__.zzz","constructor.prototype","toString"]}',
  '{"room":{"timeline":{"limit":1e309}}}',
  '{"room":{"timeline":{"limit":-1,"types":[1,2]}}}',
  '{"__proto__":{"zzz":1},"room":{"constructor":{"prototype":{"zzz":1}}}}',
  '{"room":{"rooms":"!notalist:test.local"}}',
  '{"room":{"state":{"lazy_load_members":"yes"}}}',
  "{",
  "[]",
  "null",
  "1",
  `${"[".repeat(3000)}${"]".repeat(3000)}`,
  `{"event_fields":[${Array.from({ length: 500 }, (_, i) => `"content.a${i}"`).join(",")}]}`,
];

interface Context {
  /** Stream and pagination tokens the server handed out, and broken variants of them. */
  tokens: string[];
  fuzz: TestUser;
  canary: TestUser;
  fuzzRoom: string;
  fuzzEvent: string;
  canaryRoom: string;
  canaryEvent: string;
}

function plausibleStrings(ctx: Context): string[] {
  return [
    ctx.fuzz.userId, ctx.fuzz.deviceId, ctx.fuzzRoom, ctx.fuzzEvent,
    ctx.canary.userId, ctx.canary.deviceId, ctx.canaryRoom, ctx.canaryEvent,
    "m.room.message", "m.room.member", "m.room.power_levels", "m.text", "m.tag", "m.direct", "global", "override",
    "content", "underride", "room", "sender", "m.read", "m.read.private", "m.fully_read", "1", "2", "txn1",
    "#alias:test.local", "m.favourite", "ed25519:auto", "signed_curve25519", "curve25519", "m.login.password",
    "m.login.dummy", "m.megolm.v1.aes-sha2", "m.reference", "m.annotation", "public", "private", "online", "b", "f",
    "test.local", "example.org", ...ctx.tokens,
  ];
}

/** Any JSON value, from the hostile pools, `depth` levels deep at most. */
function randomValue(rng: Rng, ctx: Context, depth: number): unknown {
  switch (rng.int(depth > 0 ? 9 : 7)) {
    case 0:
      return rng.pick(HOSTILE_STRINGS);
    case 1:
      return rng.pick(plausibleStrings(ctx));
    case 2:
      return rng.pick([0, -1, 1, 1.5, -0, 2 ** 31, 2 ** 53, 2 ** 64, -(2 ** 63), 1e308, Number.MIN_VALUE]);
    case 3:
      return rng.pick([true, false, null]);
    case 4:
      return [];
    case 5:
      return {};
    case 6:
      return rng.pick(plausibleStrings(ctx)) + rng.pick(HOSTILE_STRINGS);
    case 7:
      return Array.from({ length: rng.int(4) }, () => randomValue(rng, ctx, depth - 1));
    default: {
      const out: Record<string, unknown> = {};
      for (let i = rng.int(4); i > 0; i--) {
        const key = rng.chance(0.5) ? rng.pick(HOSTILE_STRINGS) : rng.pick(plausibleStrings(ctx));
        // An own `__proto__` key, as JSON.parse makes one: JSON.stringify writes it out.
        Object.defineProperty(out, key, { value: randomValue(rng, ctx, depth - 1), enumerable: true, writable: true, configurable: true });
      }
      return out;
    }
  }
}

type JsonSchema = {
  type?: string | string[];
  properties?: Record<string, JsonSchema>;
  required?: string[];
  additionalProperties?: JsonSchema | boolean;
  items?: JsonSchema;
  enum?: unknown[];
  const?: unknown;
  anyOf?: JsonSchema[];
  oneOf?: JsonSchema[];
  minimum?: number;
  maximum?: number;
};

/** A value the route's own schema would probably accept, so requests get past validation too. */
function plausibleValue(rng: Rng, ctx: Context, schema: JsonSchema | undefined, depth: number): unknown {
  if (!schema || depth > 6) return randomValue(rng, ctx, 1);
  if (schema.const !== undefined) return schema.const;
  if (schema.enum) return rng.pick(schema.enum);
  const branches = schema.anyOf ?? schema.oneOf;
  if (branches) return plausibleValue(rng, ctx, rng.pick(branches), depth + 1);
  const type = Array.isArray(schema.type) ? rng.pick(schema.type) : schema.type;
  switch (type) {
    case "object": {
      const out: Record<string, unknown> = {};
      for (const [key, sub] of Object.entries(schema.properties ?? {})) {
        if (schema.required?.includes(key) || rng.chance(0.6)) out[key] = plausibleValue(rng, ctx, sub, depth + 1);
      }
      if (schema.additionalProperties && rng.chance(0.7)) {
        const sub = schema.additionalProperties === true ? undefined : schema.additionalProperties;
        for (let i = 1 + rng.int(3); i > 0; i--) {
          // Map keys (user IDs, device IDs, room IDs, key IDs...) are where prototype keys do harm.
          const key = rng.chance(0.2) ? rng.pick(PROTO_KEYS) : rng.pick(plausibleStrings(ctx));
          Object.defineProperty(out, key, { value: plausibleValue(rng, ctx, sub, depth + 1), enumerable: true, writable: true, configurable: true });
        }
      }
      return out;
    }
    case "array":
      return Array.from({ length: rng.int(4) }, () => plausibleValue(rng, ctx, schema.items, depth + 1));
    case "string":
      return rng.pick(plausibleStrings(ctx));
    case "integer":
    case "number": {
      const lo = schema.minimum ?? 0;
      const hi = Math.min(schema.maximum ?? 1000, lo + 1000);
      return lo + rng.int(hi - lo + 1);
    }
    case "boolean":
      return rng.chance(0.5);
    case "null":
      return null;
    default:
      return randomValue(rng, ctx, 2);
  }
}

/** Replaces one value somewhere in `value` with a hostile one (wrong type, proto key, array for object...). */
function mutate(rng: Rng, ctx: Context, value: unknown, hostile?: () => unknown): unknown {
  if (value === null || typeof value !== "object" || rng.chance(0.15)) {
    if (hostile) return hostile();
    return rng.pick<unknown>([randomValue(rng, ctx, 2), [value], { value }, rng.pick(HOSTILE_STRINGS)]);
  }
  if (Array.isArray(value)) {
    if (value.length === 0) return [randomValue(rng, ctx, 2)];
    const copy = [...value];
    const i = rng.int(copy.length);
    copy[i] = mutate(rng, ctx, copy[i], hostile);
    return copy;
  }
  const entries = Object.entries(value);
  const out: Record<string, unknown> = {};
  const target = entries.length ? rng.int(entries.length + 1) : 0;
  entries.forEach(([k, v], i) => {
    if (i !== target) out[k] = v;
    else if (!hostile && rng.chance(0.3)) Object.defineProperty(out, rng.pick(PROTO_KEYS), { value: v, enumerable: true, writable: true, configurable: true });
    else out[k] = mutate(rng, ctx, v, hostile);
  });
  if (target === entries.length) {
    Object.defineProperty(out, rng.pick([...PROTO_KEYS, ...HOSTILE_STRINGS]), {
      value: hostile ? hostile() : randomValue(rng, ctx, 2),
      enumerable: true,
      writable: true,
      configurable: true,
    });
  }
  return out;
}

const nested = (depth: number, open: string, close: string, inner = "1") => open.repeat(depth) + inner + close.repeat(depth);

const SENTINEL = "\u0001fuzz\u0001";

/** The plausible body with one value somewhere inside replaced by raw JSON text (deep nesting, odd numbers). */
function withRawValue(rng: Rng, ctx: Context, plausible: unknown, raw: string): string {
  return JSON.stringify(mutate(rng, ctx, plausible, () => SENTINEL)).replace(JSON.stringify(SENTINEL), raw);
}

/** Bodies no schema would produce: broken JSON, odd numbers, deep nesting, bad bytes, sizes near the limit. */
function hostileText(rng: Rng, ctx: Context, plausibleValue: unknown): string | Buffer {
  const plausible = JSON.stringify(plausibleValue) ?? "{}";
  switch (rng.int(25)) {
    case 22: {
      const depth = rng.pick([101, 1000, 5000, 20_000]);
      return withRawValue(rng, ctx, plausibleValue, rng.chance(0.5) ? nested(depth, "[", "]") : nested(depth, '{"a":', "}"));
    }
    case 23:
      return withRawValue(rng, ctx, plausibleValue, rng.pick(HOSTILE_NUMBERS_TEXT));
    case 24:
      return withRawValue(rng, ctx, plausibleValue, rng.pick(['{"__proto__":{"zzz":1}}', '{"constructor":{"prototype":{"zzz":1}}}', '"\\u0000"', '"\\ud800"']));
    case 0:
      return "";
    case 1:
      return plausible.slice(0, rng.int(Math.max(1, plausible.length)));
    case 2:
      return rng.pick(["[]", "null", "1", '"s"', "true", "[{}]", "{}{}", "{} x", "}{", "{", " \n\t", "\ufeff{}", "{'a':1}", "{a:1}", "[1,]", '{"a":1,}']);
    case 3:
      return nested(rng.pick([120, 5000, 50_000]), "[", "]");
    case 4:
      return nested(rng.pick([120, 5000, 20_000]), '{"a":', "}");
    case 5:
      return `{"a":${rng.pick(HOSTILE_NUMBERS_TEXT)},"limit":${rng.pick(HOSTILE_NUMBERS_TEXT)},"timeout":${rng.pick(HOSTILE_NUMBERS_TEXT)}}`;
    case 6:
      return rng.pick([
        '{"__proto__":{"zzz":1,"polluted":"yes"}}',
        '{"constructor":{"prototype":{"zzz":1}}}',
        '{"a":{"__proto__":{"zzz":1}},"content":{"__proto__":{"toString":1}}}',
        '{"__proto__":[],"content":{"constructor":{"prototype":{"zzz":1}}}}',
        '{"prototype":{"zzz":1},"toString":"x","hasOwnProperty":"x","valueOf":1}',
      ]);
    case 7:
      return '{"a\\u0000b":"c\\u0000d","msgtype":"m.text\\u0000","body":"\\u0000"}';
    case 8:
      return Buffer.concat([Buffer.from('{"body":"'), Buffer.from([0xff, 0xfe, 0xc3, 0x28, 0xed, 0xa0, 0x80, 0xf0, 0x28, 0x8c, 0x28]), Buffer.from('","msgtype":"m.text"}')]);
    case 9:
      return '{"body":"\\ud800","\\udfff":"\\udc00\\ud800","msgtype":"m.text"}';
    case 10:
      return '{"a":1,"a":{"b":2},"msgtype":"m.text","msgtype":[]}';
    case 11:
      return `{"body":"${"x".repeat(MAX_BODY - 40 - rng.int(50))}","msgtype":"m.text"}`;
    case 12:
      return `{"body":"${"x".repeat(MAX_BODY + rng.int(100))}"}`;
    case 13:
      return `[${Array.from({ length: MAX_BODY / 2 - 10 }, () => "0").join(",")}]`;
    case 14:
      return `{${Array.from({ length: 3000 }, (_, i) => `"k${i}":${i}`).join(",")}}`;
    case 15:
      return Buffer.from(Array.from({ length: 1 + rng.int(200) }, () => rng.int(256)));
    case 16:
      return "\u0000".repeat(10);
    case 17:
      return `{"body":"a\u0000b","msgtype":"m.text"}`; // a raw NUL: not allowed unescaped in JSON
    case 18:
      return `{"content":${nested(rng.pick([90, 101, 200]), '{"a":', "}")}}`;
    case 19:
      return `{"messages":{"@u:test.local":{"*":${nested(150, "[", "]")}}}}`;
    case 20:
      return plausible.replace(/"[^"]*":/, '"__proto__":');
    default:
      return plausible.replace(/[{[]/, "[").replace(/[}\]]$/, "]");
  }
}

/** Authorization headers of a server that signs its requests (X-Matrix), forged and malformed. */
const HOSTILE_X_MATRIX = [
  'X-Matrix origin="__proto__",destination="test.local",key="ed25519:a",sig="AAAA"',
  "X-Matrix origin=constructor,destination=test.local,key=ed25519:__proto__,sig=AAAA",
  'X-Matrix origin="evil.example",key="ed25519:toString",sig="%%%"',
  "X-Matrix ,,,=,",
  'X-Matrix origin="a\\"b",origin="c"',
  `X-Matrix origin=${"a".repeat(3000)}`,
  "X-Matrix",
  'X-Matrix origin="test.local",destination="test.local",key="ed25519:auto",sig="' + "A".repeat(86) + '"',
];

interface FuzzRequest {
  authorization?: string;
  who: string;
  method: string;
  path: string;
  token?: string;
  body?: string | Buffer;
  contentType?: string;
}

const CONTENT_TYPES = ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/json; charset=latin1", "", "application/octet-stream"];

/** `params`: hostile path parameters and queries, bodies mostly well formed; `bodies`: the other way round. */
type Mode = "params" | "bodies";

function makeRequest(rng: Rng, ctx: Context, r: AnyRoute, schemas: Map<AnyRoute, JsonSchema | undefined>, tokens: { fuzz: string }, mode: Mode): FuzzRequest {
  const hostileParams = rng.chance(mode === "params" ? 0.8 : 0.1);
  const path = r.path
    .split("/")
    .map((seg) => {
      if (!seg.startsWith(":")) return seg;
      return hostileParams && rng.chance(0.7) ? rng.pick(HOSTILE_SEGMENTS) : enc(rng.pick(plausibleStrings(ctx)));
    })
    .join("/");
  const query = new URLSearchParams();
  if (rng.chance(mode === "params" ? 0.6 : 0.2)) {
    for (let i = 1 + rng.int(3); i > 0; i--) {
      const key = rng.pick(QUERY_KEYS);
      if (r.longPoll && key === "timeout") continue;
      const value = key === "filter" && rng.chance(0.6) ? rng.pick(HOSTILE_FILTERS) : String(rng.pick<unknown>([...HOSTILE_STRINGS, ...HOSTILE_NUMBERS_TEXT, ...plausibleStrings(ctx)]));
      query.append(key, value);
    }
  }
  // A long-poll must not wait: the fuzz is about input, and a waiting request only slows it down.
  if (r.longPoll) query.set("timeout", "0");
  const qs = query.toString();
  // Logging out ends the fuzz user's session, and the requests in flight with it fail until it
  // logs in again: mostly sent without a token (they take no input to fuzz anyway).
  const endsSession = /\/logout(\/all)?$/.test(r.path);
  const auth = endsSession && rng.chance(0.9) ? 0.9 : rng.next();
  const token = auth < 0.85 ? tokens.fuzz : auth < 0.95 ? undefined : rng.pick(["__proto__", "constructor", "x".repeat(500), "syt_bogus", "%00"]);
  const who = auth < 0.85 ? "the fuzz user" : auth < 0.95 ? "anonymous" : `token ${JSON.stringify(token!.slice(0, 20))}`;
  const req: FuzzRequest = { who, method: r.method, path: qs ? `${path}?${qs}` : path, token };
  if (r.path.startsWith("/_matrix/federation/") && rng.chance(0.6)) {
    req.authorization = rng.pick(HOSTILE_X_MATRIX);
    req.token = undefined;
    req.who = `a server (${req.authorization.slice(0, 40)})`;
  }
  if (r.method !== "GET") {
    const plausible = plausibleValue(rng, ctx, schemas.get(r), 0);
    const kind = rng.next();
    if (kind < (mode === "params" ? 0.5 : 0.1)) req.body = JSON.stringify(plausible);
    else if (kind < (mode === "params" ? 1 : 0.5)) req.body = JSON.stringify(mutate(rng, ctx, plausible));
    else req.body = hostileText(rng, ctx, plausible);
    req.contentType = mode === "params" || rng.chance(0.8) ? "application/json" : rng.pick(CONTENT_TYPES);
  }
  return req;
}

// ---- Checking answers ---------------------------------------------------------------------------------

interface Finding {
  request: string;
  status: number;
  answer: string;
}

function describeRequest(req: FuzzRequest): string {
  const body = req.body === undefined ? "" : ` body=${JSON.stringify(String(req.body).slice(0, 200))}${String(req.body).length > 200 ? `… (${req.body.length})` : ""}`;
  return `${req.method} ${req.path.slice(0, 300)} as ${req.who}${req.contentType !== undefined ? ` (${req.contentType || "no content type"})` : ""}${body}`;
}

/** Why the answer is wrong, or undefined when it is a proper Matrix answer. */
function judge(path: string, status: number, contentType: string | null, text: string): string | undefined {
  // 502/504: another server (a fuzzed server name) could not be reached — a proper answer.
  if (status >= 500 && status !== 502 && status !== 504) return "server error";
  if (status < 200 || (status >= 300 && status < 400)) return "unexpected status";
  // The load balancers' probe answers plain text, as Synapse's does; no Matrix client reads it.
  if (status === 200 && path.split("?")[0] === "/health") return undefined;
  if (!contentType?.startsWith("application/json")) return `content type ${contentType}`;
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    return "not JSON";
  }
  if (status >= 400) {
    if (typeof json !== "object" || json === null || Array.isArray(json)) return "not a JSON object";
    const { errcode, error, flows } = json as { errcode?: unknown; error?: unknown; flows?: unknown };
    // A user-interactive auth challenge is a 401 with flows, and an errcode only once a stage failed.
    // https://spec.matrix.org/latest/client-server-api/#user-interactive-authentication-api
    if (status === 401 && Array.isArray(flows) && errcode === undefined) return undefined;
    if (typeof errcode !== "string" || !/^[A-Z][A-Z0-9_.]*$/i.test(errcode)) return "4xx without an errcode";
    if (error !== undefined && typeof error !== "string") return "error is not a string";
  }
  return undefined;
}

/** Properties a polluted Object.prototype would show on every object. */
const PROBES = ["zzz", "polluted", "x", "a", "body", "keys", "entries", "value", "admin", "isAdmin", "0", "1"];

// ---- The test -----------------------------------------------------------------------------------------

describe("fuzz: every route with hostile input", () => {
  let hs: TestServer;
  let ctx: Context;
  const tokens = { fuzz: "" };
  let canarySnapshot: unknown;
  const schemas = new Map<AnyRoute, JsonSchema | undefined>();

  const canaryPath = (rest: string) => rest.replace("{me}", enc(ctx.canary.userId)).replace("{room}", enc(ctx.canaryRoom));

  /** What the canary user can see of their own data; the same before and after the fuzz. */
  async function snapshotCanary() {
    const get = async (path: string) => {
      const res = await request(hs.url, "GET", canaryPath(path), { token: ctx.canary.accessToken });
      return { status: res.status, json: res.json };
    };
    const messages = await get("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=100");
    const devices = await get("/_matrix/client/v3/devices");
    const keys = await request(hs.url, "POST", "/_matrix/client/v3/keys/query", {
      token: ctx.canary.accessToken,
      body: { device_keys: { [ctx.canary.userId]: [] } },
    });
    return {
      messages: messages.status === 200 ? (messages.json.chunk as any[]).map((e) => [e.event_id, e.type, e.sender, e.content]) : messages,
      state: await get("/_matrix/client/v3/rooms/{room}/state").then((res) =>
        res.status === 200 ? (res.json as any[]).map((e) => [e.event_id, e.type, e.state_key, e.sender, e.content]) : res,
      ),
      members: await get("/_matrix/client/v3/rooms/{room}/joined_members"),
      accountData: await get("/_matrix/client/v3/user/{me}/account_data/org.example.canary"),
      roomAccountData: await get("/_matrix/client/v3/user/{me}/rooms/{room}/account_data/org.example.canary"),
      tags: await get("/_matrix/client/v3/user/{me}/rooms/{room}/tags"),
      filter: await get("/_matrix/client/v3/user/{me}/filter/" + canaryFilterId),
      pushRules: await get("/_matrix/client/v3/pushrules/"),
      profile: await get("/_matrix/client/v3/profile/{me}"),
      // Last-seen fields change with every request the canary makes (this snapshot's included).
      devices: devices.status === 200 ? (devices.json.devices as any[]).map((d) => [d.device_id, d.display_name]).sort() : devices,
      keys: { status: keys.status, keys: keys.json?.device_keys },
      backup: await get("/_matrix/client/v3/room_keys/version"),
      joinedRooms: await get("/_matrix/client/v3/joined_rooms"),
    };
  }
  let canaryFilterId = "";

  beforeAll(async () => {
    console.log(`fuzz seed ${SEED} (FUZZ_SEED=${SEED} replays this run), ${REQUESTS} requests`);
    hs = await startTestServer({ config: { max_request_bytes: MAX_BODY } });
    for (const r of routes) {
      try {
        schemas.set(r, r.body ? (z.toJSONSchema(r.body, { unrepresentable: "any", io: "input" }) as JsonSchema) : undefined);
      } catch {
        schemas.set(r, undefined);
      }
    }
    const canary = await registerUser(hs.url, "canary", "canary-password-1");
    const fuzz = await registerUser(hs.url, "fuzz", "fuzz-password-1");
    tokens.fuzz = fuzz.accessToken;
    const call = async (user: TestUser, method: string, path: string, body?: unknown) => {
      const res = await request(hs.url, method, path, { token: user.accessToken, body });
      expect(res.status, `${method} ${path}: ${res.text}`).toBe(200);
      return res.json;
    };
    const canaryRoom = (await call(canary, "POST", "/_matrix/client/v3/createRoom", { name: "canary room", topic: "t" })).room_id;
    const fuzzRoom = (await call(fuzz, "POST", "/_matrix/client/v3/createRoom", { preset: "public_chat" })).room_id;
    ctx = { tokens: [], fuzz, canary, fuzzRoom, canaryRoom, fuzzEvent: "", canaryEvent: "" };
    for (let i = 0; i < 3; i++) {
      ctx.canaryEvent = (await call(canary, "PUT", `/_matrix/client/v3/rooms/${enc(canaryRoom)}/send/m.room.message/c${i}`, { msgtype: "m.text", body: `canary ${i}` })).event_id;
      ctx.fuzzEvent = (await call(fuzz, "PUT", `/_matrix/client/v3/rooms/${enc(fuzzRoom)}/send/m.room.message/f${i}`, { msgtype: "m.text", body: `fuzz ${i}` })).event_id;
    }
    const handedOut = [
      (await call(fuzz, "GET", "/_matrix/client/v3/sync?timeout=0")).next_batch,
      (await call(fuzz, "GET", `/_matrix/client/v3/rooms/${enc(fuzzRoom)}/messages?dir=b&limit=1`)).end,
    ].filter((t): t is string => typeof t === "string");
    for (const t of handedOut) {
      ctx.tokens.push(t, t.replace(/\d+/g, "99999999999999999999"), t.replace(/\d+/, "-1"), t.replace(/\d+/g, "1.5"), `${t}_`, t.slice(0, -1), t.replace(/\d+/g, "9007199254740993"));
    }
    const me = enc(canary.userId);
    await call(canary, "PUT", `/_matrix/client/v3/user/${me}/account_data/org.example.canary`, { secret: "global", n: 1 });
    await call(canary, "PUT", `/_matrix/client/v3/user/${me}/rooms/${enc(canaryRoom)}/account_data/org.example.canary`, { secret: "room" });
    await call(canary, "PUT", `/_matrix/client/v3/user/${me}/rooms/${enc(canaryRoom)}/tags/m.favourite`, { order: 0.25 });
    await call(canary, "PUT", `/_matrix/client/v3/profile/${me}/displayname`, { displayname: "Canary" });
    canaryFilterId = (await call(canary, "POST", `/_matrix/client/v3/user/${me}/filter`, { room: { timeline: { limit: 7 } } })).filter_id;
    const device = deviceIdentity(canary);
    await call(canary, "POST", "/_matrix/client/v3/keys/upload", { device_keys: device.deviceKeys, one_time_keys: oneTimeKeys(canary, device, 3) });
    await call(canary, "POST", "/_matrix/client/v3/room_keys/version", { algorithm: "m.megolm_backup.v1.curve25519-aes-sha2", auth_data: { public_key: "pk" } });
    await loginUser(hs.url, canary.userId, "canary-password-1", { device_id: "CANARY2", initial_device_display_name: "second" });
    canarySnapshot = await snapshotCanary();
  });
  afterAll(() => hs?.destroy());

  /** Sends `count` fuzz requests, `CONCURRENCY` at a time; returns what was wrong. */
  async function fuzz(rng: Rng, mode: Mode, candidates: AnyRoute[]) {
    const count = REQUESTS / 2;
    // Full passes over the routes, each pass in its own shuffled order.
    const order: AnyRoute[] = [];
    while (order.length < count) {
      const pass = [...candidates];
      for (let i = pass.length - 1; i > 0; i--) {
        const j = rng.int(i + 1);
        [pass[i], pass[j]] = [pass[j]!, pass[i]!];
      }
      order.push(...pass.slice(0, count - order.length));
    }
    const deadline = performance.now() + BUDGET_MS;
    const cpuBefore = process.cpuUsage();
    const wallBefore = performance.now();
    const findings: Finding[] = [];
    const timing = new Map<string, number>();
    const statuses = new Map<number, number>();
    const pollution: string[] = [];
    let relogin: Promise<void> | undefined;
    let sent = 0;
    let globals = snapshotGlobals();
    // Requests are drawn in order from one generator, so a seed always produces the same list.
    const planned = order.map((route) => ({ route, rng: prng(rng.int(2 ** 32)) }));
    const batch: string[] = [];
    const checkGlobals = () => {
      const empty: Record<string, unknown> = {};
      const leaked = PROBES.filter((p) => empty[p] !== undefined);
      const changes = globals.restore();
      if (changes.length || leaked.length) pollution.push(`${[...changes, ...leaked.map((p) => `({}).${p} defined`)].join(", ")} after one of: ${batch.join(" | ")}`);
      batch.length = 0;
      globals = snapshotGlobals();
    };
    const worker = async () => {
      while (sent < planned.length && performance.now() < deadline) {
        if (relogin) {
          await relogin;
          continue; // the others may have sent the rest meanwhile
        }
        const { route, rng: r } = planned[sent++]!;
        const req = makeRequest(r, ctx, route, schemas, tokens, mode);
        const described = describeRequest(req);
        batch.push(described.slice(0, 200));
        const headers: Record<string, string> = {};
        if (req.token !== undefined) headers.Authorization = `Bearer ${req.token}`;
        if (req.authorization !== undefined) headers.Authorization = req.authorization;
        if (req.contentType) headers["Content-Type"] = req.contentType;
        let status = 0;
        let text = "";
        let contentType: string | null = null;
        const started = performance.now();
        try {
          const res = await fetch(hs.url + req.path, { method: req.method, headers, body: req.body, signal: AbortSignal.timeout(8000) });
          status = res.status;
          contentType = res.headers.get("content-type");
          text = await res.text();
        } catch (err) {
          findings.push({ request: described, status: 0, answer: `no answer: ${(err as Error).message}` });
          continue;
        }
        timing.set(route.method + " " + route.path, (timing.get(route.method + " " + route.path) ?? 0) + performance.now() - started);
        statuses.set(status, (statuses.get(status) ?? 0) + 1);
        const wrong = judge(req.path, status, contentType, text);
        if (wrong) findings.push({ request: described, status, answer: `${wrong}: ${text.slice(0, 300)}` });
        // logout, logout/all or deleting its own device end the fuzz user's session: log in again.
        if (status === 401 && req.token === tokens.fuzz && text.includes("M_UNKNOWN_TOKEN")) {
          relogin ??= (async () => {
            const login = await loginUser(hs.url, ctx.fuzz.userId, "fuzz-password-1");
            expect(login.status, login.text).toBe(200);
            tokens.fuzz = login.json.access_token;
            relogin = undefined;
          })();
          await relogin;
        }
        if (batch.length >= 50) checkGlobals();
      }
    };
    await Promise.all(Array.from({ length: CONCURRENCY }, worker));
    if (process.env.FUZZ_TIMING) console.log([...timing].sort((a, b) => b[1] - a[1]).slice(0, 20).map(([k, v]) => `${Math.round(v)} ms ${k}`).join("\n"));
    checkGlobals();
    const cpu = process.cpuUsage(cpuBefore);
    const cpuMs = (cpu.user + cpu.system) / 1000;
    const wallMs = performance.now() - wallBefore;
    const answers = [...statuses].sort((a, b) => a[0] - b[0]).map(([status, n]) => `${n}×${status}`).join(", ");
    console.log(
      `fuzz (${mode}): sent ${sent} of ${planned.length} requests over ${new Set(planned.slice(0, sent).map((p) => p.route)).size} of ${candidates.length} routes in ${Math.round(wallMs)} ms (this process's CPU: ${(cpuMs / Math.max(1, sent)).toFixed(1)} ms a request); answers ${answers}`,
    );
    return { findings, pollution };
  }

  const report = (name: string, result: { findings: Finding[]; pollution: string[] }) => {
    const lines = [
      ...result.pollution.map((p) => `Object.prototype changed: ${p}`),
      ...result.findings.map((f) => `${f.status} ${f.request}\n    → ${f.answer}`),
    ];
    if (lines.length) console.log(`fuzz (${name}, seed ${SEED}) found ${lines.length} problems:\n${lines.join("\n")}`);
    expect(lines, `seed ${SEED}: FUZZ_SEED=${SEED} npx vitest run tests/fuzz.test.ts`).toEqual([]);
  };

  it("answers hostile path parameters and queries on every route with Matrix JSON and no server error", async () => {
    report("params", await fuzz(prng(SEED), "params", routes));
  });

  it("answers hostile bodies on every route that takes one with Matrix JSON and no server error", async () => {
    report("bodies", await fuzz(prng(SEED ^ 0x5bd1e995), "bodies", routes.filter((r) => r.method !== "GET")));
  });

  it("leaves a canary user's data as it was and the server answering", async () => {
    expect(await snapshotCanary()).toEqual(canarySnapshot);
    expect((await request(hs.url, "GET", "/_matrix/client/versions")).status).toBe(200);
    expect((await request(hs.url, "GET", "/health")).status).toBe(200);
    const login = await loginUser(hs.url, "canary", "canary-password-1");
    expect(login.status).toBe(200);
    const send = await request(hs.url, "PUT", `/_matrix/client/v3/rooms/${enc(ctx.canaryRoom)}/send/m.room.message/after`, {
      token: login.json.access_token,
      body: { msgtype: "m.text", body: "still here" },
    });
    expect(send.status).toBe(200);
    const sync = await request(hs.url, "GET", "/_matrix/client/v3/sync?timeout=0", { token: login.json.access_token });
    expect(sync.status).toBe(200);
    expect(JSON.stringify(sync.json.rooms.join[ctx.canaryRoom].timeline.events)).toContain("still here");
  });
});
