// Entry point of the bundled server (dist/parley.js): the same CLI as bin/parley.js.
import { main } from "../server/cli.ts";

process.exitCode = await main(process.argv.slice(2));
