// Encryption for parley-chat: the device's crypto store (a file in the data directory, encrypted
// with a passphrase the user types at start) and the E2EE machine on it.
//
// The E2EE machine (client/crypto/e2ee.ts) is loaded only when present in this build, so the
// terminal client runs without it: then encrypted rooms show "[encrypted]" and refuse our messages
// rather than receiving plaintext.
import { existsSync } from "node:fs";
import type { ClientCryptoHooks } from "../client.ts";
import type { MatrixHttp } from "../http.ts";
import { FileCryptoStore, WrongPassphraseError, type CryptoStore } from "../crypto/store.ts";
import { cryptoStorePath, type StoredSession } from "./session.ts";
import { promptLine, PromptCancelled, type TerminalIO } from "./terminal.ts";

export interface ChatCrypto {
  hooks: ClientCryptoHooks;
  /** SAS verification of another device, when the E2EE machine offers it. */
  verify?: (userId: string, deviceId: string, compare: (emoji: string) => Promise<boolean>) => Promise<boolean>;
  close(): Promise<void>;
}

interface E2EEModule {
  E2EE: { create(opts: { http: MatrixHttp; userId: string; deviceId: string; store: CryptoStore }): Promise<ClientCryptoHooks> };
}

async function loadE2EE(): Promise<E2EEModule | undefined> {
  const url = new URL("../crypto/e2ee.ts", import.meta.url);
  if (!existsSync(url)) return undefined;
  // A computed specifier: this file type-checks and runs in builds without the E2EE machine.
  const mod = (await import(url.href)) as Partial<E2EEModule>;
  return mod.E2EE ? (mod as E2EEModule) : undefined;
}

/**
 * Opens the crypto store (asking for its passphrase; a new one is asked twice) and the E2EE machine.
 * Undefined when this build has no E2EE machine.
 */
export async function openCrypto(dataDir: string, session: StoredSession, io: TerminalIO,
  http: MatrixHttp,
  kdf: "interactive" | "moderate" = "moderate",
): Promise<ChatCrypto | undefined> {
  let e2ee: E2EEModule | undefined;
  try {
    e2ee = await loadE2EE();
  } catch (err) {
    // Safe to go on without: encrypted rooms then refuse our messages and show "[encrypted]".
    io.output.write(`Encryption is unavailable (${err instanceof Error ? err.message : String(err)}): encrypted rooms stay unreadable.\r\n`);
    return undefined;
  }
  if (!e2ee) return undefined;
  const file = cryptoStorePath(dataDir, session);
  const isNew = !existsSync(file);
  let store: FileCryptoStore | undefined;
  for (let attempt = 1; !store; attempt++) {
    const passphrase = await promptLine(io, isNew ? "Choose a passphrase for this device's encryption keys: " : "Passphrase of the encryption keys: ", { secret: true });
    if (isNew) {
      if (passphrase.length < 8) {
        io.output.write("At least 8 characters, please.\r\n");
        continue;
      }
      if ((await promptLine(io, "Passphrase again: ", { secret: true })) !== passphrase) {
        io.output.write("The passphrases differ.\r\n");
        continue;
      }
    }
    io.output.write("Opening the encryption store…\r\n");
    try {
      store = await FileCryptoStore.open(file, passphrase, { kdf });
    } catch (err) {
      if (!(err instanceof WrongPassphraseError)) throw err;
      io.output.write("Wrong passphrase.\r\n");
      if (attempt >= 3) throw new PromptCancelled("wrong passphrase");
    }
  }
  const hooks = await e2ee.E2EE.create({ http, userId: session.userId, deviceId: session.deviceId, store });
  const opened = store;
  return {
    hooks,
    async close() {
      await opened.flush();
      await opened.close();
    },
  };
}
