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
  | "skip-room-version-check"; // make_join: the joining server's room versions not compared

export function unsafeTestBreak(flag: UnsafeTestBreak): boolean {
  const flags = process.env.PARLEY_UNSAFE_TEST_BREAK;
  if (!flags || process.env.NODE_ENV !== "test") return false;
  return flags.split(",").includes(flag);
}
