// The reference Synapse 1.67 on loopback, for interop tests (../shared/synapse/README.md).
//
// Built once per machine with `bash ../shared/synapse/setup.sh /tmp/synapse <synapse git dir>`;
// `$PARLEY_SYNAPSE_DIR` (default /tmp/synapse) names that folder. When it is not set up, tests skip
// with the reason `synapseSetup()` gives:
//
//   const synapse = synapseSetup();
//   if (!synapse.ready) console.warn(`… skipped: ${synapse.reason}`);
//   describe.skipIf(!synapse.ready)("…", () => { … });
//
// How the two reach each other (nothing here edits Synapse's configuration):
// - Synapse instance i is named `localhost:<fed port>` and serves federation over TLS on
//   127.0.0.1:<fed port> with a self-signed certificate. Parley reaches it with that name pinned
//   (`federation_hosts`) and marked insecure (`federation_insecure`): `parleyFederationConfig()`.
// - Parley is named `localhost:PORT` and listens with TLS on PORT itself (`tls_port`, any
//   self-signed certificate): the explicit port means Synapse connects there directly, with no
//   .well-known or SRV lookup. setup.sh allows Synapse's outbound federation to loopback
//   (`ip_range_whitelist: [127.0.0.0/8, ::1/128]`) without certificate checks
//   (`federation_verify_certificates: false`), and fetches keys from the origin
//   (`trusted_key_servers: []`). `startParleyForSynapse()` sets Parley up that way.
import { execFile } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { freePort } from "./free-port.ts";
import { tmpdir } from "node:os";
import path from "node:path";
import { randomBytes } from "node:crypto";
import { promisify } from "node:util";
import { type TestServer, type TestServerOptions, startTestServer } from "./harness.ts";
import { opensslMissing, selfSignedCertificate } from "./self-signed.ts";

const run = promisify(execFile);

export interface SynapseInstance {
  /** hs1, hs2, … (a folder of the setup, and what start.sh/stop.sh take). */
  name: string;
  /** `localhost:<federation port>`. */
  serverName: string;
  /** Plain HTTP Client-Server API, e.g. http://127.0.0.1:18008 */
  clientUrl: string;
  /** TLS Server-Server API and key server, e.g. https://127.0.0.1:18448 */
  federationUrl: string;
  federationPort: number;
  configPath: string;
  logPath: string;
}

export type SynapseSetup =
  | { ready: true; dir: string; scripts: string; instances: SynapseInstance[] }
  | { ready: false; reason: string };

const repoRoot = path.resolve(import.meta.dirname, "..");

/** Whether the Synapse setup exists (synchronous, for `describe.skipIf`), and its instances. */
export function synapseSetup(): SynapseSetup {
  const dir = path.resolve(process.env.PARLEY_SYNAPSE_DIR ?? "/tmp/synapse");
  const scripts = path.resolve(process.env.PARLEY_SYNAPSE_SCRIPTS ?? path.join(repoRoot, "..", "shared", "synapse"));
  const how = `run: bash ${path.join(scripts, "setup.sh")} ${dir} <element-hq/synapse git dir>`;
  if (!existsSync(path.join(scripts, "start.sh"))) {
    return { ready: false, reason: `Synapse scripts not found in ${scripts} (set PARLEY_SYNAPSE_SCRIPTS)` };
  }
  if (!existsSync(path.join(dir, "instances.tsv"))) return { ready: false, reason: `Synapse is not set up in ${dir}; ${how}` };
  if (!existsSync(path.join(dir, "venv", "bin", "python"))) return { ready: false, reason: `no Synapse venv in ${dir}/venv; ${how}` };
  const instances = readFileSync(path.join(dir, "instances.tsv"), "utf8")
    .split("\n")
    .filter((line) => line.trim() !== "")
    .map((line) => {
      const [name, serverName, clientPort, fedPort] = line.split("\t") as [string, string, string, string];
      return {
        name,
        serverName,
        clientUrl: `http://127.0.0.1:${clientPort}`,
        federationUrl: `https://127.0.0.1:${fedPort}`,
        federationPort: Number(fedPort),
        configPath: path.join(dir, name, "homeserver.yaml"),
        logPath: path.join(dir, name, "homeserver.log"),
      };
    });
  if (instances.length === 0) return { ready: false, reason: `${dir}/instances.tsv lists no instance; ${how}` };
  return { ready: true, dir, scripts, instances };
}

export interface RunningSynapse {
  instances: SynapseInstance[];
  /** Stops the instances this call started (those already running before are left running). */
  release(): Promise<void>;
}

/**
 * Starts the instances (all, or those named) unless they already run, and waits until each answers
 * (start.sh). Started instances are stopped by `release()`; running ones are reused and left alone,
 * so several test files (or a developer's own start.sh) can share them.
 */
/**
 * Test files run in parallel workers, and one file's release() would stop the Synapse another is
 * using: a lock directory (atomic mkdir, with the holder's pid for stale locks) makes them take turns.
 */
