// The `parley` command as an operator runs it: a real process, zero configuration.
import { spawn, spawnSync } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { decodeBase64 } from "../federation/protocol/base64.ts";
import { verifyJsonSignature } from "../federation/protocol/signing.ts";
import { freePort } from "./free-port.ts";

const bin = path.join(import.meta.dirname, "..", "bin", "parley.js");


// Nothing here uses a database server (`serve` is the zero-config, embedded one): once, on the embedded run.
describe.skipIf(Boolean(process.env.DATABASE_URL))("parley serve", () => {
  it("starts with no configuration, serves a verifiable key, and exits cleanly on SIGTERM", async () => {
    const cwd = await mkdtemp(path.join(tmpdir(), "parley-cli-"));
    const port = await freePort();
    const env: NodeJS.ProcessEnv = { ...process.env, PARLEY_PORT: String(port), PARLEY_LOG_LEVEL: "warn" };
    delete env.DATABASE_URL; // zero-config means the embedded database
    const child = spawn(process.execPath, [bin, "serve"], { cwd, env, stdio: ["ignore", "pipe", "pipe"] });
    let output = "";
    child.stdout.on("data", (d) => (output += d));
    child.stderr.on("data", (d) => (output += d));
    const exited = new Promise<number | null>((r) => child.on("exit", (code) => r(code)));
    try {
      let keys: any;
      for (let i = 0; i < 300 && !keys; i++) {
        try {
          const res = await fetch(`http://127.0.0.1:${port}/_matrix/key/v2/server`);
          if (res.ok) keys = await res.json();
        } catch {
          await new Promise((r) => setTimeout(r, 100));
        }
      }
      expect(keys, output).toBeDefined();
      expect(keys.server_name).toBe("localhost:8008");
      const keyId = Object.keys(keys.verify_keys)[0]!;
      expect(verifyJsonSignature(keys, "localhost:8008", keyId, decodeBase64(keys.verify_keys[keyId].key))).toBe(true);
      child.kill("SIGTERM");
      expect(await exited).toBe(0);
    } finally {
      child.kill("SIGKILL");
      await rm(cwd, { recursive: true, force: true });
    }
  }, 60_000);
});

describe.skipIf(Boolean(process.env.DATABASE_URL))("parley generate-config and debug", () => {
  it("writes a configuration file that starts from the defaults", () => {
    const out = spawnSync(process.execPath, [bin, "generate-config"], { encoding: "utf8" });
    expect(out.status).toBe(0);
    expect(out.stdout).toContain("PARLEY_SERVER_NAME");
    expect(out.stdout).toMatch(/^server_name: localhost:8008$/m);
  });

  it("prints canonical JSON, and a one-line error with exit code 2 for bad input", () => {
    const ok = spawnSync(process.execPath, [bin, "debug", "canonical-json"], { input: '{"b":1, "a":"\\u00e9"}', encoding: "utf8" });
    expect(ok.status).toBe(0);
    expect(ok.stdout.trim()).toBe('{"a":"é","b":1}');
    const bad = spawnSync(process.execPath, [bin, "debug", "canonical-json"], { input: '{"a":1.5}', encoding: "utf8" });
    expect(bad.status).toBe(2);
    expect(bad.stderr.trim().split("\n")).toHaveLength(1);
  });

  it("refuses an unknown command with exit code 2", () => {
    const out = spawnSync(process.execPath, [bin, "frobnicate"], { encoding: "utf8" });
    expect(out.status).toBe(2);
    expect(out.stderr).toContain("unknown command");
  });
});
