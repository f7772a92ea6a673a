// Every check of the conformance suite, in the order they run. One import and one spread per
// module: add yours on its own line so that merges stay trivial.
import type { Check } from "../check.ts";
import { joinChecks } from "./joins.ts";
import { keyServerChecks } from "./key-server.ts";
import { eduChecks } from "./edus.ts";
import { historyChecks } from "./history.ts";
import { membershipChecks } from "./membership.ts";
import { stateResolutionChecks } from "./state-resolution.ts";
import { requestAuthChecks } from "./request-auth.ts";
import { robustnessChecks } from "./robustness.ts";
import { transactionChecks } from "./transactions.ts";

export const allChecks: readonly Check[] = [
  ...keyServerChecks,
  ...requestAuthChecks,
  ...transactionChecks,
  ...joinChecks,
  ...robustnessChecks,
  ...membershipChecks,
  ...historyChecks,
  ...stateResolutionChecks,
  ...eduChecks,
];
