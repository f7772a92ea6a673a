// matrix-js-sdk as a third-party client in the tests. It declares engines node >= 22 and uses
// Promise.withResolvers, which Node 20 lacks: the polyfill must run before the SDK is evaluated,
// hence the dynamic import after it. The SDK's own logging is silenced.
if (!("withResolvers" in Promise)) {
  Object.defineProperty(Promise, "withResolvers", {
    configurable: true,
    writable: true,
    value<T>() {
      let resolve!: (value: T | PromiseLike<T>) => void;
      let reject!: (reason?: unknown) => void;
      const promise = new Promise<T>((res, rej) => {
        resolve = res;
        reject = rej;
      });
      return { promise, resolve, reject };
    },
  });
}

export const sdk = await import("matrix-js-sdk");
const { logger } = await import("matrix-js-sdk/lib/logger.js");
// Child loggers (MatrixRTCSession's, one per room) set their own level to DEBUG but copy the root's
// methodFactory: a silent factory quiets them too.
const root = logger as unknown as { setLevel(level: string): void; methodFactory: unknown; rebuild(): void };
root.setLevel("silent");
root.methodFactory = () => () => {};
root.rebuild();

export type SdkClient = ReturnType<typeof sdk.createClient>;

/** A logger for createClient that says nothing. */
export const quietLogger = { trace() {}, debug() {}, info() {}, warn() {}, error() {}, getChild: () => quietLogger };

/** Polls `check` every 50 ms until it gives a value (not undefined), or fails after `ms`. */
export async function eventually<T>(what: string, check: () => Promise<T | undefined> | T | undefined, ms: number): Promise<T> {
  const deadline = performance.now() + ms;
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    if (performance.now() > deadline) throw new Error(`timed out after ${ms} ms: ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * A client as Element starts it (Rust crypto in memory, lazy-loaded members), added to `started`
 * (for the test's cleanup); answers once it has synced.
 */
export async function elementClient(baseUrl: string, user: { userId: string; deviceId: string; accessToken: string }, started: SdkClient[]): Promise<SdkClient> {
  const client = sdk.createClient({ baseUrl, accessToken: user.accessToken, userId: user.userId, deviceId: user.deviceId, logger: quietLogger as never });
  started.push(client);
  await client.initRustCrypto({ useIndexedDB: false });
  const ready = new Promise<void>((resolve, reject) => {
    const onSync = (state: string) => {
      if (state === "PREPARED" || state === "SYNCING") {
        client.off(sdk.ClientEvent.Sync, onSync);
        resolve();
      } else if (state === "ERROR") reject(new Error(`${user.userId}: sync failed`));
    };
    client.on(sdk.ClientEvent.Sync, onSync);
  });
  await client.startClient({ initialSyncLimit: 20, lazyLoadMembers: true });
  await ready;
  return client;
}
