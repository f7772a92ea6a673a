import { readFile } from "node:fs/promises";
import path from "node:path";
import YAML from "yaml";
import { describe, expect, it } from "vitest";
import { withConfigTable } from "../scripts/docs.ts";
import { ConfigError, configKeys, generateConfigFile, redactedConfig, resolveConfig } from "./config.ts";

describe("configuration", () => {
  it("runs as localhost:8008 with data in ./data when nothing is configured", () => {
    const c = resolveConfig({}, {}, "/srv/parley");
    expect(c.server_name).toBe("localhost:8008");
    expect(c.port).toBe(8008);
    expect(c.data_dir).toBe("/srv/parley/data");
    expect(c.database_url).toBeUndefined();
    expect(c.public_baseurl).toBe("http://localhost:8008/");
  });

  it("lets the environment override the file", () => {
    const c = resolveConfig(
      { server_name: "file.example", port: 9000, registration: "closed" },
      { PARLEY_SERVER_NAME: "env.example", PARLEY_PORT: "9100", DATABASE_URL: "postgres://u@h/db" },
    );
    expect(c.server_name).toBe("env.example");
    expect(c.port).toBe(9100);
    expect(c.registration).toBe("closed");
    expect(c.database_url).toBe("postgres://u@h/db");
    expect(c.public_baseurl).toBe("https://env.example/");
  });

  it("derives public_baseurl from server_name when unset, localhost only for a loopback name", () => {
    expect(resolveConfig({ server_name: "example.org" }, {}).public_baseurl).toBe("https://example.org/");
    expect(resolveConfig({}, { PARLEY_SERVER_NAME: "example.org:8448" }).public_baseurl).toBe("https://example.org:8448/");
    expect(resolveConfig({ server_name: "localhost:8008", port: 9000 }, {}).public_baseurl).toBe("http://localhost:9000/");
    expect(resolveConfig({ server_name: "127.0.0.1:8448", port: 9001 }, {}).public_baseurl).toBe("http://localhost:9001/");
    expect(resolveConfig({ server_name: "[::1]:8448", port: 9002 }, {}).public_baseurl).toBe("http://localhost:9002/");
    expect(resolveConfig({ server_name: "example.org", public_baseurl: "https://matrix.example.org/" }, {}).public_baseurl).toBe(
      "https://matrix.example.org/",
    );
  });

  it("names the variable or key that is wrong", () => {
    expect(() => resolveConfig({}, { PARLEY_REGISTRATION: "sometimes" })).toThrow(/PARLEY_REGISTRATION/);
    expect(() => resolveConfig({ port: "eighty" }, {})).toThrow(/key port/);
    expect(() => resolveConfig({ sever_name: "typo" }, {})).toThrow(ConfigError);
    expect(() => resolveConfig({ server_name: "bad name!" }, {})).toThrow(/server_name/);
  });

  it("has every key settable from the environment, under a distinct name", () => {
    const envs = Object.values(configKeys).map((k) => k.env);
    expect(new Set(envs).size).toBe(envs.length);
    for (const required of ["PARLEY_SERVER_NAME", "PARLEY_PUBLIC_BASEURL", "PARLEY_BIND", "PARLEY_PORT", "PARLEY_DATA_DIR", "DATABASE_URL", "PARLEY_REGISTRATION", "PARLEY_LOG_LEVEL"]) {
      expect(envs).toContain(required);
    }
  });

  it("generates a commented file that documents every key and parses back to the defaults", () => {
    const text = generateConfigFile();
    for (const [name, spec] of Object.entries(configKeys)) {
      expect(text).toContain(spec.doc);
      expect(text).toMatch(new RegExp(`^#?${name}:`, "m"));
    }
    const parsed = YAML.parse(text) as Record<string, unknown>;
    expect(resolveConfig(parsed, {}, "/x")).toEqual(resolveConfig({}, {}, "/x"));
  });

  it("masks secrets when the configuration is logged", () => {
    const c = resolveConfig({ database_url: "postgres://u:hunter2@h/db", registration_shared_secret: "s3cret" }, {});
    const shown = JSON.stringify(redactedConfig(c));
    expect(shown).not.toContain("hunter2");
    expect(shown).not.toContain("s3cret");
  });

  it("is documented in the README exactly as server/config.ts says (run `npm run docs` after adding a key)", async () => {
    const readme = await readFile(path.join(import.meta.dirname, "..", "README.md"), "utf8");
    expect(readme).toBe(withConfigTable(readme));
  });
});
