// synadm (the Synapse admin CLI, Debian package `synadm`) against Parley, unchanged: issue 18's
// "synadm lists users and rooms, and creates, modifies and deactivates a user". Skipped when synadm
// is not installed (`apt-get install -y synadm`); CI does not install it, see the report of issue 18.
// With PARLEY_SHOW_SYNADM=1 the commands and their output are printed.
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loginUser } from "./accounts-helpers.ts";
import { request, startTestServer, type TestServer } from "./harness.ts";

const SYNADM = ["/usr/bin/synadm", "/usr/local/bin/synadm"].find((p) => existsSync(p));

describe.skipIf(!SYNADM)("synadm against Parley", () => {
  let hs: TestServer;
  let home: string;
  let config: string;
  let roomId: string;
  const transcript: string[] = [];

  /** Runs `synadm --batch -c CONFIG -o json ARGS…` (batch: no confirmation prompts) and parses its JSON output. */
  function synadm(...args: string[]): Promise<{ code: number; stdout: string; json: any }> {
    return new Promise((resolve) => {
      // synadm writes a debug log under $HOME: a throwaway one.
      execFile(SYNADM!, ["--batch", "-c", config, "-o", "json", ...args], { env: { ...process.env, HOME: home }, timeout: 20_000 }, (err, stdout, stderr) => {
        transcript.push(`$ synadm ${args.join(" ")}\n${stdout}${stderr}`);
        // Some commands print a line of text before their JSON (the current settings, a notice).
        const start = stdout.search(/^[{[]/m);
        let json: any;
        try {
          json = start >= 0 ? JSON.parse(lastJsonDocument(stdout.slice(start))) : undefined;
        } catch {
          json = undefined;
        }
        resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, json });
      });
    });
  }

  beforeAll(async () => {
    hs = await startTestServer();
    home = await mkdtemp(path.join(tmpdir(), "parley-synadm-"));
    await hs.services.accounts.createUser({ localpart: "admin", password: "admin-secret", admin: true }, "cli");
    const login = await loginUser(hs.url, "admin", "admin-secret");
    const room = await request(hs.url, "POST", "/_matrix/client/v3/createRoom", { token: login.json.access_token, body: { name: "Lobby" } });
    roomId = room.json.room_id;
    config = path.join(home, "synadm.yaml");
    await writeFile(
      config,
      [
        "user: admin",
        `token: ${login.json.access_token}`,
        `base_url: ${hs.url}`,
        "admin_path: /_synapse/admin",
        "matrix_path: /_matrix",
        "timeout: 20",
        "server_discovery: well-known",
        // Named, so synadm does not go looking for it (it would through the federation API).
        "homeserver: test.local",
        "format: json",
        "",
      ].join("\n"),
      { mode: 0o600 },
    );
  });
  afterAll(async () => {
    if (process.env.PARLEY_SHOW_SYNADM) console.log(transcript.join("\n"));
    await hs?.destroy();
    if (home) await rm(home, { recursive: true, force: true });
  });

  it("shows the server version", async () => {
    const res = await synadm("version");
    expect(res.json.server_version).toMatch(/^Parley /);
  });

  // One or two synadm runs per test: each starts a Python interpreter (3 s or more on a loaded machine).
  it("lists users", async () => {
    const users = await synadm("user", "list");
    expect(users.json.total).toBe(1);
    expect(users.json.users.map((u: any) => u.name)).toEqual(["@admin:test.local"]);
  });

  it("lists rooms", async () => {
    const rooms = await synadm("room", "list");
    expect(rooms.json.rooms.map((r: any) => r.room_id)).toContain(roomId);
  });

  it("creates a user, who can then log in", async () => {
    const created = await synadm("user", "modify", "@zoe:test.local", "--password", "zoe-secret-1", "--display-name", "Zoe");
    expect(created.json).toMatchObject({ name: "@zoe:test.local", displayname: "Zoe", admin: 0, deactivated: 0 });
    expect((await loginUser(hs.url, "zoe", "zoe-secret-1")).status).toBe(200);
  });

  it("modifies the user", async () => {
    const modified = await synadm("user", "modify", "@zoe:test.local", "--display-name", "Zoe Z.", "--admin");
    expect(modified.json).toMatchObject({ displayname: "Zoe Z.", admin: 1 });
    expect(await hs.services.accounts.getUser("@zoe:test.local")).toMatchObject({ displayName: "Zoe Z.", isAdmin: true });
  });

  it("deactivates the user", async () => {
    const deactivated = await synadm("user", "deactivate", "@zoe:test.local");
    expect(deactivated.json).toEqual({ id_server_unbind_result: "success" });
    expect((await hs.services.accounts.getUser("@zoe:test.local"))?.deactivatedTs).not.toBeNull();
    expect((await loginUser(hs.url, "zoe", "zoe-secret-1")).json.errcode).toBe("M_USER_DEACTIVATED");
  });

  it("lists the deactivated user with --deactivated", async () => {
    const listed = await synadm("user", "list", "--deactivated");
    expect(listed.json.users.find((u: any) => u.name === "@zoe:test.local")).toMatchObject({ deactivated: 1 });
    expect(listed.json.total).toBe(2);
  });
});

/** synadm prints one JSON document per call, after any text lines; some commands print two (the details, then the result): the last one. */
function lastJsonDocument(text: string): string {
  const starts = [...text.matchAll(/^[{[]/gm)].map((m) => m.index!);
  for (const start of starts.reverse()) {
    try {
      JSON.parse(text.slice(start));
      return text.slice(start);
    } catch {
      // Not a whole document from here: an earlier start.
    }
  }
  return text;
}
