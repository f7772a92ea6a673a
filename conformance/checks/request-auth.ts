// Request authentication: requests without a valid X-Matrix signature of their origin are refused
// with 401. Each check first makes sure a correctly signed request to the same endpoint succeeds,
// so a server refusing everything cannot pass.
// https://spec.matrix.org/latest/server-server-api/#request-authentication
import { randomBytes } from "node:crypto";
import { signingKeyFromSeed } from "../../federation/protocol/signing.ts";
import { type Check, type CheckContext, expectStatus, fail, show } from "../check.ts";
import type { PeerRequest } from "../peer.ts";

const group = "request-auth";

/** An authenticated GET (no body) and an authenticated PUT (body covered by the signature). */
function probes(): PeerRequest[] {
  const txn = `conf-auth-${Date.now()}-${randomBytes(3).toString("hex")}`;
  return [
    { method: "GET", path: "/_matrix/federation/v1/publicRooms?limit=1" },
    { method: "PUT", path: `/_matrix/federation/v1/send/${txn}`, body: { origin: "", origin_server_ts: Date.now(), pdus: [], edus: [] } },
  ];
}

async function controlThenRefused(ctx: CheckContext, what: string, tamper: (req: PeerRequest) => PeerRequest): Promise<void> {
  for (const probe of probes()) {
    if (probe.body) (probe.body as { origin: string }).origin = ctx.peer.serverName;
    const label = `${probe.method} ${probe.path.split("?")[0]}`;
    // A fresh transaction ID each time, so the refused request is not answered from a cache.
    const fresh = (p: PeerRequest): PeerRequest => (p.method === "PUT" ? { ...p, path: `${p.path}-${randomBytes(2).toString("hex")}` } : p);
    const good = await ctx.peer.request(ctx.target, fresh(probe));
    expectStatus(good, 200, `${label} correctly signed (the control)`);
    const bad = await ctx.peer.request(ctx.target, tamper(fresh(probe)));
    if (bad.status !== 401) fail(`${label} with ${what}: expected 401, got ${bad.status} ${show(bad.json ?? bad.text)}`);
  }
}

const missing: Check = {
  id: "request-auth.missing",
  group,
  title: "a request without an Authorization header is refused with 401",
  run: (ctx) => controlThenRefused(ctx, "no Authorization header", (r) => ({ ...r, authorization: null })),
};

const malformed: Check = {
  id: "request-auth.malformed",
  group,
  title: "malformed X-Matrix headers (garbage, missing sig, another scheme) are refused with 401",
  async run(ctx) {
    const name = ctx.peer.serverName;
    const variants = [
      "X-Matrix garbage",
      `X-Matrix origin="${name}",key="${ctx.peer.key.keyId}"`,
      `Bearer ${randomBytes(8).toString("hex")}`,
      `X-Matrix origin="${name}",destination="${ctx.target.serverName}",key="${ctx.peer.key.keyId}",sig="not base64!"`,
    ];
    for (const header of variants) await controlThenRefused(ctx, `Authorization ${show(header, 60)}`, (r) => ({ ...r, authorization: header }));
  },
};

const wrongKey: Check = {
  id: "request-auth.wrong-signature",
  group,
  title: "a request signed with a key that is not the origin's (under the origin's key ID) is refused with 401",
  async run(ctx) {
    const forger = signingKeyFromSeed(randomBytes(32), ctx.peer.key.keyId);
    await controlThenRefused(ctx, "a forged signature", (r) => ({ ...r, authorization: { key: forger } }));
  },
};

const unknownKey: Check = {
  id: "request-auth.unknown-key",
  group,
  title: "a request signed with a key ID the origin does not publish is refused with 401",
  async run(ctx) {
    const other = signingKeyFromSeed(randomBytes(32), "ed25519:conformanceunknown");
    await controlThenRefused(ctx, "a key the origin does not publish", (r) => ({ ...r, authorization: { key: other } }));
  },
};

const tamperedBody: Check = {
  id: "request-auth.tampered-body",
  group,
  title: "a request whose body differs from the signed content is refused with 401",
  async run(ctx) {
    const probe = probes()[1]!;
    const path = probe.path;
    const body = { origin: ctx.peer.serverName, origin_server_ts: Date.now(), pdus: [], edus: [] };
    const good = await ctx.peer.request(ctx.target, { method: "PUT", path: `${path}-a`, body });
    expectStatus(good, 200, "PUT /send correctly signed (the control)");
    const bad = await ctx.peer.request(ctx.target, {
      method: "PUT",
      path: `${path}-b`,
      body: { ...body, origin_server_ts: body.origin_server_ts + 1 },
      authorization: { content: body, uri: `${path}-b` },
    });
    if (bad.status !== 401) fail(`PUT /send with a body other than the signed one: expected 401, got ${bad.status} ${show(bad.json ?? bad.text)}`);
  },
};

const wrongDestination: Check = {
  id: "request-auth.wrong-destination",
  group,
  title: "a request signed for another destination is refused with 401",
  run: (ctx) => controlThenRefused(ctx, "destination another server", (r) => ({ ...r, authorization: { destination: "conformance-elsewhere.invalid" } })),
};

const replayed: Check = {
  id: "request-auth.replayed",
  group,
  title: "a signature captured from one request is refused on another (other path, other method)",
  async run(ctx) {
    const peer = ctx.peer;
    const original = "/_matrix/federation/v1/publicRooms?limit=1";
    const header = peer.authorization(ctx.target.serverName, "GET", original);
    const good = await peer.request(ctx.target, { method: "GET", path: original, authorization: header });
    expectStatus(good, 200, "the original request (the control)");
    const otherPath = await peer.request(ctx.target, { method: "GET", path: "/_matrix/federation/v1/publicRooms?limit=2", authorization: header });
    if (otherPath.status !== 401) fail(`the signature replayed on another query string: expected 401, got ${otherPath.status} ${show(otherPath.json ?? otherPath.text)}`);
    const otherMethod = await peer.request(ctx.target, { method: "POST", path: original, body: {}, authorization: header });
    if (otherMethod.status !== 401) fail(`the signature replayed with another method and a body: expected 401, got ${otherMethod.status} ${show(otherMethod.json ?? otherMethod.text)}`);
  },
};

const wrongOrigin: Check = {
  id: "request-auth.impersonation",
  group,
  title: "a request claiming the target's own name, or a third server's, with our signature is refused with 401",
  async run(ctx) {
    await controlThenRefused(ctx, "origin = the target itself", (r) => ({ ...r, authorization: { origin: ctx.target.serverName } }));
    const third = ctx.targets[1];
    if (third) await controlThenRefused(ctx, `origin = ${third.serverName}`, (r) => ({ ...r, authorization: { origin: third.serverName } }));
  },
};

export const requestAuthChecks: readonly Check[] = [missing, malformed, wrongKey, unknownKey, tamperedBody, wrongDestination, replayed, wrongOrigin];
