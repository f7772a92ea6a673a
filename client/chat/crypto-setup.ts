// Encryption for parley-chat: the device's crypto store (a file in the data directory, encrypted
// with a passphrase the user types at start) and the E2EE machine on it.
import { existsSync } from "node:fs";
import type { MatrixHttp } from "../http.ts";
import { E2EE } from "../crypto/e2ee.ts";
import { FileCryptoStore, WrongPassphraseError } from "../crypto/store.ts";
import { cryptoStorePath, type StoredSession } from "./session.ts";
import { promptLine, PromptCancelled, type TerminalIO } from "./terminal.ts";

export interface ChatCrypto {
  machine: E2EE;
  close(): Promise<void>;
}

/**
 * Opens the crypto store (asking for its passphrase; a new one is asked twice) and the E2EE machine.
 */
export async function openCrypto(
  dataDir: string,
  session: StoredSession,
  io: TerminalIO,
  http: MatrixHttp,
  kdf: "interactive" | "moderate" = "moderate",
): Promise<ChatCrypto> {
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
  const opened = store;
  let machine: E2EE;
  try {
    machine = await E2EE.create({ http, userId: session.userId, deviceId: session.deviceId, store });
  } catch (err) {
    await opened.close().catch(() => {}); // releases the store's lock file
    throw err;
  }
  return {
    machine,
    async close() {
      await opened.flush();
      await opened.close();
    },
  };
}
