// Child process of store.test.ts's crash test: opens a crypto store and rewrites it as fast as it
// can until it is killed, printing "ready" after the first durable write. Each version holds a
// counter and a large value that starts with the same counter, so a reader can tell a whole
// version from a mixed or partial one.
import { FileCryptoStore } from "../../client/crypto/store.ts";

const [file, passphrase] = process.argv.slice(2) as [string, string];
const store = await FileCryptoStore.open(file, passphrase, { kdf: "interactive", writeDelayMs: 0 });
const filler = "x".repeat(512 * 1024);
for (let i = 1; ; i++) {
  await store.put("crash", "counter", String(i));
  await store.put("crash", "big", `${i}:${filler}`);
  await store.flush();
  if (i === 1) process.stdout.write("ready\n");
}
