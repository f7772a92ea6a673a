// Proof that no check of the conformance suite's rooms half passes vacuously: each check, run
// against a Parley with one thing deliberately broken (PARLEY_UNSAFE_TEST_BREAK, test runs only),
// fails, and for the reason it exists. tests/conformance.test.ts shows the same checks pass
// against a healthy Parley.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Check } from "../conformance/check.ts";
import { eduChecks } from "../conformance/checks/edus.ts";
import { historyChecks } from "../conformance/checks/history.ts";
import { membershipChecks } from "../conformance/checks/membership.ts";
import { stateResolutionChecks } from "../conformance/checks/state-resolution.ts";
import type { UnsafeTestBreak } from "../server/unsafe-test-break.ts";
import { resultOf, runChecks, startConformanceNetwork, withUnsafeTestBreak } from "./conformance-helpers.ts";
import type { Network } from "./federation-harness.ts";

const checks = new Map<string, Check>([...membershipChecks, ...historyChecks, ...stateResolutionChecks, ...eduChecks].map((c) => [c.id, c]));

/** Each check, the breakage it must catch, and what its failure says. */
const proofs: Array<[id: string, flag: UnsafeTestBreak, reason: RegExp]> = [
  ["invites.outbound", "omit-invite-room-state", /invite_room_state lacks m\.room\.join_rules/],
  ["invites.inbound", "unsigned-invite-answer", /carries no signature of/],
  ["backfill.history", "backfill-skips-from", /GET \/backfill.*missing \["\$/],
  ["get_missing_events.walk", "missing-events-ignore-earliest", /limit 10\): missing \[\], unexpected \["\$/],
  ["state_ids.at-event", "state-ids-current-state", /lacks the first topic|holds the second topic/],
  ["event_auth.chain", "event-auth-shallow", /auth_chain against the events' own auth_events: missing \["\$/],
  ["history-visibility.backfill-joined", "backfill-ignores-history-visibility", /backfill served the content of messages sent before/],
  ["history-visibility.missing-events-joined", "missing-events-ignores-history-visibility", /get_missing_events served the content of messages sent before/],
  ["state-resolution.ban-against-power-levels", "state-res-last-writer-wins", /membership is ban: the spec's answer is join/],
  ["state-resolution.topic-against-power-levels", "state-res-last-writer-wins", /the topic is carol's: the spec's answer is "original"/],
];

/**
 * The checks that fail by waiting in vain (10 s each): run in pairs, both flags in force for both.
 * The flags switch off disjoint paths (one EDU type, one direction, one endpoint each), so
 * none can make another's check fail, and each failure names what it waited for.
 */
const waitingProofs: Array<[id: string, flag: UnsafeTestBreak, reason: RegExp]> = [
  ["leaves.make-send-leave", "send-leave-not-persisted", /timed out .* membership leave/],
  ["knocks.make-send-knock", "send-knock-not-persisted", /timed out .* membership knock/],
  ["edus.typing-inbound", "drop-inbound-typing", /timed out .* typing/],
  ["edus.receipts-inbound", "drop-inbound-receipts", /timed out .* read receipt/],
  ["edus.to-device-inbound", "drop-inbound-to-device", /timed out .* to-device message/],
  ["edus.device-list-inbound", "drop-inbound-device-list-updates", /timed out .* device_lists\.changed/],
  ["edus.typing-outbound", "drop-outbound-typing", /timed out .* m\.typing/],
  ["edus.receipts-outbound", "drop-outbound-receipts", /timed out .* m\.receipt/],
  ["edus.to-device-outbound", "drop-outbound-to-device", /timed out .* m\.direct_to_device/],
  ["edus.device-list-outbound", "drop-outbound-device-list-updates", /timed out .* m\.device_list_update/],
];

// The proofs break Parley's federation checks, not its storage, and the suite runs whole against
// Parley on both databases in tests/conformance.test.ts: run once, on the PGlite run, to keep CI short.
const onPostgres = Boolean(process.env.DATABASE_URL);
let network: Network;
beforeAll(async () => {
  if (onPostgres) return;
  network = await startConformanceNetwork(1);
});
afterAll(async () => {
  await network?.destroy();
});

describe.skipIf(onPostgres)("each rooms check fails against a Parley broken where it looks", () => {
  it("has a proof for every check of the rooms half", () => {
    expect(new Set([...proofs, ...waitingProofs].map(([id]) => id))).toEqual(new Set(checks.keys()));
  });

  for (const [id, flag, reason] of proofs) {
    it(`${id} fails with ${flag}`, async () => {
      const report = await withUnsafeTestBreak([flag], () => runChecks([checks.get(id)!], [network.servers[0]!.url]));
      const result = resultOf(report, id);
      expect(result.outcome, result.reason).toBe("fail");
      expect(result.reason).toMatch(reason);
    });
  }

  // Two at a time: more at once on a loaded 2-core machine made a check's set-up eat its time limit.
  for (let i = 0; i < waitingProofs.length; i += 2) {
    const pair = waitingProofs.slice(i, i + 2);
    it(`${pair.map(([id, flag]) => `${id} fails with ${flag}`).join("; ")}`, async () => {
      const reports = await withUnsafeTestBreak(
        pair.map(([, flag]) => flag),
        () => Promise.all(pair.map(([id]) => runChecks([checks.get(id)!], [network.servers[0]!.url]))),
      );
      for (const [j, [id, , reason]] of pair.entries()) {
        const result = resultOf(reports[j]!, id);
        expect(result.outcome, `${id}: ${result.reason}`).toBe("fail");
        expect(result.reason, id).toMatch(reason);
      }
    }, 70_000);
  }
});
