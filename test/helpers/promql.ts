/**
 * Just enough PromQL reading for the dashboard tests: which metric names and which label names an
 * expression uses, and the concrete expression Prometheus can evaluate once Grafana's variables
 * are replaced. Not a parser: it relies on expressions being valid PromQL (the e2e test has a real
 * Prometheus evaluate them), and only has to tell metric names apart from functions, aggregation
 * operators, keywords, label names and literals.
 */

/** Aggregation operators: may be followed by `by (...)`/`without (...)` before their parenthesis. */
const AGGREGATIONS = new Set([
  "sum",
  "min",
  "max",
  "avg",
  "group",
  "stddev",
  "stdvar",
  "count",
  "count_values",
  "bottomk",
  "topk",
  "quantile",
  "limitk",
  "limit_ratio",
]);
/** Clauses whose parenthesised list holds label names. */
const LABEL_LISTS = new Set(["by", "without", "on", "ignoring", "group_left", "group_right"]);
/** Binary set operators and modifiers, and the float literals. */
const KEYWORDS = new Set(["and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"]);

export interface ExprNames {
  /** Series names selected (with histogram suffixes as written: foo_bucket). */
  readonly metrics: Set<string>;
  /** Label names in matchers and in by/without/on/ignoring/group_* lists. */
  readonly labels: Set<string>;
}

/** Metric and label names of one PromQL expression (Grafana variables allowed). */
export function promqlNames(expr: string): ExprNames {
  const metrics = new Set<string>();
  const labels = new Set<string>();
  // Strings can hold anything (label values, regexes): blank them, keeping the quotes.
  let s = expr.replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`/g, '""');
  // Label matchers: take the names, then drop the braces.
  s = s.replace(/\{([^}]*)\}/g, (_, body: string) => {
    for (const m of body.matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)/g)) labels.add(m[1]!);
    return " ";
  });
  // Range and subquery selectors ([5m], [$__rate_interval], [1h:1m]) hold no names.
  s = s.replace(/\[[^\]]*\]/g, " ");
  // Grafana variables outside those ($__interval as a number, ${var}).
  s = s.replace(/\$\{?[a-zA-Z_][a-zA-Z0-9_]*\}?/g, " ");
  // Numbers and durations (0.99, 1e-9, 5m, 1h30m) are one token, so a unit letter is no name.
  const tokens = [...s.matchAll(/\.?\d[\w.]*(?:[eE][-+]?\d+)?|[a-zA-Z_:][a-zA-Z0-9_:]*|\(|\)|[^\sa-zA-Z0-9_:()]+/g)].map((m) => m[0]);
  for (let i = 0; i < tokens.length; i++) {
    const t = tokens[i]!;
    if (!/^[a-zA-Z_:]/.test(t)) continue;
    const next = tokens[i + 1];
    if (LABEL_LISTS.has(t) && next === "(") {
      let j = i + 2;
      for (; j < tokens.length && tokens[j] !== ")"; j++) {
        if (/^[a-zA-Z_]/.test(tokens[j]!)) labels.add(tokens[j]!);
      }
      i = j;
      continue;
    }
    if (LABEL_LISTS.has(t) || KEYWORDS.has(t.toLowerCase())) continue;
    if (next === "(" || AGGREGATIONS.has(t)) continue; // a function call or an aggregation
    metrics.add(t);
  }
  return { metrics, labels };
}

/** Concrete values for Grafana's built-in variables, for evaluating an expression outside Grafana. */
export interface Substitutions {
  /** Stands for $__rate_interval, $__interval, $__range (a PromQL duration, e.g. "1m"). */
  readonly interval: string;
  /** Template variables: name -> replacement (a regex for =~ matchers, e.g. ".*"). */
  readonly variables: Readonly<Record<string, string>>;
}

/** `expr` with $__rate_interval & co and template variables ($v, ${v}, [[v]]) replaced. */
export function substituteGrafanaVariables(expr: string, sub: Substitutions): string {
  const builtins: Record<string, string> = {
    __rate_interval: sub.interval,
    __interval: sub.interval,
    __range: sub.interval,
    __interval_ms: "60000",
  };
  return expr.replace(/\$\{([a-zA-Z_][a-zA-Z0-9_]*)\}|\$([a-zA-Z_][a-zA-Z0-9_]*)|\[\[([a-zA-Z_][a-zA-Z0-9_]*)\]\]/g, (_whole, a, b, c) => {
    const name = (a ?? b ?? c) as string;
    const value = builtins[name] ?? sub.variables[name];
    if (value === undefined) throw new Error(`no value for Grafana variable $${name} in: ${expr}`);
    return value;
  });
}

/** `label_values(metric, label)` (a Grafana variable query) -> its parts; undefined for other queries. */
export function parseLabelValues(query: string): { metric: string; label: string } | undefined {
  const m = /^\s*label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)\s*$/.exec(query);
  return m === null ? undefined : { metric: m[1]!, label: m[2]! };
}
