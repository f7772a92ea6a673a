#!/usr/bin/env node
// The `parley-chat` command: the terminal client (client/chat/). Like `parley`, it runs the
// TypeScript sources through tsx's loader, so there is no build step between a clone and a chat.
import { register } from "tsx/esm/api";

register();
const { main } = await import("../client/chat/app.ts");
process.exitCode = await main(process.argv.slice(2));
// The sync loop's sockets and timers must not keep a finished client alive.
process.exit();
