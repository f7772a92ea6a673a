// The `parley` command line: serve, generate-config, and the debug and admin commands.
import { writeFile } from "node:fs/promises";
import { parseArgs } from "node:util";
import { ConfigError, generateConfigFile, loadConfig } from "./config.ts";
import { SHUTDOWN_BOUND_MS, startHomeserver } from "./homeserver.ts";

const USAGE = `Usage: parley <command> [options]

Commands:
  serve [--config FILE]           Run the homeserver (no file: localhost:8008, data in ./data)
  generate-config [--output FILE] Write a commented configuration file (default: standard output)
  dev-network [--servers N] [--base-port P] [--dir D]
                                  Run N federating homeservers on loopback (default 3, ports
                                  8008…), one user each; prints their URLs and passwords
  debug <command> ...             Inspect events: canonical-json, event-id, redact, check-auth,
                                  resolve-state, replay (JSON on stdin, JSON on stdout)
  admin [--config FILE] <command> Accounts: create-user, reset-password, deactivate, list-users,
                                  audit (\`parley admin --help\`)
  conformance --server URL ...    Check a server's federation against the spec
                                  (\`parley conformance --help\`)
`;

type Command = (argv: string[]) => Promise<number>;

const commands: Record<string, Command> = {
  serve,
  "generate-config": generateConfig,
  debug,
  "dev-network": async (argv) => (await import("./dev-network.ts")).devNetworkMain(argv),
  admin: async (argv) => (await import("./admin-cli.ts")).adminMain(argv),
  conformance: async (argv) => (await import("../conformance/run.ts")).conformanceMain(argv),
};

export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === "--help" || name === "-h" || name === "help") {
    process.stdout.write(USAGE);
    return name ? 0 : 2;
  }
  const command = commands[name];
  if (!command) {
    process.stderr.write(`parley: unknown command "${name}"\n${USAGE}`);
    return 2;
  }
  try {
    return await command(rest);
  } catch (err) {
    if (err instanceof ConfigError || (err as { code?: string }).code?.startsWith("ERR_PARSE_ARGS")) {
      process.stderr.write(`parley: ${(err as Error).message}\n`);
      return 2;
    }
    throw err;
  }
}

async function serve(argv: string[]): Promise<number> {
  const { values } = parseArgs({ args: argv, options: { config: { type: "string", short: "c" } } });
  const config = await loadConfig(values.config);
  let homeserver;
  try {
    homeserver = await startHomeserver(config);
  } catch (err) {
    process.stderr.write(`parley: cannot start: ${(err as Error).message}\n`);
    return 1;
  }
  const { logger } = homeserver.services;
  const code = await new Promise<number>((resolve) => {
    const stop = (signal: NodeJS.Signals) => {
      // A second signal takes Node's default action: an operator can always kill a stuck process.
      process.off("SIGTERM", stop);
      process.off("SIGINT", stop);
      // Requests cut short by the shutdown may leave rejections nobody waits for: they must not
      // crash the process before the database is closed.
      process.on("unhandledRejection", (err) => logger.warn({ err }, "unhandled rejection during shutdown"));
      // close() is bounded (grace period plus SHUTDOWN_BOUND_MS); this is the last resort.
      const limit = config.shutdown_grace_ms + SHUTDOWN_BOUND_MS + HARD_EXIT_MARGIN_MS;
      setTimeout(() => {
        process.stderr.write(`parley: shutdown still not finished after ${limit} ms; exiting\n`);
        process.exit(1);
      }, limit).unref();
      logger.info({ signal }, "signal received");
      homeserver.close().then(
        () => resolve(0),
        (err) => {
          process.stderr.write(`parley: error during shutdown: ${(err as Error).message}\n`);
          resolve(1);
        },
      );
    };
    process.on("SIGTERM", stop);
    process.on("SIGINT", stop);
  });
  // Whatever may still hold the event loop (a socket the shutdown left behind) must not keep a
  // stopped server's process alive; the timer itself holds nothing.
  setTimeout(() => process.exit(code), 1_000).unref();
  return code;
}

/** How long after close() should have finished the process exits regardless. */
const HARD_EXIT_MARGIN_MS = 2_000;

async function generateConfig(argv: string[]): Promise<number> {
  const { values } = parseArgs({ args: argv, options: { output: { type: "string", short: "o" } } });
  const text = generateConfigFile();
  if (values.output) {
    await writeFile(values.output, text, { flag: "wx" }).catch((err: NodeJS.ErrnoException) => {
      throw new ConfigError(
        err.code === "EEXIST" ? `${values.output} already exists; not overwriting it` : err.message,
      );
    });
  } else {
    process.stdout.write(text);
  }
  return 0;
}

async function debug(argv: string[]): Promise<number> {
  const { debugMain } = await import("../federation/debug-cli.ts");
  const stdin = await readStdin();
  const result = await debugMain(argv, stdin);
  if (result.stdout) process.stdout.write(result.stdout.endsWith("\n") ? result.stdout : result.stdout + "\n");
  if (result.stderr) process.stderr.write(result.stderr.endsWith("\n") ? result.stderr : result.stderr + "\n");
  return result.code;
}

async function readStdin(): Promise<string> {
  if (process.stdin.isTTY) return "";
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString("utf8");
}
