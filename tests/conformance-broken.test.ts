// Proof that no check of the conformance suite's framework half (key server, request
// authentication, transactions, joins, robustness) passes vacuously: each one, run against a
// Parley with one thing deliberately broken, fails, and for the reason it exists.
// Broken how: PARLEY_UNSAFE_TEST_BREAK switches (server/unsafe-test-break.ts, test runs only) for
// what Parley checks, and a proxy rewriting Parley's answers (tests/conformance-helpers.ts
// `mutatingProxy`) for what Parley serves. tests/conformance.test.ts shows the same checks pass
// against a healthy Parley; tests/conformance-broken-rooms.test.ts does this for the other groups.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Check } from "../conformance/check.ts";
import { joinChecks } from "../conformance/checks/joins.ts";
import { keyServerChecks } from "../conformance/checks/key-server.ts";
import { requestAuthChecks } from "../conformance/checks/request-auth.ts";
import { robustnessChecks } from "../conformance/checks/robustness.ts";
import { transactionChecks } from "../conformance/checks/transactions.ts";
import { formatSummary } from "../conformance/run.ts";
import type { UnsafeTestBreak } from "../server/unsafe-test-break.ts";
import { type ProxiedExchange, mutatingProxy, resultOf, runChecks, startConformanceNetwork, withUnsafeTestBreak } from "./conformance-helpers.ts";
import type { Network } from "./federation-harness.ts";

const checks = new Map<string, Check>([...keyServerChecks, ...requestAuthChecks, ...transactionChecks, ...joinChecks, ...robustnessChecks].map((c) => [c.id, c]));
const check = (id: string) => checks.get(id) ?? (() => { throw new Error(`no check ${id}`); })();

// The proofs break Parley's federation checks, not its storage, and the suite runs whole against
// Parley on both databases in tests/conformance.test.ts: run once, on the PGlite run, to keep CI short.
const onPostgres = Boolean(process.env.DATABASE_URL);
let net: Network;

beforeAll(async () => {
  if (onPostgres) return;
  net = await startConformanceNetwork(1);
});

afterAll(async () => {
  await net?.destroy();
});

/** Runs the checks against `url` and expects each to fail with a reason matching its pattern. */
async function expectFailures(url: string, proofs: ReadonlyArray<[id: string, reason: RegExp]>, settings = {}): Promise<void> {
  const report = await runChecks(proofs.map(([id]) => check(id)), [url], settings);
  for (const [id, reason] of proofs) {
    const r = resultOf(report, id);
    expect(r.outcome, `${id}\n${formatSummary(report)}`).toBe("fail");
    expect(r.reason, id).toMatch(reason);
  }
}

