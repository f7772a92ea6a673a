// `parley admin federation` and `parley admin rotate-signing-key`, run in-process against a test
// server's database (stopped first: the embedded database has one owner at a time).
import { writeFile } from "node:fs/promises";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { signJson, verifyJsonSignature } from "../federation/protocol/signing.ts";
import { listDestinations } from "../federation/transport/sender.ts";
import { type AdminIo, adminMain } from "../server/admin-cli.ts";
import { freePort } from "./federation-harness.ts";
import { createTestDatabase, request, startTestServer, type TestDatabase, type TestServer } from "./harness.ts";

function capture(): AdminIo & { stdout: string; stderr: string } {
  const io = {
    stdout: "",
    stderr: "",
    out(text: string) {
      io.stdout += text;
    },
    err(text: string) {
      io.stderr += text;
    },
  };
  return io;
}

describe("parley admin: federation", () => {
  let database: TestDatabase;
  let hs: TestServer | undefined;
  let dataDir: string;
  let configFile: string;
  let deadPort: number;
  const savedDatabaseUrl = process.env.DATABASE_URL;
  const config = () => ({
    server_name: "admin.test",
    // A pinned peer where nothing listens: every attempt fails at once.
    federation_hosts: `dead.test=127.0.0.1:${deadPort}`,
    federation_insecure: "dead.test",
  });

  beforeAll(async () => {
    deadPort = await freePort();
    database = await createTestDatabase();
    hs = await startTestServer({ database, embedded: "disk", config: config() });
    dataDir = hs.dataDir;
    configFile = path.join(dataDir, "parley.yaml");
    await writeFile(configFile, `server_name: admin.test\ndata_dir: ${JSON.stringify(dataDir)}\n`);
    if (database.url) process.env.DATABASE_URL = database.url;
  });
  afterAll(async () => {
    if (savedDatabaseUrl === undefined) delete process.env.DATABASE_URL;
    else process.env.DATABASE_URL = savedDatabaseUrl;
    await hs?.destroy();
  });

  async function adminWithServerStopped(...argv: string[]) {
    await hs!.stop();
    hs = undefined;
    try {
      const io = capture();
      const code = await adminMain(["--config", configFile, ...argv], io);
      return { code, ...io };
    } finally {
      hs = await startTestServer({ database, dataDir, config: config() });
    }
  }

  it("lists a failing destination with its queue, backoff and last error", async () => {
    await hs!.services.federation.sender.enqueue(["dead.test"], {
      edus: [1, 2, 3].map((n) => ({ edu_type: "m.direct_to_device", content: { n } })),
    });
    const deadline = Date.now() + 5_000;
    while (!(await listDestinations(hs!.services.database)).some((d) => d.last_error) && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 50));
    }
    const res = await adminWithServerStopped("federation");
    expect(res.code, res.stderr).toBe(0);
    const lines = res.stdout.trim().split("\n");
    expect(lines[0]).toBe("destination\tqueued\tfailures\tlast success\tbackoff until\tlast error");
    const [destination, queued, failures, lastSuccess, backoff, error] = lines[1]!.split("\t");
    expect({ destination, queued, lastSuccess }).toEqual({ destination: "dead.test", queued: "3", lastSuccess: "-" });
    expect(Number(failures)).toBeGreaterThanOrEqual(1);
    expect(backoff).toMatch(/^\d{4}-\d\d-\d\dT/);
    expect(error).toMatch(/dead\.test/);
    expect(lines.at(-1)).toBe("1 destination(s)");
  });

  it("rotates the signing key: after a restart the old key is published as old and still verifies what it signed", async () => {
    const old = hs!.services.signingKey;
    const signedBefore = signJson({ content: "signed with the old key" }, "admin.test", old);
    const before = Date.now();
    await new Promise((r) => setTimeout(r, 5));

    const res = await adminWithServerStopped("rotate-signing-key");
    expect(res.code, res.stderr).toBe(0);
    expect(res.stdout).toMatch(/restart the server/);
    const current = hs!.services.signingKey;
    expect(current.keyId).not.toBe(old.keyId);
    expect(res.stdout).toContain(current.keyId);

    const keys = await request(hs!.url, "GET", "/_matrix/key/v2/server");
    expect(Object.keys(keys.json.verify_keys)).toEqual([current.keyId]);
    const retired = keys.json.old_verify_keys[old.keyId];
    expect(retired.expired_ts).toBeGreaterThan(before);
    expect(retired.expired_ts).toBeLessThanOrEqual(Date.now());
    expect(verifyJsonSignature(keys.json, "admin.test", current.keyId, current.publicKey)).toBe(true);

    const store = hs!.services.federation.keys;
    const oldKey = await store.verifyKey("admin.test", old.keyId, before);
    expect(oldKey).toEqual(old.publicKey);
    expect(verifyJsonSignature(signedBefore, "admin.test", old.keyId, oldKey!)).toBe(true);
    // Nothing signed after the rotation verifies with the old key.
    expect(await store.verifyKey("admin.test", old.keyId, Date.now() + 1_000)).toBeUndefined();
  });
});
