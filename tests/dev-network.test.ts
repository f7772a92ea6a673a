// `parley dev-network` as a developer runs it: a real process, its printed table, users on two
// servers talking over federation, and a clean stop on Ctrl-C.
import { type ChildProcessWithoutNullStreams, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { createServer, connect } from "node:net";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { freePort } from "./free-port.ts";
import { request } from "./harness.ts";
import { loginUser } from "./accounts-helpers.ts";
import { bodies, createRoom, enc, invite, send } from "./sync-helpers.ts";
import type { TestUser } from "./accounts-helpers.ts";
import { startDevNetwork } from "../server/dev-network.ts";

const bin = path.join(import.meta.dirname, "..", "bin", "parley.js");

interface Running {
  child: ChildProcessWithoutNullStreams;
  output: () => string;
  exited: Promise<number | null>;
}

function run(args: string[]): Running {
  // The dev network must ignore a DATABASE_URL meant for `parley serve`: one that no server answers
  // proves it on every run, so the file runs once, on the embedded run (it never uses PostgreSQL).
  const env: NodeJS.ProcessEnv = { ...process.env, DATABASE_URL: "postgres://nobody@127.0.0.1:1/nothing" };
  const child = spawn(process.execPath, [bin, "dev-network", ...args], { env, stdio: "pipe" });
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (d) => (stdout += d));
  child.stderr.on("data", (d) => (stderr += d));
  const exited = new Promise<number | null>((r) => child.on("exit", (code) => r(code)));
  return { child, output: () => `stdout:\n${stdout}\nstderr:\n${stderr}`, exited };
}

/** Two consecutive free ports (the servers listen on --base-port and the next one). */
async function twoFreePorts(): Promise<number> {
  for (;;) {
    const port = await freePort();
    if (await canListen(port + 1)) return port;
  }
}

function canListen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once("error", () => resolve(false));
    server.listen({ port, host: "127.0.0.1", exclusive: true }, () => server.close(() => resolve(true)));
  });
}

function refusesConnections(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ port, host: "127.0.0.1" });
    socket.once("connect", () => {
      socket.destroy();
      resolve(false);
    });
    socket.once("error", () => resolve(true));
  });
}

