// The requests a process is handling, counted from the moment the HTTP layer hands one to the app
// until its handler returns, whether or not the client is still there: a client that aborts a
// request does not stop its handler, which may still be waiting on the database. Shutdown waits
// for these before it closes the database, and turns new requests away once it has begun.

type Fetch = (req: Request, env: unknown) => Response | Promise<Response>;

export class InFlightRequests {
  private running = 0;
  private closing = false;
  private readonly waiting = new Set<() => void>();

  /** `fetch`, counted; once `refuseNew()` was called, answers 503 without running it. */
  wrap(fetch: Fetch): Fetch {
    return async (req, env) => {
      if (this.closing) return shuttingDown();
      this.running++;
      try {
        return await fetch(req, env);
      } finally {
        if (--this.running === 0) for (const resolve of this.waiting) resolve();
      }
    };
  }

  /** How many handlers are running. */
  get size(): number {
    return this.running;
  }

  /**
   * From now on a request that arrives (on a connection already open: the listening socket is
   * closed separately) is answered 503 and its connection closed, without reaching the app.
   */
  refuseNew(): void {
    this.closing = true;
  }

  /** Resolves true once no handler is running, or false after `timeoutMs`. */
  drained(timeoutMs: number): Promise<boolean> {
    if (this.running === 0) return Promise.resolve(true);
    return new Promise((resolve) => {
      const done = (drained: boolean) => {
        clearTimeout(timer);
        this.waiting.delete(onIdle);
        resolve(drained);
      };
      const onIdle = () => done(true);
      const timer = setTimeout(() => done(false), timeoutMs);
      this.waiting.add(onIdle);
    });
  }
}

function shuttingDown(): Response {
  return new Response(JSON.stringify({ errcode: "M_UNKNOWN", error: "The server is shutting down" }), {
    status: 503,
    headers: { "Content-Type": "application/json", Connection: "close", "Access-Control-Allow-Origin": "*" },
  });
}
