/**
 * A minimal /metrics endpoint on node:http (one route does not need a framework). GET or HEAD
 * /metrics serves the registry in the Prometheus text format; anything else is 404; a failing
 * collector gives 500 with its message and no stack.
 */
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import type { Registry } from "prom-client";
import { errorMessage, InvalidArgumentError } from "@moela/core";

export interface MetricsServerOptions {
  /** Interface to bind (default 127.0.0.1; 0.0.0.0 or :: in a pod). */
  host?: string;
  /** Port; 0 picks a free one (default 0). */
  port?: number;
}

export interface MetricsServer {
  /** http://host:port/metrics with the port actually bound. */
  readonly url: string;
  /** Stops listening and drops open connections. */
  close(): Promise<void>;
}

export async function startMetricsServer(registry: Registry, options: MetricsServerOptions = {}): Promise<MetricsServer> {
  const host = options.host ?? "127.0.0.1";
  const port = options.port ?? 0;
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new InvalidArgumentError(`metrics server: port must be an integer in [0, 65535], got ${port}`);
  }
  const server = createServer((req, res) => {
    const path = (req.url ?? "/").split("?")[0];
    if (path !== "/metrics" || (req.method !== "GET" && req.method !== "HEAD")) {
      res.writeHead(404, { "content-type": "text/plain; charset=utf-8" }).end("not found; try GET /metrics\n");
      return;
    }
    registry.metrics().then(
      (body) => {
        res.writeHead(200, { "content-type": registry.contentType });
        res.end(req.method === "HEAD" ? undefined : body);
      },
      (err: unknown) => {
        res.writeHead(500, { "content-type": "text/plain; charset=utf-8" });
        res.end(`metrics collection failed: ${errorMessage(err)}\n`);
      },
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  const addr = server.address() as AddressInfo;
  const shown = addr.family === "IPv6" ? `[${addr.address}]` : addr.address;
  return {
    url: `http://${shown}:${addr.port}/metrics`,
    close: () =>
      new Promise<void>((resolve, reject) => {
        server.close((err) => (err ? reject(err) : resolve()));
        server.closeAllConnections();
      }),
  };
}