const flagProofs: Array<[flags: UnsafeTestBreak[], proofs: Array<[string, RegExp]>]> = [
  [["skip-request-auth"], requestAuthChecks.map((c) => [c.id, /expected 401, got (200|400|403)/] as [string, RegExp])],
  [["no-transaction-dedupe"], [["transactions.idempotent", /sent again under a used txnId is in the room's timeline/]]],
  [["skip-pdu-signature-check"], [["transactions.bad-signature-dropped", /bad signature is in the room's timeline/]]],
  [["skip-content-hash-check"], [["transactions.bad-content-hash-redacted", /reached clients unredacted/]]],
  [["skip-pdu-auth-check"], [["transactions.auth-rejected", /the unauthorised event was accepted|the rejected power levels event is in the room's timeline/]]],
  [["skip-soft-fail"], [["transactions.soft-fail-hidden", /soft-failed PDU is in the room's/]]],
  [["skip-pdu-size-check"], [["transactions.oversized-pdu", /oversized PDU is in the room's timeline/]]],
  [["skip-room-version-check"], [["joins.incompatible-room-version", /expected 400 M_INCOMPATIBLE_ROOM_VERSION, got 200/]]],
  [
    ["skip-join-rules", "skip-pdu-auth-check"],
    [
      ["joins.invite-only-refused", /an uninvited user joined an invite-only room/],
      ["joins.restricted", /a user in none of the allowed rooms joined the restricted room/],
    ],
  ],
];

describe.skipIf(onPostgres)("each check fails against a Parley with the check it watches switched off", () => {
  for (const [flags, proofs] of flagProofs) {
    it(`${flags.join(" + ")}: ${proofs.map(([id]) => id).join(", ")} fail`, () => withUnsafeTestBreak(flags, () => expectFailures(net.servers[0]!.url, proofs)), 30_000);
  }
});

const keyPath = (x: ProxiedExchange) => x.path.split("?")[0]!;
const isOwnKeys = (x: ProxiedExchange) => x.method === "GET" && keyPath(x).startsWith("/_matrix/key/v2/server");
const isNotary = (x: ProxiedExchange) => keyPath(x).startsWith("/_matrix/key/v2/query");

function stripCreateFromSendJoin(x: ProxiedExchange): [number, unknown] | undefined {
  if (!keyPath(x).includes("/send_join/") || x.status !== 200) return undefined;
  const noCreate = (list: unknown) => (Array.isArray(list) ? list.filter((e: any) => e?.type !== "m.room.create") : list);
  return [200, { ...x.json, state: noCreate(x.json.state), auth_chain: noCreate(x.json.auth_chain) }];
}

/** Rewrites of what Parley serves, each with the checks it must make fail. */
const proxyProofs: Array<[what: string, rewrite: (x: ProxiedExchange) => [number, unknown] | undefined, proofs: Array<[string, RegExp]>, settings?: object]> = [
  [
    "a 31-byte verify key",
    (x) => {
      if (!isOwnKeys(x)) return undefined;
      const [id] = Object.keys(x.json.verify_keys);
      return [200, { ...x.json, verify_keys: { [id!]: { key: Buffer.alloc(31, 7).toString("base64").replace(/=+$/, "") } } }];
    },
    [["key-server.format", /an Ed25519 key is 32 bytes, this one 31/]],
  ],
  [
    "a self-signature over something else",
    (x) => {
      if (!isOwnKeys(x)) return undefined;
      const [[signer, sigs]] = Object.entries(x.json.signatures as Record<string, Record<string, string>>) as [[string, Record<string, string>]];
      const bad = Object.fromEntries(Object.keys(sigs).map((k) => [k, Buffer.alloc(64, 1).toString("base64").replace(/=+$/, "")]));
      return [200, { ...x.json, signatures: { [signer]: bad } }];
    },
    [["key-server.self-signature", /does not verify/]],
  ],
  [
    "valid_until_ts in seconds",
    (x) => (isOwnKeys(x) ? [200, { ...x.json, valid_until_ts: Math.floor(x.json.valid_until_ts / 1000) }] : undefined),
    [["key-server.valid-until", /less than an hour ahead/]],
  ],
  [
    "an old key without expired_ts",
    (x) => (isOwnKeys(x) ? [200, { ...x.json, old_verify_keys: { "ed25519:gone": { key: Buffer.alloc(32, 3).toString("base64").replace(/=+$/, "") } } }] : undefined),
    [["key-server.old-keys", /expired_ts is not an integer/]],
  ],
  [
    "notary answers without the notary's signature",
    (x) => {
      if (!isNotary(x) || !Array.isArray(x.json?.server_keys)) return undefined;
      const docs = (x.json.server_keys as Array<Record<string, any>>).map((d) => ({ ...d, signatures: { [d.server_name]: d.signatures[d.server_name] } }));
      return [200, { server_keys: docs }];
    },
    [["key-server.notary-peer", /lacks a valid signature of the notary/]],
  ],
  [
    "a notary answering a stale key for itself",
    (x) => {
      if (!isNotary(x) || !Array.isArray(x.json?.server_keys)) return undefined;
      const stale = { "ed25519:stale": { key: Buffer.alloc(32, 9).toString("base64").replace(/=+$/, "") } };
      return [200, { server_keys: (x.json.server_keys as Array<Record<string, any>>).map((d) => (d.server_name === net.names[0] ? { ...d, verify_keys: stale } : d)) }];
    },
    [["key-server.notary-self", /for itself: the document for hs1\.test lacks/]],
  ],
  [
    "a notary answering for a server that does not exist",
    (x) => (isNotary(x) && Array.isArray(x.json?.server_keys) ? [200, { server_keys: [...x.json.server_keys, { server_name: "conformance-nowhere.invalid", verify_keys: {} }] }] : undefined),
    [["key-server.notary-unreachable", /answered keys for a server that does not exist/]],
  ],
  ...[[1, 6], [7, 12]].map(([from, to]): [string, (x: ProxiedExchange) => [number, unknown] | undefined, Array<[string, RegExp]>] => [
    `send_join answers without the create event (room versions ${from}–${to})`,
    stripCreateFromSendJoin,
    joinChecks
      .filter((c) => { const v = /^joins\.round-trip\.v(\d+)$/.exec(c.id); return v !== null && Number(v[1]) >= from! && Number(v[1]) <= to!; })
      .map((c) => [c.id, /send_join's state lacks m\.room\.create/] as [string, RegExp]),
  ]),
  [
    "a 500 for federation bodies that are not JSON (a server that crashes on them)",
    (x) => {
      if (!x.path.startsWith("/_matrix/federation/") || x.requestBody.length === 0) return undefined;
      try {
        JSON.parse(x.requestBody.toString("utf8"));
        return undefined;
      } catch {
        return [500, { errcode: "M_UNKNOWN", error: "Internal server error" }];
      }
    },
    [
      ["robustness.random-bodies", /requests failed; first: .* answered 500/],
      ["transactions.malformed", /a transaction body that is not JSON: expected 400, got 500/],
    ],
    { robustnessRequests: 60 },
  ],
];

describe.skipIf(onPostgres)("each key-server, join and robustness check fails against a Parley behind a proxy that breaks what it serves", () => {
  for (const [what, rewrite, proofs, settings] of proxyProofs) {
    it(`${what}: ${proofs.map(([id]) => id).join(", ")} fail`, async () => {
      const proxy = await mutatingProxy(net.servers[0]!.url, rewrite);
      try {
        await expectFailures(proxy.url, proofs, settings);
      } finally {
        await proxy.close();
      }
    }, 30_000);
  }
});

it("every check of these groups has a proof above", () => {
  const proven = new Set([...flagProofs.flatMap(([, p]) => p), ...proxyProofs.flatMap(([, , p]) => p)].map(([id]) => id));
  expect([...checks.keys()].filter((id) => !proven.has(id))).toEqual([]);
});
