/** Every service's /metrics output passes `promtool check metrics` (Debian's prometheus package); skipped without it. */
import { spawnSync } from "node:child_process";
import { describe, expect, it } from "vitest";
import { createServiceMetrics, type ServiceMetrics, type ServiceName } from "@moela/metrics";
import { exercise, metricsServersPerTest, SERVICES } from "../../helpers/metrics.js";

const promtool = (() => {
  const r = spawnSync("promtool", ["--version"], { encoding: "utf8" });
  return r.error === undefined && r.status === 0;
})();

/** prom-client's default gauges named _total, the only findings promtool may report. */
const ALLOWED_FINDINGS = ["nodejs_active_handles_total", "nodejs_active_requests_total", "nodejs_active_resources_total"];

const serveMetrics = metricsServersPerTest();

describe("startMetricsServer", () => {
  it.for(SERVICES)("%s: promtool check metrics passes (only the nodejs_active_*_total findings allowed)", async (service, ctx) => {
    if (!promtool) {
      console.warn("promtool not found (apt-get install -y prometheus brings it): skipping the promtool check only");
      ctx.skip();
      return;
    }
    const sm = createServiceMetrics(service, { perExpertSeries: true });
    exercise(sm as ServiceMetrics<ServiceName>);
    const server = await serveMetrics(sm.registry);
    const body = await (await fetch(server.url)).text();
    const r = spawnSync("promtool", ["check", "metrics"], { input: body, encoding: "utf8" });
    const findings = (r.stdout + r.stderr).split("\n").filter((l) => l.trim() !== "");
    if (r.status === 3) {
      const others = findings.filter((l) => !ALLOWED_FINDINGS.some((n) => l.startsWith(n + " ")));
      expect(others).toEqual([]);
    } else {
      expect({ status: r.status, findings }).toEqual({ status: 0, findings: [] });
    }
  });
});
