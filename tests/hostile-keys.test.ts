// Keys that are also names on Object.prototype (`__proto__`, `constructor`, ...) as every key and path
// segment a user chooses, on every route of the route table: no 500, the server keeps working, and the
// built-in objects are untouched (issue 20). Driven by server/api/routes.ts, so a new route is covered
// the day it is added: every `:param` is filled with each word (all at once, and one at a time with
// working values for the others), every query parameter too, and bodies are generated from the route's
// own schema with the word wherever a key or string goes, plus hand-made bodies for the routes whose
// schema leaves the interesting part open (key uploads, filters, push rules, to-device messages).
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { routes } from "../server/api/routes.ts";
import type { AnyRoute } from "../server/http/route.ts";
import { snapshotGlobals } from "./globals-guard.ts";
import { request, startTestServer, type TestServer } from "./harness.ts";

const HOSTILE = ["__proto__", "constructor", "prototype", "toString", "hasOwnProperty"] as const;
const PASSWORD = "correct horse battery";
const CONCURRENCY = 8;

type Json = unknown;
interface Planned {
  method: string;
  path: string;
  body?: string;
  /** Sent after everything else (they end the session). */
  last?: boolean;
}

/** Each word's requests go in two tests: hostile path segments and query parameters, then hostile bodies. */
type Part = "paths" | "bodies";

/** `{w: {w: {w: w}}}`, with `w` a real key even when it is `__proto__`. */
function nest(w: string, depth = 3): Json {
  let value: Json = w;
  for (let i = 0; i < depth; i++) value = keyed(w, value);
  return value;
}

function keyed(key: string, value: Json): Record<string, Json> {
  // A computed key defines an own property; `{ __proto__: v }` would set the prototype instead.
  return { [key]: value };
}

/** A value for a zod schema with `w` wherever the schema lets the client choose a key or a string. */
function sample(schema: unknown, w: string, depth = 0): Json {
  const def = (schema as { _zod?: { def?: Record<string, any> } } | undefined)?._zod?.def;
  if (!def || depth > 10) return w;
  switch (def.type) {
    case "object": {
      const out: Record<string, Json> = keyed(w, nest(w, 2));
      for (const [k, s] of Object.entries(def.shape as Record<string, unknown>)) out[k] = sample(s, w, depth + 1);
      return out;
    }
    case "record": {
      const keyDef = def.keyType?._zod?.def;
      const key = keyDef?.type === "enum" ? String(Object.values(keyDef.entries)[0]) : w;
      return keyed(key, sample(def.valueType, w, depth + 1));
    }
    case "array":
      return [sample(def.element, w, depth + 1)];
    case "tuple":
      return (def.items as unknown[]).map((s) => sample(s, w, depth + 1));
    case "optional":
    case "nullable":
    case "default":
    case "prefault":
    case "nonoptional":
    case "readonly":
    case "catch":
      return sample(def.innerType, w, depth + 1);
    case "pipe":
      return sample(def.in, w, depth + 1);
    case "union":
      return sample((def.options as unknown[])[0], w, depth + 1);
    case "enum":
      return Object.values(def.entries)[0];
    case "literal":
      return (def.values as unknown[])[0];
    case "number":
    case "int":
    case "bigint":
      return 1;
    case "boolean":
      return true;
    case "string":
      return w;
    default:
      return nest(w);
  }
}

function queryKeys(r: AnyRoute): string[] {
  const shape = (r.query as { _zod?: { def?: { shape?: Record<string, unknown> } } } | undefined)?._zod?.def?.shape;
  return shape ? Object.keys(shape) : [];
}

