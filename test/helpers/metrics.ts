/** Shared by test/unit/metrics and test/integration/metrics. */
import { afterEach } from "vitest";
import { SERVICE_METRICS, startMetricsServer, type MetricsServer, type ServiceMetrics, type ServiceName } from "@moela/metrics";

/** Every service that has metrics. */
export const SERVICES = Object.keys(SERVICE_METRICS) as ServiceName[];

/** For a test file: startMetricsServer, each server it starts closed after its test. */
export function metricsServersPerTest(): (...args: Parameters<typeof startMetricsServer>) => Promise<MetricsServer> {
  const open: MetricsServer[] = [];
  afterEach(async () => {
    await Promise.all(open.splice(0).map((s) => s.close()));
  });
  return async (...args) => {
    const server = await startMetricsServer(...args);
    open.push(server);
    return server;
  };
}

/** Touches every metric of a service once, so each family has samples in the exposition. */
export function exercise(sm: ServiceMetrics<ServiceName>): void {
  for (const metric of Object.values(sm.m)) {
    const labels = Object.fromEntries(((metric as unknown as { labelNames: string[] }).labelNames ?? []).map((l) => [l, "x"]));
    if ("inc" in metric && !("set" in metric)) (metric as { inc(l: object, v: number): void }).inc(labels, 2);
    else if ("set" in metric) (metric as { set(l: object, v: number): void }).set(labels, 3);
    else (metric as { observe(l: object, v: number): void }).observe(labels, 0.02);
  }
}
