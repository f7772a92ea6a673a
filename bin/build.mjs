#!/usr/bin/env node
// Bundles the server into dist/parley.js (dependencies stay external), so a production start loads
// plain JavaScript: no TypeScript loader in memory, no transform at startup. `npm start` and the
// Docker image run the bundle; `bin/parley.js` runs the sources directly through tsx.
// Worker threads get their own bundle beside it: dist/pdu-checks-worker.js (federation/transport/pdu-checks.ts).
import { build } from "esbuild";

const outdir = process.argv[2] ?? "dist";

await build({
  entryPoints: {
    parley: "bin/main.ts",
    "pdu-checks-worker": "federation/transport/pdu-checks-worker.ts",
  },
  outdir,
  bundle: true,
  platform: "node",
  format: "esm",
  target: "node20",
  packages: "external",
  sourcemap: "linked",
  logLevel: "warning",
});
