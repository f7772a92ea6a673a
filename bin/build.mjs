#!/usr/bin/env node
// Bundles the server into dist/parley.js (dependencies stay external), so a production start loads
// plain JavaScript: no TypeScript loader in memory, no transform at startup. `npm start` and the
// Docker image run the bundle; `bin/parley.js` runs the sources directly through tsx.
import { build } from "esbuild";

await build({
  entryPoints: ["bin/main.ts"],
  outfile: "dist/parley.js",
  bundle: true,
  platform: "node",
  format: "esm",
  target: "node20",
  packages: "external",
  sourcemap: "linked",
  logLevel: "warning",
});
