/** The dashboards' PromQL checked offline by promtool (Debian's prometheus package); skipped without it. */
import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { allTargets, loadDashboards } from "../../helpers/dashboards.js";
import { substituteGrafanaVariables } from "../../helpers/promql.js";

const dashboards = loadDashboards();
const targets = allTargets(dashboards);
const promtool = spawnSync("promtool", ["--version"]).status === 0;

describe("Grafana dashboards", () => {
  // The e2e test evaluates every expression on a live server; this catches syntax errors offline.
  it.skipIf(!promtool)("every expression is valid PromQL (promtool check rules; needs Debian's prometheus)", () => {
    const dir = mkdtempSync(join(tmpdir(), "moela-dash-rules-"));
    try {
      const rules = targets.map(({ file, target }, i) => {
        const vars = Object.fromEntries(dashboards.get(file)!.templating.list.map((v) => [v.name, ".*"]));
        const expr = substituteGrafanaVariables(target.expr, { interval: "1m", variables: vars });
        return `      - record: dashboard:expr_${i}\n        expr: ${JSON.stringify(expr)}`;
      });
      const path = join(dir, "rules.yml");
      writeFileSync(path, `groups:\n  - name: dashboards\n    rules:\n${rules.join("\n")}\n`);
      expect(execFileSync("promtool", ["check", "rules", path], { encoding: "utf8" })).toMatch(new RegExp(`SUCCESS: ${targets.length} rules found`));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
