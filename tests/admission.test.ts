// Admission control (server/http/admission.ts): ceilings on the long-polls and on the other requests
// one process serves at once, in all and per user. Beyond one: 429 M_LIMIT_EXCEEDED with
// retry_after_ms, while what is admitted (and /versions) keeps working; slots come back when a
// request ends, and when its client goes away.
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { type TestServer, request, startTestServer } from "./harness.ts";
import { type TestUser, registerUser } from "./accounts-helpers.ts";
import { createRoom, send, sync } from "./sync-helpers.ts";
import { route } from "../server/http/route.ts";

let server: TestServer;
const held: AbortController[] = [];
afterEach(() => {
  for (const c of held.splice(0)) c.abort();
});

/** Guests: no password to hash, so a test has several users at little cost. */
async function guest(): Promise<TestUser> {
  const res = await request(server.url, "POST", "/_matrix/client/v3/register?kind=guest", { body: {} });
  expect(res.status, JSON.stringify(res.json)).toBe(200);
  return { userId: res.json.user_id, accessToken: res.json.access_token, deviceId: res.json.device_id, password: "" };
}

/** A long-poll of `user` from `since`, left waiting; `done` is its status once it ends (-1: aborted). */
function longPoll(user: TestUser, since: string): { abort: () => void; done: Promise<number> } {
  const controller = new AbortController();
  held.push(controller);
  const done = fetch(`${server.url}${syncPath(since, 20_000)}`, {
    headers: { Authorization: `Bearer ${user.accessToken}` },
    signal: controller.signal,
  }).then(
    async (res) => {
      await res.text();
      return res.status;
    },
    () => -1,
  );
  return { abort: () => controller.abort(), done };
}

const syncPath = (since: string, timeout: number) => `/_matrix/client/v3/sync?since=${encodeURIComponent(since)}&timeout=${timeout}`;
const since = async (user: TestUser): Promise<string> => (await sync(server.url, user, { timeout: 0 })).next_batch;

