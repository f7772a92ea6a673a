// The federation conformance suite (conformance/, `parley conformance`) against two healthy Parley
// servers: every check passes. This is CI running the suite against a Parley network (issue 14).
// tests/conformance-broken*.test.ts show each check fails against a deliberately broken Parley,
// so none passes vacuously.
//
// One test per group (the checks of a group run one after the other, as `parley conformance`
// runs them), all against the same two servers. The robustness check sends 200 random bodies here
// instead of the command's 1,000, to stay within a test's time (1,000 took 33 s on the loaded
// 2-core CI machine; the check is the same).
import { randomBytes } from "node:crypto";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { PassThrough } from "node:stream";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Check } from "../conformance/check.ts";
import { allChecks } from "../conformance/checks/index.ts";
import { conformanceMain, formatSummary } from "../conformance/run.ts";
import { signingKeyFromSeed } from "../federation/protocol/signing.ts";
import { runChecks, startConformanceNetwork } from "./conformance-helpers.ts";
import type { Network } from "./federation-harness.ts";

let net: Network;

beforeAll(async () => {
  net = await startConformanceNetwork(2);
  // A retired key, as `parley admin rotate-signing-key` leaves one, so old_verify_keys is checked.
  const old = signingKeyFromSeed(randomBytes(32), "ed25519:retired");
  await net.servers[0]!.services.federation.ownOldKeys.retire(old.keyId, old.publicKey, Date.now() - 60_000);
});

afterAll(async () => {
  await net?.destroy();
});

/** The checks in batches of at most three of one group, so each test stays well within its time. */
function batches(): Array<[string, Check[]]> {
  const byGroup = new Map<string, Check[]>();
  for (const c of allChecks) byGroup.set(c.group, [...(byGroup.get(c.group) ?? []), c]);
  const out: Array<[string, Check[]]> = [];
  for (const [group, checks] of byGroup) {
    for (let i = 0; i < checks.length; i += 3) {
      const part = checks.slice(i, i + 3);
      out.push([`${group} (${part.map((c) => c.id.slice(group.length + 1)).join(", ")})`, part]);
    }
  }
  return out;
}

describe("the conformance suite against a Parley network", () => {
  for (const [name, checks] of batches()) {
    it(`passes the checks of ${name}`, async () => {
      const report = await runChecks(checks, net.servers.map((s) => s.url), { robustnessRequests: 200 });
      const notPassed = report.results.filter((r) => r.outcome !== "pass");
      expect(notPassed, formatSummary(report)).toEqual([]);
      expect(report.results.map((r) => r.id)).toEqual(checks.map((c) => c.id));
    }, 60_000);
  }
});

describe("parley conformance (the command)", () => {
  it("prints the summary, writes the JSON report with every check's result and duration, and exits 0 when none failed", async () => {
    const dir = await mkdtemp(path.join(tmpdir(), "parley-conformance-"));
    const report = path.join(dir, "report.json");
    const out = new PassThrough();
    let text = "";
    out.on("data", (c: Buffer) => (text += c.toString()));
    try {
      const code = await conformanceMain(
        ["--server", net.servers[0]!.url, "--peer-port", "0", "--only", "key-server.format", "--only", "request-auth.missing", "--report", report],
        out as unknown as NodeJS.WriteStream,
        new PassThrough() as unknown as NodeJS.WriteStream,
      );
      expect(code, text).toBe(0);
      expect(text).toMatch(/PASS key-server\.format \(\d+ ms\)/);
      expect(text).toMatch(/2 passed, 0 failed, 0 skipped/);
      const json = JSON.parse(await readFile(report, "utf8"));
      expect(json.targets).toEqual([{ url: net.servers[0]!.url, serverName: "hs1.test" }]);
      expect(json.counts).toEqual({ pass: 2, fail: 0, skip: 0 });
      expect(json.results.map((r: { id: string; outcome: string }) => [r.id, r.outcome])).toEqual([
        ["key-server.format", "pass"],
        ["request-auth.missing", "pass"],
      ]);
      for (const r of json.results) expect(r.durationMs).toBeGreaterThanOrEqual(0);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("exits 2 without a server to check", async () => {
    const err = new PassThrough();
    let text = "";
    err.on("data", (c: Buffer) => (text += c.toString()));
    expect(await conformanceMain([], new PassThrough() as unknown as NodeJS.WriteStream, err as unknown as NodeJS.WriteStream)).toBe(2);
    expect(text).toMatch(/at least one --server/);
  });
});
