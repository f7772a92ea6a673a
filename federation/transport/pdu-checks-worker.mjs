// Starts a PDU check worker from the TypeScript sources. A loader registered with tsx's
// `register()` (bin/parley.js) or by vitest does not reach worker threads, so the worker registers
// tsx itself (harmless when `--import tsx` already did), then loads the worker. The bundle
// (dist/parley.js) starts dist/pdu-checks-worker.js instead.
import { register } from "tsx/esm/api";

register();
await import("./pdu-checks-worker.ts");