async function until(what: string, condition: () => boolean): Promise<void> {
  const started = Date.now();
  while (!condition()) {
    if (Date.now() - started > 5_000) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

const waiting = (n: number) => until(`${n} waiting long-polls`, () => server.services.notifier.waiting === n);

function expectRefused(res: { status: number; json: any; headers: Headers }, minMs: number) {
  expect(res.status, JSON.stringify(res.json)).toBe(429);
  expect(res.json.errcode).toBe("M_LIMIT_EXCEEDED");
  expect(res.json.retry_after_ms).toBeGreaterThanOrEqual(minMs);
  expect(res.json.retry_after_ms).toBeLessThan(minMs * 2);
  expect(Number(res.headers.get("retry-after"))).toBeGreaterThanOrEqual(1);
}

describe("long-poll ceilings", () => {
  beforeAll(async () => {
    server = await startTestServer({ config: { max_long_polls: 3, max_long_polls_per_user: 2, allow_guest_access: true } });
  });
  afterAll(() => server.destroy());

  it("refuses long-polls beyond the user's and the process's ceilings, while /versions, sends and other users' requests work", async () => {
    const [a, b, c] = [await guest(), await guest(), await guest()];
    const [aSince, bSince, cSince] = [await since(a), await since(b), await since(c)];
    const polls = [longPoll(a, aSince), longPoll(a, aSince)];
    await waiting(2);
    // a has its two: a third is refused, and b (another user) is admitted.
    expectRefused(await request(server.url, "GET", syncPath(aSince, 20_000), { token: a.accessToken }), 2000);
    polls.push(longPoll(b, bSince));
    await waiting(3);
    // The process has its three: c is refused, even with a short timeout, even with a bad token
    // (the process-wide check comes before authentication: a refusal costs no database read).
    expectRefused(await request(server.url, "GET", syncPath(cSince, 1000), { token: c.accessToken }), 2000);
    expect((await request(server.url, "GET", syncPath(cSince, 20_000), { token: "nonsense" })).status).toBe(429);

    // Everything else still works.
    expect((await request(server.url, "GET", "/_matrix/client/versions")).status).toBe(200);
    expect((await request(server.url, "GET", "/health")).status).toBe(200);
    const sender = await registerUser(server.url, "sender");
    const roomId = await createRoom(server.url, sender);
    await send(server.url, sender, roomId);
    // Syncs that do not wait (no timeout, no token, full state) are requests, not long-polls.
    expect((await request(server.url, "GET", syncPath(cSince, 0), { token: c.accessToken })).status).toBe(200);
    expect((await request(server.url, "GET", "/_matrix/client/v3/sync?timeout=20000", { token: c.accessToken })).status).toBe(200);
    expect((await request(server.url, "GET", `${syncPath(cSince, 20_000)}&full_state=true`, { token: c.accessToken })).status).toBe(200);
    expect(server.services.notifier.waiting).toBe(3);

    for (const p of polls) p.abort();
    await waiting(0);
  });

  it("gives an aborted long-poll's slot back, and a woken one's, round after round", async () => {
    const [a, b] = [await guest(), await guest()];
    const [aSince, bSince] = [await since(a), await since(b)];
    for (let round = 0; round < 3; round++) {
      const polls = [longPoll(a, aSince), longPoll(a, aSince), longPoll(b, bSince)];
      await waiting(3);
      expectRefused(await request(server.url, "GET", syncPath(bSince, 20_000), { token: b.accessToken }), 2000);
      for (const p of polls) p.abort();
      expect(await Promise.all(polls.map((p) => p.done))).toEqual([-1, -1, -1]);
      await waiting(0);
    }
    // Woken long-polls answer and give their slots back too.
    const woken = [longPoll(a, aSince), longPoll(a, aSince), longPoll(b, bSince)];
    await waiting(3);
    const waker = await registerUser(server.url, "waker");
    const guestAccess = { type: "m.room.guest_access", state_key: "", content: { guest_access: "can_join" } };
    const room = await createRoom(server.url, waker, { preset: "public_chat", initial_state: [guestAccess] });
    for (const u of [a, b]) expect((await request(server.url, "POST", `/_matrix/client/v3/join/${encodeURIComponent(room)}`, { token: u.accessToken, body: {} })).status).toBe(200);
    expect(await Promise.all(woken.map((p) => p.done))).toEqual([200, 200, 200]);
    const polls = [longPoll(a, await since(a)), longPoll(a, await since(a)), longPoll(b, await since(b))];
    await waiting(3);
    for (const p of polls) p.abort();
    await waiting(0);
  });
});

describe("in-flight request ceilings", () => {
  /** A route that holds its requests until the test lets them go. */
  const gates: Array<() => void> = [];
  let entered = 0;
  const block = route({
    method: "GET",
    path: "/_test/block",
    auth: "user",
    allowGuests: true,
    async handler() {
      entered++;
      await new Promise<void>((resolve) => gates.push(resolve));
      return {};
    },
  });
  const letGo = () => gates.splice(0).forEach((g) => g());
  const probe = (user: TestUser) => request(server.url, "GET", "/_matrix/client/v3/capabilities", { token: user.accessToken });

  beforeAll(async () => {
    server = await startTestServer({
      config: { max_in_flight_requests: 2, max_in_flight_requests_per_user: 1, allow_guest_access: true },
      extraRoutes: [block],
    });
  });
  afterAll(async () => {
    letGo();
    await server.destroy();
  });

  it("refuses requests beyond the user's and the process's ceilings, but not exempt ones nor long-polls", async () => {
    const [a, b, c] = [await guest(), await guest(), await guest()];
    const cSince = await since(c);
    const start = entered;
    const blocked = [request(server.url, "GET", "/_test/block", { token: a.accessToken })];
    await until("a's request in the handler", () => entered === start + 1);
    // a has its one: a's next is refused, b's admitted.
    expectRefused(await probe(a), 500);
    blocked.push(request(server.url, "GET", "/_test/block", { token: b.accessToken }));
    await until("b's request in the handler", () => entered === start + 2);
    // The process has its two: c is refused, and so is an unauthenticated login.
    expectRefused(await probe(c), 500);
    expectRefused(await request(server.url, "POST", "/_matrix/client/v3/login", { body: {} }), 500);
    // Exempt: /versions, /health, CORS preflights. Long-polls have their own ceiling.
    expect((await request(server.url, "GET", "/_matrix/client/versions")).status).toBe(200);
    expect((await request(server.url, "GET", "/health")).status).toBe(200);
    expect((await request(server.url, "OPTIONS", "/_matrix/client/v3/capabilities")).status).toBe(204);
    const poll = longPoll(c, cSince);
    await waiting(1);
    poll.abort();
    await waiting(0);

    letGo();
    expect((await Promise.all(blocked)).map((r) => r.status)).toEqual([200, 200]);
    for (const u of [a, b, c]) expect((await probe(u)).status).toBe(200);
  });

  it("counts an aborted request until its handler is done, then gives its slot back", async () => {
    const a = await guest();
    for (let round = 0; round < 3; round++) {
      const controller = new AbortController();
      const start = entered;
      const aborted = fetch(`${server.url}/_test/block`, { headers: { Authorization: `Bearer ${a.accessToken}` }, signal: controller.signal }).then(
        () => "answered",
        () => "aborted",
      );
      await until("the request in the handler", () => entered === start + 1);
      controller.abort();
      expect(await aborted).toBe("aborted");
      // The server is still working on it: it still counts.
      expectRefused(await probe(a), 500);
      letGo();
      let status = 0;
      for (let i = 0; i < 100 && status !== 200; i++) {
        status = (await probe(a)).status;
        if (status !== 200) await new Promise((r) => setTimeout(r, 10));
      }
      expect(status).toBe(200);
    }
  });
});
