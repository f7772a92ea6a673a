// Every check of the conformance suite, in the order they run. One import and one spread per
// module: add yours on its own line so that merges stay trivial.
import type { Check } from "../check.ts";
import { keyServerChecks } from "./key-server.ts";

export const allChecks: readonly Check[] = [
  ...keyServerChecks,
];
