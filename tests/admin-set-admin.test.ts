// `parley admin set-admin NAME [--revoke]` (issue 18): promote and demote server admins from the
// command line, audited. The admin API's own admin endpoints are in admin-api-users.test.ts.
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { openDatabase, schema } from "../schema/db.ts";
import { adminMain } from "../server/admin-cli.ts";
import { createTestDatabase } from "./harness.ts";

describe("parley admin set-admin", () => {
  it("promotes and demotes a user, in the audit log", async () => {
    const database = await createTestDatabase();
    const dataDir = await mkdtemp(path.join(tmpdir(), "parley-test-"));
    const savedUrl = process.env.DATABASE_URL;
    try {
      // A database set up as the server would (no server: the command needs none, and on PGlite the
      // embedded database can only be open in one place).
      const setup = await openDatabase({ dataDir, databaseUrl: database.url, poolSize: 1 });
      await setup.db.insert(schema.users).values({ userId: "@lee:test.local", createdTs: Date.now() });
      await setup.close();
      const configFile = path.join(dataDir, "parley.yaml");
      await writeFile(configFile, `server_name: test.local\ndata_dir: ${JSON.stringify(dataDir)}\n`);
      if (database.url) process.env.DATABASE_URL = database.url;
      const run = async (...argv: string[]) => {
        const io = { stdout: "", stderr: "", out: (t: string) => void (io.stdout += t), err: (t: string) => void (io.stderr += t) };
        const code = await adminMain(["--config", configFile, ...argv], io);
        return { code, ...io };
      };
      const granted = await run("set-admin", "lee");
      expect(granted.code, granted.stderr).toBe(0);
      expect(granted.stdout).toBe("@lee:test.local is now a server admin\n");
      const revoked = await run("set-admin", "@lee:test.local", "--revoke");
      expect(revoked.stdout).toBe("@lee:test.local is no longer a server admin\n");
      const audit = (await run("audit", "--user", "lee")).stdout;
      expect(audit).toMatch(/admin_action\t@lee:test\.local.*"action":"grant_admin"/);
      expect(audit).toMatch(/admin_action\t@lee:test\.local.*"action":"revoke_admin"/);
    } finally {
      if (savedUrl === undefined) delete process.env.DATABASE_URL;
      else process.env.DATABASE_URL = savedUrl;
      await database.drop();
      await rm(dataDir, { recursive: true, force: true });
    }
  });
});