describe("hostile keys on every route", () => {
  let hs: TestServer;
  let me: string;
  let token: string;
  let defaults: Record<string, string>;
  const globals = snapshotGlobals();

  beforeAll(async () => {
    hs = await startTestServer({ config: { max_in_flight_requests_per_user: 1000, max_in_flight_requests: 1000 } });
    const reg = await request(hs.url, "POST", "/_matrix/client/v3/register", {
      body: { username: "mallory", password: PASSWORD, auth: { type: "m.login.dummy" } },
    });
    me = reg.json.user_id;
    token = reg.json.access_token;
    // Users whose IDs hold the words, so bodies naming them reach real accounts.
    for (const w of ["constructor", "prototype", "__proto__", "tostring", "hasownproperty"]) {
      await request(hs.url, "POST", "/_matrix/client/v3/register", {
        body: { username: w, password: PASSWORD, auth: { type: "m.login.dummy" } },
      });
    }
    const roomId = (await request(hs.url, "POST", "/_matrix/client/v3/createRoom", { token, body: { room_alias_name: "hostile" } })).json.room_id;
    const room = encodeURIComponent(roomId);
    const eventId = (
      await request(hs.url, "PUT", `/_matrix/client/v3/rooms/${room}/send/m.room.message/seed`, { token, body: { msgtype: "m.text", body: "x" } })
    ).json.event_id;
    const version = (
      await request(hs.url, "POST", "/_matrix/client/v3/room_keys/version", {
        token,
        body: { algorithm: "m.megolm_backup.v1.curve25519-aes-sha2", auth_data: { public_key: "x" } },
      })
    ).json.version;
    const filterId = (await request(hs.url, "POST", `/_matrix/client/v3/user/${encodeURIComponent(me)}/filter`, { token, body: {} })).json.filter_id;
    const whoami = (await request(hs.url, "GET", "/_matrix/client/v3/account/whoami", { token })).json;
    defaults = {
      roomId,
      roomIdOrAlias: roomId,
      roomAlias: "#hostile:test.local",
      userId: me,
      eventId,
      eventType: "m.room.message",
      txnId: "t",
      stateKey: "",
      type: "m.hostile",
      tag: "u.tag",
      deviceId: whoami.device_id,
      version: String(version),
      sessionId: "session",
      filterId,
      scope: "global",
      kind: "override",
      ruleId: "rule",
      receiptType: "m.read",
      relType: "m.annotation",
      keyId: "ed25519:a_key",
    };
  });
  afterAll(() => hs?.destroy());

  /** Hand-made bodies where the route's schema leaves the interesting part open. */
  function handMade(r: AnyRoute, w: string): Json[] {
    const filter = {
      event_fields: [w, `content.${w}`, `content.${w}.${w}`, `${w}.${w}`],
      room: { timeline: { types: [w], not_types: [w], senders: [w] }, state: keyed(w, w), rooms: [w] },
      presence: { types: [w] },
      ...keyed(w, nest(w)),
    };
    const uia = { auth: { type: "m.login.password", identifier: { type: "m.id.user", user: w }, password: w, session: w } };
    const key = `${r.method} ${r.path}`;
    switch (key) {
      case "POST /_matrix/client/v3/keys/upload":
        return [
          {
            one_time_keys: { [`${w}:${w}`]: { key: w, signatures: keyed(me, keyed(w, w)) }, [`signed_curve25519:${w}`]: "k" },
            fallback_keys: { [`${w}:AAAA`]: "k" },
          },
        ];
      case "POST /_matrix/client/v3/keys/claim":
        return [{ one_time_keys: { [me]: { [w]: w, [defaults.deviceId!]: w }, ...keyed(w, keyed(w, "signed_curve25519")) } }];
      case "POST /_matrix/client/v3/keys/query":
        return [{ device_keys: { [me]: [w], ...keyed(w, [w]) } }];
      case "POST /_matrix/client/v3/keys/signatures/upload":
        return [{ ...keyed(w, keyed(w, {})), [me]: keyed(w, { keys: keyed(w, w), signatures: keyed(me, keyed(w, w)) }) }];
      case "POST /_matrix/client/v3/keys/device_signing/upload":
        return [{ master_key: { user_id: me, usage: ["master"], keys: keyed(w, w), signatures: keyed(w, keyed(w, w)) }, ...uia }];
      case "PUT /_matrix/client/v3/sendToDevice/:eventType/:txnId":
        return [{ messages: { [me]: { [w]: nest(w), "*": keyed(w, 1) }, ...keyed(w, keyed(w, {})) } }];
      case "POST /_matrix/client/v3/user/:userId/filter":
        return [filter];
      case "POST /_matrix/client/v3/createRoom":
        return [
          {
            initial_state: [{ type: w, state_key: w, content: nest(w) }],
            creation_content: nest(w),
            power_level_content_override: { users: keyed(w, 1), events: keyed(w, 1), notifications: keyed(w, 1) },
            invite: [w],
          },
        ];
      case "PUT /_matrix/client/v3/pushrules/:scope/:kind/:ruleId":
        return [
          {
            actions: ["notify", { set_tweak: w, value: keyed(w, 1) }],
            conditions: [
              { kind: "event_match", key: `content.${w}`, pattern: w },
              { kind: "event_property_is", key: `${w}.${w}`, value: w },
              { kind: "sender_notification_permission", key: w },
            ],
            pattern: w,
          },
        ];
      case "POST /_matrix/client/v3/login":
        return [{ type: "m.login.password", identifier: { type: "m.id.user", user: w }, password: w, device_id: w }];
      case "POST /_matrix/client/v3/rooms/:roomId/read_markers":
        return [{ "m.fully_read": defaults.eventId, "m.read": defaults.eventId, ...keyed(w, w) }];
      default:
        return r.body && /deactivate|password|delete_devices|devices|device_signing/.test(r.path) ? [uia] : [];
    }
  }

  function plan(w: string, part: Part): Planned[] {
    const out: Planned[] = [];
    const filterParam = JSON.stringify({ event_fields: [`content.${w}.${w}`, w], room: { timeline: { types: [w] } } });
    for (const r of routes) {
      const names = [...r.path.matchAll(/:(\w+)/g)].map((m) => m[1]!);
      const fill = (hostile: (name: string) => boolean) =>
        r.path.replace(/:(\w+)/g, (_, name: string) => encodeURIComponent(hostile(name) ? w : (defaults[name] ?? w)));
      const paths = new Set([fill(() => true), ...names.map((n) => fill((name) => name === n)), fill(() => false)]);
      const bodies = r.body ? [sample(r.body, w), ...handMade(r, w)].map((b) => JSON.stringify(b)) : [undefined];
      const last = /\/logout/.test(r.path);
      const working = fill(() => false);
      if (part === "bodies") {
        // Every body on the path with working segments, where the body is what gets read.
        for (const body of bodies) out.push({ method: r.method, path: working, body, last });
        continue;
      }
      // Hostile path segments, with the schema's body.
      for (const path of paths) if (path !== working || !r.body) out.push({ method: r.method, path, body: bodies[0], last });
      const keys = queryKeys(r);
      if (keys.length) {
        const q = new URLSearchParams(keys.map((k): [string, string] => [k, k === "filter" ? filterParam : w]));
        if (r.path.endsWith("/sync")) q.set("timeout", "0");
        out.push({ method: r.method, path: `${fill(() => false)}?${q}`, body: bodies[0], last });
      }
    }
    return [...out.filter((p) => !p.last), ...out.filter((p) => p.last)];
  }

  async function sendAll(planned: Planned[], auth: string) {
    const failures: string[] = [];
    let next = 0;
    const worker = async () => {
      while (next < planned.length) {
        const p = planned[next++]!;
        const res = await request(hs.url, p.method, p.path, { token: auth, ...(p.body !== undefined ? { raw: p.body } : {}) });
        // 502/504: another server (a hostile key used as a server name) could not be reached — a proper answer.
        if (res.status >= 500 && res.status !== 502 && res.status !== 504) failures.push(`${p.method} ${p.path} ${p.body ?? ""} → ${res.status} ${res.text.slice(0, 120)}`);
      }
    };
    const regular = planned.filter((p) => !p.last);
    const finishing = planned.filter((p) => p.last);
    next = 0;
    planned = regular;
    await Promise.all(Array.from({ length: CONCURRENCY }, worker));
    next = 0;
    planned = finishing;
    await Promise.all(Array.from({ length: CONCURRENCY }, worker));
    return failures;
  }

  async function expectServerWorks() {
    expect((await request(hs.url, "GET", "/_matrix/client/versions")).status).toBe(200);
    expect((await request(hs.url, "GET", "/health")).status).toBe(200);
    // The login flows: a password login costs an Argon2 hash, which the tests do once per word already.
    expect((await request(hs.url, "GET", "/_matrix/client/v3/login")).status).toBe(200);
  }

  for (const w of HOSTILE) {
    for (const part of ["paths", "bodies"] as const) {
      it(`answers every route with ${w} as every ${part === "paths" ? "path segment and query parameter" : "key and string of the body"}, never with a 500`, async () => {
        // A device named after the word, holding keys of an algorithm named after it, so claims and
        // queries naming it find something.
        const login = await request(hs.url, "POST", "/_matrix/client/v3/login", {
          body: { type: "m.login.password", identifier: { type: "m.id.user", user: "mallory" }, password: PASSWORD, device_id: w },
        });
        expect(login.status).toBe(200);
        const upload = await request(hs.url, "POST", "/_matrix/client/v3/keys/upload", {
          token: login.json.access_token,
          raw: JSON.stringify({ one_time_keys: { [`${w}:${w}`]: "k1", [`signed_curve25519:${w}`]: "k2" }, fallback_keys: { [`${w}:A`]: "k3" } }),
        });
        expect(upload.status).toBe(200);

        const planned = plan(w, part);
        const failures = await sendAll(planned, login.json.access_token);
        const polluted = ({} as Record<string, unknown>).zzz;
        const changes = globals.restore();
        expect(changes).toEqual([]);
        expect(polluted).toBeUndefined();
        expect(failures).toEqual([]);
        expect(planned.length).toBeGreaterThan(routes.length);
        await expectServerWorks();
      });
    }
  }

  it("leaves the server working and the built-in objects as they were", async () => {
    expect(globals.restore()).toEqual([]);
    expect(({} as Record<string, unknown>).zzz).toBeUndefined();
    await expectServerWorks();
    // The first user's data survived the sweep (which logged out all of their sessions at the end).
    const login = await request(hs.url, "POST", "/_matrix/client/v3/login", {
      body: { type: "m.login.password", identifier: { type: "m.id.user", user: "mallory" }, password: PASSWORD },
    });
    const filter = await request(hs.url, "GET", `/_matrix/client/v3/user/${encodeURIComponent(me)}/filter/${defaults.filterId}`, {
      token: login.json.access_token,
    });
    expect(filter.status).toBe(200);
  });
});
