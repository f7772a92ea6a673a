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
