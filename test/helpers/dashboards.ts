/**
 * The committed Grafana dashboards as data, for the unit test (structure, metric names) and the
 * e2e test (a real Prometheus evaluates every expression).
 */
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { DASHBOARDS_DIR } from "../../scripts/lib/dashboards.js";

const REPO_ROOT = fileURLToPath(new URL("../../", import.meta.url));

export interface GrafanaTarget {
  refId: string;
  expr: string;
  legendFormat?: string;
  datasource?: { type?: string; uid?: string };
}

export interface GrafanaPanel {
  id: number;
  type: string;
  title: string;
  description?: string;
  datasource?: { type?: string; uid?: string };
  gridPos: { h: number; w: number; x: number; y: number };
  targets?: GrafanaTarget[];
  panels?: GrafanaPanel[];
  repeat?: string;
  fieldConfig?: { defaults?: { unit?: string } };
}

export interface GrafanaVariable {
  name: string;
  type: string;
  query: string | { query: string };
  datasource?: { type?: string; uid?: string };
}

export interface GrafanaDashboard {
  uid: string;
  title: string;
  schemaVersion: number;
  panels: GrafanaPanel[];
  templating: { list: GrafanaVariable[] };
}

export const DASHBOARDS_PATH = join(REPO_ROOT, DASHBOARDS_DIR);

/** file name -> parsed dashboard, for every *.json in the dashboards folder. */
export function loadDashboards(): Map<string, GrafanaDashboard> {
  const out = new Map<string, GrafanaDashboard>();
  for (const file of readdirSync(DASHBOARDS_PATH)
    .filter((f) => f.endsWith(".json"))
    .sort()) {
    out.set(file, JSON.parse(readFileSync(join(DASHBOARDS_PATH, file), "utf8")) as GrafanaDashboard);
  }
  return out;
}

/** Every panel, rows' nested panels included (rows themselves too). */
export function allPanels(d: GrafanaDashboard): GrafanaPanel[] {
  return d.panels.flatMap((p) => [p, ...(p.panels ?? [])]);
}

export interface LocatedTarget {
  readonly file: string;
  readonly panel: GrafanaPanel;
  readonly target: GrafanaTarget;
  /** "moela-overview.json / Requests per second by outcome / A" */
  readonly where: string;
}

export function allTargets(dashboards: Map<string, GrafanaDashboard>): LocatedTarget[] {
  return [...dashboards].flatMap(([file, d]) =>
    allPanels(d).flatMap((panel) => (panel.targets ?? []).map((target) => ({ file, panel, target, where: `${file} / ${panel.title} / ${target.refId}` }))),
  );
}

/** The query text of a template variable (Grafana stores it as a string or as {query}). */
export function variableQuery(v: GrafanaVariable): string {
  return typeof v.query === "string" ? v.query : v.query.query;
}
