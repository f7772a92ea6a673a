// Self-signed TLS certificates made at test time with the openssl command (no key material is
// kept in the repository). Tests that need one skip, with this reason, where openssl is missing.
import { execFile } from "node:child_process";
import { readFile } from "node:fs/promises";
import path from "node:path";
import { promisify } from "node:util";

const run = promisify(execFile);

export interface SelfSignedCertificate {
  certFile: string;
  keyFile: string;
  /** The certificate (PEM), to trust it as a CA. */
  cert: string;
}

/** Why certificates cannot be made here, or undefined when they can. */
export async function opensslMissing(): Promise<string | undefined> {
  try {
    await run("openssl", ["version"]);
    return undefined;
  } catch (err) {
    return `the openssl command is not available (${(err as Error).message})`;
  }
}

/** A P-256 certificate for `localhost` and 127.0.0.1 (and `names`), valid for a day, written to `dir`. */
export async function selfSignedCertificate(dir: string, names: string[] = []): Promise<SelfSignedCertificate> {
  const certFile = path.join(dir, "tls.crt");
  const keyFile = path.join(dir, "tls.key");
  const san = ["DNS:localhost", "IP:127.0.0.1", ...names.map((n) => `DNS:${n}`)].join(",");
  await run("openssl", [
    "req", "-x509", "-nodes", "-days", "1",
    "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
    "-subj", "/CN=localhost",
    "-addext", `subjectAltName=${san}`,
    "-keyout", keyFile, "-out", certFile,
  ]);
  return { certFile, keyFile, cert: await readFile(certFile, "utf8") };
}
