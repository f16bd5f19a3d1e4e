/**
 * Write the Grafana dashboards (scripts/lib/dashboards.ts) as JSON.
 *
 *   npx tsx scripts/gen-dashboards.ts            # writes deploy/grafana/dashboards/*.json
 *   npx tsx scripts/gen-dashboards.ts --check    # exit 1 when a committed file differs
 */
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { DASHBOARDS_DIR, buildDashboards, dashboardText } from "./lib/dashboards.js";

const root = fileURLToPath(new URL("..", import.meta.url));
const dir = join(root, DASHBOARDS_DIR);
const check = process.argv.includes("--check");
let stale = 0;
mkdirSync(dir, { recursive: true });
for (const [file, dashboard] of Object.entries(buildDashboards())) {
  const path = join(dir, file);
  const text = dashboardText(dashboard);
  let current: string | undefined;
  try {
    current = readFileSync(path, "utf8");
  } catch {
    current = undefined;
  }
  if (current === text) continue;
  if (check) {
    process.stderr.write(`${join(DASHBOARDS_DIR, file)} is out of date; run npx tsx scripts/gen-dashboards.ts\n`);
    stale++;
  } else {
    writeFileSync(path, text);
    process.stdout.write(`wrote ${join(DASHBOARDS_DIR, file)}\n`);
  }
}
process.exitCode = stale > 0 ? 1 : 0;
