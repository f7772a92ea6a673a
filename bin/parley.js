#!/usr/bin/env node
// The `parley` command. Parley is written in TypeScript and runs through tsx's loader, so there is
// no build step between a clone and a running server.
import { register } from "tsx/esm/api";

register();
const { main } = await import("../server/cli.ts");
process.exitCode = await main(process.argv.slice(2));
