// A port for a test server to listen on later, named before it listens (a federation test pins a
// server's name to its port). Asking the kernel for port 0 and closing it again hands out a port
// from the ephemeral range, which any outgoing connection of the machine may take before the
// server listens on it (CI saw EADDRINUSE). So the port is drawn at random below that range
// (Linux starts it at 32768), checked free by listening on it, and never handed out twice by one
// process. Ports the reference Synapse uses (18008, 18009, 18448, 18449) are left alone.
import { createServer } from "node:net";

const LOW = 20_000;
const HIGH = 32_000;
const reserved = new Set([18008, 18009, 18448, 18449]);
const handedOut = new Set<number>();

function canListen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once("error", () => resolve(false));
    server.listen({ port, host: "127.0.0.1", exclusive: true }, () => server.close(() => resolve(true)));
  });
}

/** A free TCP port on 127.0.0.1, outside the kernel's ephemeral range. */
export async function freePort(): Promise<number> {
  for (let attempt = 0; attempt < 200; attempt++) {
    const port = LOW + Math.floor(Math.random() * (HIGH - LOW));
    if (reserved.has(port) || handedOut.has(port)) continue;
    if (await canListen(port)) {
      handedOut.add(port);
      return port;
    }
  }
  throw new Error(`no free port between ${LOW} and ${HIGH}`);
}