async function waitFor(running: Running, text: string, ms: number): Promise<void> {
  const until = Date.now() + ms;
  while (!running.output().includes(text)) {
    if (running.child.exitCode !== null || Date.now() > until) throw new Error(`no "${text}" in:\n${running.output()}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe.skipIf(Boolean(process.env.DATABASE_URL))("parley dev-network", () => {
  it("starts two federating servers with a user each, and stops them and removes its directory on SIGINT", async () => {
    const port = await twoFreePorts();
    const running = run(["--servers", "2", "--base-port", String(port)]);
    try {
      // Creating an embedded database is the slow part of a start (see createDatabases): 40-100 s
      // for this test on a 2-core machine at load average 15-20, a few seconds on an idle one.
      await waitFor(running, "Ctrl-C stops all servers", 180_000);
      const printed = running.output();
      const rows = [...printed.matchAll(/^(\S+)\s+(http:\/\/\S+)\s+(@\S+)\s+(\S+)$/gm)].map((m) => ({
        serverName: m[1]!,
        url: m[2]!,
        userId: m[3]!,
        password: m[4]!,
      }));
      expect(rows.map((r) => [r.serverName, r.url, r.userId]), printed).toEqual([
        [`localhost:${port}`, `http://127.0.0.1:${port}`, `@alice:localhost:${port}`],
        [`localhost:${port + 1}`, `http://127.0.0.1:${port + 1}`, `@bob:localhost:${port + 1}`],
      ]);
      const dir = /^Data: (\S+) \(removed on exit\)$/m.exec(printed)?.[1];
      expect(dir && existsSync(dir), printed).toBe(true);

      const users: TestUser[] = [];
      for (const row of rows) {
        const login = await loginUser(row.url, row.userId, row.password);
        expect(login.status, JSON.stringify(login.json)).toBe(200);
        users.push({ userId: row.userId, accessToken: login.json.access_token, deviceId: login.json.device_id, password: row.password });
      }
      const [alice, bob] = users as [TestUser, TestUser];
      const [hs1, hs2] = rows.map((r) => r.url) as [string, string];

      const roomId = await createRoom(hs1, alice, { preset: "private_chat" });
      await invite(hs1, alice, roomId, bob.userId);
      const joined = await request(hs2, "POST", `/_matrix/client/v3/join/${enc(roomId)}?server_name=${enc(rows[0]!.serverName)}`, {
        token: bob.accessToken,
        body: {},
      });
      expect(joined.status, JSON.stringify(joined.json)).toBe(200);
      await send(hs1, alice, roomId, { msgtype: "m.text", body: "hello over federation" });

      let since: string | undefined;
      let seen: string[] = [];
      const until = Date.now() + 30_000;
      while (!seen.includes("hello over federation") && Date.now() < until) {
        const q = new URLSearchParams({ timeout: "2000", ...(since ? { since } : {}) });
        const res = await request(hs2, "GET", `/_matrix/client/v3/sync?${q}`, { token: bob.accessToken });
        expect(res.status, JSON.stringify(res.json)).toBe(200);
        since = res.json.next_batch;
        seen = [...seen, ...bodies(res.json, roomId)];
      }
      expect(seen).toContain("hello over federation");

      running.child.kill("SIGINT");
      expect(await running.exited, running.output()).toBe(0);
      expect(await refusesConnections(port)).toBe(true);
      expect(await refusesConnections(port + 1)).toBe(true);
      expect(existsSync(dir!)).toBe(false);
    } finally {
      running.child.kill("SIGKILL");
    }
  }, 280_000);

  it("refuses a taken port with a message naming it, before starting anything", async () => {
    const port = await twoFreePorts();
    const blocker = createServer();
    await new Promise<void>((r) => blocker.listen(port + 1, "127.0.0.1", r));
    try {
      const running = run(["--servers", "2", "--base-port", String(port)]);
      expect(await running.exited, running.output()).toBe(1);
      expect(running.output()).toContain(`port ${port + 1} (server 2 of 2) is already in use`);
      // Nothing was left listening on the free one.
      expect(await refusesConnections(port)).toBe(true);
    } finally {
      await new Promise((r) => blocker.close(r));
    }
  }, 60_000);

  it("refuses a number of servers outside 1 to 10 with exit code 2", async () => {
    const running = run(["--servers", "11"]);
    expect(await running.exited, running.output()).toBe(2);
    expect(running.output()).toContain("--servers must be a whole number from 1 to 10");
  }, 60_000);

  it("keeps a --dir network's rooms and passwords for the next run, and registers only with its token", async () => {
    const dir = await mkdtemp(path.join(tmpdir(), "parley-dev-network-kept-"));
    const ports = [await freePort()];
    try {
      const first = await startDevNetwork({ servers: 1, ports, dir, logLevel: "silent" });
      const [{ url, userId, password }] = first.servers as [(typeof first.servers)[0]];
      let roomId: string;
      try {
        const login = await loginUser(url, userId, password);
        expect(login.status).toBe(200);
        roomId = await createRoom(url, { userId, password, accessToken: login.json.access_token, deviceId: login.json.device_id });

        const start = await request(url, "POST", "/_matrix/client/v3/register", { body: { username: "mallory", password: "a long password" } });
        expect(start.json.flows).toEqual([{ stages: ["m.login.registration_token"] }]);
        const wrong = await request(url, "POST", "/_matrix/client/v3/register", {
          body: { username: "mallory", password: "a long password", auth: { type: "m.login.registration_token", token: "guess", session: start.json.session } },
        });
        expect(wrong.status).toBe(401);
        const right = await request(url, "POST", "/_matrix/client/v3/register", {
          body: { username: "dan", password: "a long password", auth: { type: "m.login.registration_token", token: first.registrationToken, session: start.json.session } },
        });
        expect(right.status, JSON.stringify(right.json)).toBe(200);
      } finally {
        await first.stop();
      }
      expect(existsSync(dir)).toBe(true);

      const second = await startDevNetwork({ servers: 1, ports, dir, logLevel: "silent" });
      try {
        expect(second.servers[0]!.password).toBe(password);
        expect(second.registrationToken).toBe(first.registrationToken);
        const login = await loginUser(url, userId, password);
        expect(login.status).toBe(200);
        const rooms = await request(url, "GET", "/_matrix/client/v3/joined_rooms", { token: login.json.access_token });
        expect(rooms.json.joined_rooms).toEqual([roomId]);
      } finally {
        await second.stop();
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }, 280_000);
});
