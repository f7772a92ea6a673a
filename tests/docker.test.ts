// The Docker files cannot be built on these machines (no Docker engine), so this keeps them
// consistent with the code: every variable they set is a real configuration key, and what the image
// copies and runs exists. `docker-compose -f docker/compose.yaml config -q` checks the syntax.
import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import YAML from "yaml";
import { describe, expect, it } from "vitest";
import { configKeys, resolveConfig } from "../server/config.ts";

const root = path.join(import.meta.dirname, "..");
const compose = YAML.parse(readFileSync(path.join(root, "docker/compose.yaml"), "utf8"), { merge: true });
const dockerfile = readFileSync(path.join(root, "docker/Dockerfile"), "utf8");
const knownEnv = new Set(Object.values(configKeys).map((k) => k.env));

describe("docker/", () => {
  it("runs three homeservers, each with its own PostgreSQL, under valid configurations", () => {
    const parleys = Object.entries<any>(compose.services).filter(([, s]) => s.build);
    expect(parleys).toHaveLength(3);
    const dbs = new Set<string>();
    for (const [name, service] of parleys) {
      const env = service.environment as Record<string, string>;
      for (const key of Object.keys(env)) expect(knownEnv, `${name}: ${key}`).toContain(key);
      const config = resolveConfig({}, env);
      expect(config.database_url).toMatch(/^postgres:\/\//);
      const dbHost = new URL(config.database_url!).hostname;
      expect(compose.services[dbHost]?.image, `${name}'s database service`).toMatch(/^postgres:15/);
      expect(service.depends_on).toHaveProperty(dbHost);
      dbs.add(dbHost);
    }
    expect(dbs.size).toBe(3);
    const names = parleys.map(([, s]) => (s.environment as Record<string, string>).PARLEY_SERVER_NAME);
    expect(new Set(names).size).toBe(3);
  });

  it("pins every server name to its service over plain HTTP, and publishes the ports on loopback only", () => {
    const parleys = Object.entries<any>(compose.services).filter(([, s]) => s.build);
    for (const [service, { environment, ports }] of parleys) {
      const config = resolveConfig({}, environment);
      // Without the pin, federation would look the name up and refuse the compose network's private address.
      expect(config.federation_hosts, service).toContainEqual({ name: config.server_name, host: service, port: 8008 });
      for (const [other, { environment: theirs }] of parleys) {
        const name = (theirs as Record<string, string>).PARLEY_SERVER_NAME;
        expect(config.federation_hosts.map((h) => h.name), `${service} pins ${other}`).toContain(name);
        expect(config.federation_insecure, `${service} reaches ${other} over HTTP`).toContain(name);
      }
      expect(config.registration, service).not.toBe("open");
      expect(ports, service).toContainEqual(expect.stringMatching(/^127\.0\.0\.1:\d+:8008$/));
      // The metrics port too: what it tells (routes, peers, load) is for this machine's scraper only.
      expect(ports, service).toEqual(ports.map(() => expect.stringMatching(/^127\.0\.0\.1:\d+:\d+$/)));
      if (config.metrics_port !== undefined) expect(ports, service).toContainEqual(expect.stringMatching(new RegExp(`^127\\.0\\.0\\.1:\\d+:${config.metrics_port}$`)));
    }
  });

  it("builds an image whose variables are configuration keys and whose entry point and migrations exist", () => {
    for (const m of dockerfile.matchAll(/\b(PARLEY_[A-Z_]+|DATABASE_URL)=/g)) expect(knownEnv).toContain(m[1]);
    expect(dockerfile).toMatch(/^USER node$/m);
    expect(dockerfile).toMatch(/^VOLUME \["\/data"\]$/m);
    expect(dockerfile).toMatch(/^HEALTHCHECK /m);
    expect(dockerfile).toContain("dist/parley.js");
    expect(dockerfile).toContain("schema/migrations");
    expect(existsSync(path.join(root, "schema/migrations/meta/_journal.json"))).toBe(true);
    expect(existsSync(path.join(root, "bin/build.mjs"))).toBe(true);
  });
});
