// The federation conformance suite (`parley conformance`, issue 14): what a check is, how it fails
// or skips, and what it is given.
//
// ── For whoever writes checks ───────────────────────────────────────────────────────────────────
// A check is a plain object `{ id, group, title, run(ctx) }`, exported from a module under
// conformance/checks/ and listed in conformance/checks/index.ts (a plain array: add your module's
// array there). `id` is stable and unique ("joins.invite-only-refused"), `group` is the issue's
// group name ("joins", "invites", "edus", ...), `title` one line for the summary.
//
// `run(ctx)` returns normally to PASS. It FAILS by throwing `fail("why")` (or any error: an
// unexpected exception is a failure whose reason is the error's message, so a check can never pass
// by crashing). It SKIPS by throwing `skip("why")`: only for what the target legitimately does not
// offer (a room version it does not support, a second server not given), never to hide a failure.
// The `expect*` helpers below throw `fail` with a readable reason. Every check gets a time limit
// (`Check.timeoutMs`, default 20 s); past it, it fails.
//
// What `ctx` gives (see CheckContext):
//   - `ctx.targets`: the servers under test (at least one), each with `url` (where we reach it),
//     `serverName` (read from its key endpoint), optional `sharedSecret`. `ctx.target` is the first.
//   - `ctx.peer` (conformance/peer.ts): the suite's own homeserver identity, `peer.serverName`,
//     reachable by the targets over plain HTTP on loopback. `peer.request(target, {...})` sends a
//     signed (X-Matrix) request; `peer.join(target, roomId, userId)` runs make_join/send_join and
//     returns a PeerRoom whose state the peer tracks; `room.build({type, sender, content,...})`
//     builds a hashed, signed PDU on that state; `peer.sendTransaction(target, pdus, edus)`;
//     `peer.waitFor(pred)` waits for what the targets send us (transactions, invites, requests).
//   - `ctx.user(target, label)` (conformance/client.ts): a fresh registered user on a target with a
//     tiny Client-Server client: createRoom, send, state, sync, join, invite, waitForEvent, ...
//     Each call registers a new user, so checks never share users or rooms.
//   - `ctx.signal`: aborted when the check times out (long waits should pass it on).
//
// Checks must be independent: each creates its own rooms and users, and never assumes another
// check ran before it. Checks must not need anything from the target beyond the spec's APIs and
// registration (shared-secret or open).
//
// ── Proof that no check passes vacuously (tests/conformance-broken.test.ts) ─────────────────────
// Each check must be seen to FAIL against a deliberately broken Parley. Two mechanisms:
//   1. `PARLEY_UNSAFE_TEST_BREAK=flag1,flag2` in the environment of a Parley process: honoured only
//      when NODE_ENV=test (vitest sets it), never documented as configuration; grep for
//      PARLEY_UNSAFE_TEST_BREAK to find every flag (server/unsafe-test-break.ts lists them). Flags
//      are read at each use, so a test sets them around a run with `withUnsafeTestBreak(flags, fn)`
//      (tests/conformance-helpers.ts) against servers of `startConformanceNetwork()`. Add a flag
//      there when your check needs one, and make its branch in Parley as small as one `if`.
//   2. A mutating proxy in front of a healthy Parley (tests/conformance-helpers.ts `mutatingProxy`):
//      rewrites answers (e.g. the key endpoint's signature) for checks about what a server serves.
// Then `runChecks([yourCheck], [url])` against that target must report "fail" for your check, with
// the reason it exists (tests/conformance-broken.test.ts).

export type Outcome = "pass" | "fail" | "skip";

export interface Target {
  /** The base URL the suite reaches the server at, e.g. http://127.0.0.1:8008 (no trailing slash). */
  url: string;
  /** The server name, as the server's key endpoint states it. */
  serverName: string;
  /** `registration_shared_secret` of the target, if given: users are registered through it. */
  sharedSecret?: string;
}

export interface CheckContext {
  targets: readonly Target[];
  /** `targets[0]`. */
  target: Target;
  peer: import("./peer.ts").Peer;
  /** A freshly registered user on `target` (default: ctx.target); `label` becomes part of the localpart. */
  user(label?: string, target?: Target): Promise<import("./client.ts").ClientUser>;
  signal: AbortSignal;
  /** Sizes the operator chose (`parley conformance --robustness-requests N`). */
  settings: Settings;
}

export interface Settings {
  /** How many random bodies the robustness check sends (the issue's figure: 1,000). */
  robustnessRequests: number;
}

export interface Check {
  id: string;
  group: string;
  title: string;
  /** Default 20 000 ms. */
  timeoutMs?: number;
  run(ctx: CheckContext): Promise<void>;
}

export class CheckFailure extends Error {
  override name = "CheckFailure";
}

export class CheckSkipped extends Error {
  override name = "CheckSkipped";
}

/** Throw to fail the running check: `throw fail("...")` or just `fail("...")`. */
export function fail(reason: string): never {
  throw new CheckFailure(reason);
}

/** Throw to skip the running check: only for what the target legitimately does not offer. */
export function skip(reason: string): never {
  throw new CheckSkipped(reason);
}

export function expect(condition: unknown, reason: string): asserts condition {
  if (!condition) fail(reason);
}

/** A short, safe rendering of a value for a failure reason (never a whole response). */
export function show(value: unknown, max = 300): string {
  let text: string;
  try {
    text = typeof value === "string" ? value : JSON.stringify(value);
  } catch {
    text = String(value);
  }
  if (text === undefined) text = String(value);
  return text.length > max ? `${text.slice(0, max)}…` : text;
}

export interface HttpAnswer {
  status: number;
  /** The parsed JSON body, undefined when the body is not JSON. */
  json: any;
  text: string;
}

/** Fails unless the answer has `status` (and, if given, that errcode). */
export function expectStatus(res: HttpAnswer, status: number, what: string, errcode?: string): void {
  if (res.status !== status) fail(`${what}: expected ${status}${errcode ? ` ${errcode}` : ""}, got ${res.status} ${show(res.json ?? res.text)}`);
  if (errcode !== undefined && res.json?.errcode !== errcode) {
    fail(`${what}: expected errcode ${errcode}, got ${show(res.json?.errcode ?? res.text)}`);
  }
}

/** Polls `probe` until it returns something other than undefined, or fails with `what` after `timeoutMs`. */
export async function eventually<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 10_000, intervalMs = 100): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) fail(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

export interface CheckResult {
  id: string;
  group: string;
  title: string;
  outcome: Outcome;
  /** Why it failed or was skipped; absent for a pass. */
  reason?: string;
  durationMs: number;
}
