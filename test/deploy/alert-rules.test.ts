/**
 * The alert rules of deploy/prometheus/rules (the chart's PrometheusRule is the same files): they name only
 * metrics and labels of packages/metrics/src/names.ts, and `promtool test rules` shows each alert firing on
 * the series it is about and staying quiet on the ones it is not (client 4xx and cancellations are no
 * server failure).
 */
import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { parse as parseYaml } from "yaml";
import { LABEL, METRICS } from "@moela/metrics";
import { promqlNames } from "../helpers/promql.js";

const RULES_DIR = fileURLToPath(new URL("../../deploy/prometheus/rules/", import.meta.url));
const files = readdirSync(RULES_DIR)
  .filter((f) => /\.ya?ml$/.test(f))
  .sort();

interface Rule {
  alert?: string;
  record?: string;
  expr: string;
  annotations?: Record<string, string>;
}
const rules: Rule[] = files.flatMap((f) =>
  (parseYaml(readFileSync(join(RULES_DIR, f), "utf8")) as { groups: Array<{ rules: Rule[] }> }).groups.flatMap((g) => g.rules),
);

/** A rule's annotation as written (no templating in the descriptions compared). */
function annotation(alert: string, key: string): string {
  const a = rules.find((r) => r.alert === alert)?.annotations?.[key];
  if (a === undefined) throw new Error(`no ${key} on ${alert}`);
  return a;
}

const SERIES = new Set<string>(["up"]);
for (const def of Object.values(METRICS)) {
  SERIES.add(def.name);
  if (def.kind === "histogram") for (const s of ["_bucket", "_sum", "_count"]) SERIES.add(def.name + s);
}
const KNOWN_LABELS = new Set<string>([...Object.values(LABEL), "le", "instance", "job", "role"]);

describe("alert rules", () => {
  it("name only metrics and labels of names.ts (and up)", () => {
    expect(rules.map((r) => r.alert)).toEqual(expect.arrayContaining(["MoelaTargetDown", "MoelaServerFailureRatioHigh", "MoelaDecodeKvCacheFull"]));
    const problems: string[] = [];
    for (const r of rules) {
      const { metrics, labels } = promqlNames(r.expr);
      for (const m of metrics) if (!SERIES.has(m)) problems.push(`${r.alert ?? r.record}: unknown metric ${m}`);
      for (const l of labels) if (!KNOWN_LABELS.has(l)) problems.push(`${r.alert ?? r.record}: unknown label ${l}`);
    }
    expect(problems).toEqual([]);
  });

  const promtool = spawnSync("promtool", ["--version"]).status === 0;
  const FAILURE_DESCRIPTION = annotation("MoelaServerFailureRatioHigh", "description");
  const KV_DESCRIPTION = annotation("MoelaDecodeKvCacheFull", "description");
  it.skipIf(!promtool)("fire on server failures and a full KV cache, not on client 4xx or cancellations (promtool test rules)", () => {
    const requests = (outcome: string, perMinute: number) => ({
      series: `moela_router_requests_total{model="m",api="openai",outcome="${outcome}",role="router",instance="r:9400"}`,
      values: `0+${perMinute}x30`,
    });
    const test = {
      rule_files: files.map((f) => join(RULES_DIR, f)),
      evaluation_interval: "1m",
      tests: [
        {
          // 6 errors and 3 timeouts a minute beside 100 ok: 8% server failures.
          interval: "1m",
          input_series: [requests("ok", 100), requests("error", 6), requests("timeout", 3), requests("rejected", 0), requests("cancelled", 0)],
          alert_rule_test: [
            { eval_time: "3m", alertname: "MoelaServerFailureRatioHigh", exp_alerts: [] },
            {
              eval_time: "15m",
              alertname: "MoelaServerFailureRatioHigh",
              exp_alerts: [
                {
                  exp_labels: { severity: "warning" },
                  exp_annotations: { summary: "moela servers failed 8.257% of requests for 5 minutes", description: FAILURE_DESCRIPTION },
                },
              ],
            },
          ],
        },
        {
          // Half the requests refused (4xx) or abandoned by their clients, no server failure: quiet.
          interval: "1m",
          input_series: [requests("ok", 100), requests("error", 0), requests("timeout", 0), requests("rejected", 60), requests("cancelled", 40)],
          alert_rule_test: [{ eval_time: "15m", alertname: "MoelaServerFailureRatioHigh", exp_alerts: [] }],
        },
        {
          interval: "1m",
          input_series: [
            { series: 'moela_decode_kv_usage_ratio{role="decode",instance="d0:9400"}', values: "0.97x30" },
            { series: 'moela_decode_kv_usage_ratio{role="decode",instance="d1:9400"}', values: "0.5x30" },
          ],
          alert_rule_test: [
            { eval_time: "5m", alertname: "MoelaDecodeKvCacheFull", exp_alerts: [] },
            {
              eval_time: "15m",
              alertname: "MoelaDecodeKvCacheFull",
              exp_alerts: [
                {
                  exp_labels: { severity: "warning", instance: "d0:9400" },
                  exp_annotations: { summary: "decode d0:9400 has used over 95% of its KV cache for 10 minutes", description: KV_DESCRIPTION },
                },
              ],
            },
          ],
        },
      ],
    };
    const dir = mkdtempSync(join(tmpdir(), "moela-rules-test-"));
    try {
      const path = join(dir, "test.yml");
      writeFileSync(path, JSON.stringify(test));
      const out = execFileSync("promtool", ["test", "rules", path], { encoding: "utf8", stdio: "pipe" });
      expect(out).toMatch(/SUCCESS/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
