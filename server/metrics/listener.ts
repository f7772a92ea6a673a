// The metrics listener: a port of its own (`metrics_port`, bound to `metrics_bind`, loopback by
// default) that serves GET /metrics and nothing else. Kept apart from the Matrix APIs so that the
// public listener never exposes it and a scraper needs no route through the reverse proxy.
import { createServer, type Server } from "node:http";
import type { Logger } from "pino";
import type { Metrics } from "./metrics.ts";

export function listenForMetrics(metrics: Metrics, bind: string, port: number, logger: Logger): Promise<Server> {
  const server = createServer((req, res) => {
    const path = (req.url ?? "").split("?")[0];
    if (path !== "/metrics" || (req.method !== "GET" && req.method !== "HEAD")) {
      res.writeHead(404, { "Content-Type": "text/plain" }).end("Not found\n");
      return;
    }
    metrics.exposition().then(
      ({ body, contentType }) => {
        res.writeHead(200, { "Content-Type": contentType, "Cache-Control": "no-store" });
        res.end(req.method === "HEAD" ? undefined : body);
      },
      (err: unknown) => {
        // A collector failed (the database closing, say): this scrape fails, the next one may not.
        logger.warn({ err }, "collecting metrics failed");
        res.writeHead(500, { "Content-Type": "text/plain" }).end("Collecting metrics failed\n");
      },
    );
  });
  // A scraper keeps its connection open between scrapes: never let that hold up shutdown.
  server.keepAliveTimeout = 5_000;
  return new Promise((resolve, reject) => {
    server.once("listening", () => resolve(server));
    server.once("error", reject);
    server.listen(port, bind);
  });
}