async function lockSynapse(dir: string): Promise<() => Promise<void>> {
  const lock = path.join(dir, ".parley-tests.lock");
  const until = Date.now() + 10 * 60_000;
  for (;;) {
    try {
      await mkdir(lock);
      await writeFile(path.join(lock, "pid"), String(process.pid));
      return () => rm(lock, { recursive: true, force: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
      const holder = Number(await readFile(path.join(lock, "pid"), "utf8").catch(() => "0"));
      let alive = holder > 0;
      try {
        if (alive) process.kill(holder, 0);
      } catch {
        alive = false;
      }
      if (!alive && holder > 0) await rm(lock, { recursive: true, force: true });
      if (Date.now() > until) throw new Error(`another test holds ${lock}`);
      await new Promise((r) => setTimeout(r, 250));
    }
  }
}

export async function startSynapse(setup: SynapseSetup & { ready: true }, names?: string[]): Promise<RunningSynapse> {
  const instances = names ? setup.instances.filter((i) => names.includes(i.name)) : setup.instances;
  const unlock = await lockSynapse(setup.dir);
  const started: string[] = [];
  try {
    await startInstances(setup, instances, started);
  } catch (err) {
    await unlock();
    throw err;
  }
  return {
    instances,
    async release() {
      try {
        if (started.length > 0) await run("bash", [path.join(setup.scripts, "stop.sh"), setup.dir, ...started], { timeout: 60_000 });
      } finally {
        await unlock();
      }
    },
  };
}

async function startInstances(setup: SynapseSetup & { ready: true }, instances: SynapseInstance[], started: string[]) {
  for (const instance of instances) {
    if (await answers(instance)) continue;
    const { stdout } = await run("bash", [path.join(setup.scripts, "start.sh"), setup.dir, instance.name], {
      timeout: 180_000,
    }).catch((err: { stdout?: string; stderr?: string; message: string }) => {
      throw new Error(`Synapse ${instance.name} did not start: ${err.stderr || err.stdout || err.message}`);
    });
    if (!stdout.includes("already running")) started.push(instance.name);
  }
}

async function answers(instance: SynapseInstance): Promise<boolean> {
  try {
    const res = await fetch(`${instance.clientUrl}/_matrix/client/versions`, { signal: AbortSignal.timeout(2_000) });
    return res.ok;
  } catch {
    return false;
  }
}

export interface SynapseUser {
  userId: string;
  accessToken: string;
  deviceId: string;
  password: string;
}

/**
 * Registers a user through Synapse's open registration (m.login.dummy). Synapse's database
 * outlives test runs, so the localpart gets a random suffix unless `exact` is set.
 */
export async function registerSynapseUser(
  instance: SynapseInstance,
  localpart = "user",
  options: { password?: string; exact?: boolean; deviceId?: string } = {},
): Promise<SynapseUser> {
  const username = options.exact ? localpart : `${localpart}-${randomBytes(4).toString("hex")}`;
  const password = options.password ?? `pw-${randomBytes(8).toString("hex")}`;
  const res = await fetch(`${instance.clientUrl}/_matrix/client/v3/register`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({
      username,
      password,
      auth: { type: "m.login.dummy" },
      ...(options.deviceId ? { device_id: options.deviceId } : {}),
    }),
  });
  const json = (await res.json()) as { user_id?: string; access_token?: string; device_id?: string };
  if (res.status !== 200 || !json.user_id || !json.access_token || !json.device_id) {
    throw new Error(`registering ${username} on Synapse ${instance.name}: ${res.status} ${JSON.stringify(json)}`);
  }
  return { userId: json.user_id, accessToken: json.access_token, deviceId: json.device_id, password };
}

/** Parley's configuration for reaching these Synapse instances: names pinned to loopback, no certificate checks. */
export function parleyFederationConfig(instances: SynapseInstance[]) {
  return {
    federation_hosts: Object.fromEntries(instances.map((i) => [i.serverName, `127.0.0.1:${i.federationPort}`])),
    federation_insecure: instances.map((i) => i.serverName),
  };
}

export { freePort };

export interface ParleyForSynapse extends TestServer {
  /** `localhost:<tlsPort>`: what Synapse resolves to Parley's TLS listener. */
  serverName: string;
}

/**
 * A Parley test server that Synapse can federate with: named `localhost:PORT`, serving TLS on PORT
 * with a fresh self-signed certificate, with the Synapse instances pinned and marked insecure.
 * Needs openssl (check `opensslMissing()` in the skip condition).
 */
export async function startParleyForSynapse(
  instances: SynapseInstance[],
  options: TestServerOptions = {},
): Promise<ParleyForSynapse> {
  const certDir = await mkdtemp(path.join(tmpdir(), "parley-synapse-tls-"));
  const cert = await selfSignedCertificate(certDir);
  // The port is free when picked, but another process may take it in the seconds Parley takes to
  // start (the name must be chosen before): then pick another.
  let hs: TestServer;
  let serverName: string;
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    serverName = `localhost:${port}`;
    try {
      hs = await startTestServer({
        ...options,
        config: {
          server_name: serverName,
          tls_port: port,
          tls_certificate: cert.certFile,
          tls_private_key: cert.keyFile,
          ...parleyFederationConfig(instances),
          ...options.config,
        },
      });
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EADDRINUSE" || attempt >= 3) throw err;
    }
  }
  return {
    ...hs,
    serverName,
    async destroy() {
      await hs.destroy();
      await rm(certDir, { recursive: true, force: true });
    },
  };
}

/** Why Synapse interop tests cannot run here, or undefined when they can. */
export async function synapseInteropMissing(setup: SynapseSetup): Promise<string | undefined> {
  if (!setup.ready) return setup.reason;
  return opensslMissing();
}
