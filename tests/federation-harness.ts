// Several Parley servers on loopback that federate with each other: each with its own database,
// named hs1.test, hs2.test, … and pinned to its port, reached over plain HTTP (federation_insecure).
import { createServer } from "node:net";
import { type TestServer, type TestServerOptions, startTestServer } from "./harness.ts";

/** A free TCP port on loopback (closed again before it is used; a race that loses only a retry). */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

export interface Network {
  servers: TestServer[];
  names: string[];
  destroy(): Promise<void>;
}

/** Starts `count` federating servers; `configFor(i)` adds configuration to server i. */
export async function startNetwork(
  count: number,
  options: { config?: (i: number) => Record<string, unknown> } & Omit<TestServerOptions, "config"> = {},
): Promise<Network> {
  const names = Array.from({ length: count }, (_, i) => `hs${i + 1}.test`);
  const ports: number[] = [];
  for (let i = 0; i < count; i++) ports.push(await freePort());
  const federationHosts = names.map((n, i) => `${n}=127.0.0.1:${ports[i]}`).join(",");
  const servers = await Promise.all(
    names.map((name, i) =>
      startTestServer({
        ...options,
        config: {
          server_name: name,
          port: ports[i],
          federation_hosts: federationHosts,
          federation_insecure: names.join(","),
          ...options.config?.(i),
        },
      }),
    ),
  );
  return {
    servers,
    names,
    async destroy() {
      await Promise.all(servers.map((s) => s.destroy()));
    },
  };
}
