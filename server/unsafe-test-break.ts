// Deliberate breakage for the conformance suite's own tests (tests/conformance-broken*.test.ts):
// each flag switches one of Parley's federation checks off, so the test can show that the
// conformance check watching it fails. Read from PARLEY_UNSAFE_TEST_BREAK (comma-separated) at each
// use, and honoured ONLY in a test run (NODE_ENV=test, which vitest sets): never configuration,
// never documented for operators.
export type UnsafeTestBreak =
  | "skip-request-auth" // inbound X-Matrix: any request passes (origin from the header, or "unauthenticated.invalid")
  | "skip-pdu-signature-check" // received PDUs: bad signatures accepted
  | "skip-content-hash-check" // received PDUs: a content hash mismatch no longer redacts
  | "skip-pdu-size-check" // received PDUs: the 65,536-byte limit not applied
  | "skip-pdu-auth-check" // persist path: events failing auth accepted
  | "skip-soft-fail" // persist path: no soft-fail against the current state
  | "no-transaction-dedupe" // inbound transactions: a repeated txnId processed again
  | "skip-join-rules" // make_join: a template for whoever asks, join rules ignored
  | "skip-room-version-check" // make_join: the joining server's room versions not compared
  // Rooms over federation (conformance/checks/membership.ts, history.ts, state-resolution.ts, edus.ts):
  | "omit-invite-room-state" // outbound invites: invite_room_state sent empty
  | "unsigned-invite-answer" // inbound invites: answered without our signature
  | "send-leave-not-persisted" // send_leave: answered {} but the leave is not placed
  | "send-knock-not-persisted" // send_knock: answered but the knock is not placed
  | "backfill-skips-from" // backfill: the `v` events themselves left out
  | "missing-events-ignore-earliest" // get_missing_events: the walk does not stop at earliest_events
  | "state-ids-current-state" // state_ids: the current state, not the state at the event
  | "event-auth-shallow" // event_auth: only the event's own auth events, not theirs
  | "backfill-ignores-history-visibility" // backfill: every event served whole, visibility ignored
  | "missing-events-ignores-history-visibility" // get_missing_events: every event served whole, visibility ignored
  | "state-res-last-writer-wins" // state resolution: each conflicted key takes its latest event by origin_server_ts
  | "drop-inbound-typing" // m.typing EDUs from other servers ignored
  | "drop-inbound-receipts" // m.receipt EDUs from other servers ignored
  | "drop-inbound-to-device" // m.direct_to_device EDUs from other servers ignored
  | "drop-inbound-device-list-updates" // m.device_list_update EDUs from other servers ignored
  | "drop-outbound-typing" // local typing not sent to other servers
  | "drop-outbound-receipts" // local read receipts not sent to other servers
  | "drop-outbound-to-device" // local to-device messages for other servers' users not sent
  | "drop-outbound-device-list-updates"; // local device changes not sent to other servers

export function unsafeTestBreak(flag: UnsafeTestBreak): boolean {
  const flags = process.env.PARLEY_UNSAFE_TEST_BREAK;
  if (!flags || process.env.NODE_ENV !== "test") return false;
  return flags.split(",").includes(flag);
}
