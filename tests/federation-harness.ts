// Several Parley servers on loopback that federate with each other: each with its own database,
// named hs1.test, hs2.test, … and pinned to its port, reached over plain HTTP (federation_insecure).
import { mkdtemp, rm } from "node:fs/promises";
import { freePort } from "./free-port.ts";
import { tmpdir } from "node:os";
import path from "node:path";
import { type TestServer, type TestServerOptions, createTestDatabase, startTestServer } from "./harness.ts";

export { freePort };

export interface Network {
  servers: TestServer[];
  names: string[];
  /** Stops server `i` (keeping its data) and starts it again on the same port and data; `persistent` networks only. */
  restart(i: number, between?: () => Promise<void>): Promise<TestServer>;
  /** Stops server `i`, keeping its data, until `start(i)`; `persistent` networks only. */
  stop(i: number): Promise<void>;
  start(i: number): Promise<TestServer>;
  destroy(): Promise<void>;
}

/** Starts `count` federating servers; `configFor(i)` adds configuration to server i. */
export async function startNetwork(
  count: number,
  options: {
    config?: (i: number) => Record<string, unknown>;
    /**
     * Servers kept on disk with their own data directory and database, so they can be stopped and
     * started again: all (`true`) or those listed by index. An embedded database on disk is much
     * slower to create than one in memory.
     */
    persistent?: boolean | readonly number[];
  } & Omit<TestServerOptions, "config"> = {},
): Promise<Network> {
  const { persistent, ...serverOptions } = options;
  const names = Array.from({ length: count }, (_, i) => `hs${i + 1}.test`);
  const ports: number[] = [];
  for (let i = 0; i < count; i++) ports.push(await freePort());
  const federationHosts = names.map((n, i) => `${n}=127.0.0.1:${ports[i]}`).join(",");
  const kept = (i: number) => persistent === true || (Array.isArray(persistent) && persistent.includes(i));
  const storage = await Promise.all(
    names.map(async (_, i) =>
      kept(i) ? { dataDir: await mkdtemp(path.join(tmpdir(), "parley-net-")), database: await createTestDatabase() } : undefined,
    ),
  );
  const start = (i: number) =>
    startTestServer({
      ...serverOptions,
      ...storage[i],
      config: {
        server_name: names[i],
        port: ports[i],
        federation_hosts: federationHosts,
        federation_insecure: names.join(","),
        ...options.config?.(i),
      },
    });
  const servers = await Promise.all(names.map((_, i) => start(i)));
  const stopped = new Set<number>();
  const network: Network = {
    servers,
    names,
    async stop(i) {
      if (!storage[i]) throw new Error(`server ${i} is not persistent: it cannot be stopped and started again`);
      await servers[i]!.stop();
      stopped.add(i);
    },
    async start(i) {
      servers[i] = await start(i);
      stopped.delete(i);
      return servers[i]!;
    },
    async restart(i, between) {
      await network.stop(i);
      await between?.();
      return network.start(i);
    },
    async destroy() {
      await Promise.all(
        servers.map(async (s, i) => {
          const kept = storage[i];
          if (!kept) return s.destroy();
          if (!stopped.has(i)) await s.stop();
          await kept.database.drop();
          await rm(kept.dataDir, { recursive: true, force: true });
        }),
      );
    },
  };
  return network;
}
