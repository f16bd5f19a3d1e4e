/** Shared by test/unit/metrics and test/integration/metrics. */
import type { ServiceMetrics, ServiceName } from "@moela/metrics";

/** Touches every metric of a service once, so each family has samples in the exposition. */
export function exercise(sm: ServiceMetrics<ServiceName>): void {
  for (const metric of Object.values(sm.m)) {
    const labels = Object.fromEntries(((metric as unknown as { labelNames: string[] }).labelNames ?? []).map((l) => [l, "x"]));
    if ("inc" in metric && !("set" in metric)) (metric as { inc(l: object, v: number): void }).inc(labels, 2);
    else if ("set" in metric) (metric as { set(l: object, v: number): void }).set(labels, 3);
    else (metric as { observe(l: object, v: number): void }).observe(labels, 0.02);
  }
}
