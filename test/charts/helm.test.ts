/**
 * charts/moela: `helm lint --strict` and `helm template` for every charts/moela/ci/*-values.yaml, each
 * rendered manifest checked against the Kubernetes schemas (kubernetes-models; the CRD kinds by their
 * required fields), then:
 * - every pod against the restricted Pod Security Standard (pod-security.ts) with a read-only root and an
 *   emptyDir for what it writes; resource requests and limits; no GPU in any scenario;
 * - the topology: one expert-host StatefulSet per shard, its pods labelled with the shard and serving it,
 *   one PodDisruptionBudget per shard keeping a pod of it up; decode and prefill given every pod's address
 *   grouped per shard; the router given every decode replica as a seed; decode and expert-host pods
 *   advertising exactly their seed address;
 * - every pod knob from values (probes and their timeouts, scheduling, topology spread, extraPodSpec);
 * - credentials only from Secrets (API key, internal secret, external Redis URL) and TLS from a mounted Secret;
 * - NetworkPolicies evaluated connection by connection (network-policy.ts): only the callers reach a port;
 * - the PrometheusRule equal to deploy/prometheus/rules, the KEDA ScaledObjects on real metric names;
 * - every pod's flags and Secret-fed environment accepted by that service's own config parser.
 */
import { execFileSync } from "node:child_process";
import { lstatSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, realpathSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { METRICS } from "@moela/metrics";
import { Deployment, StatefulSet } from "kubernetes-models/apps/v1";
import { NetworkPolicy } from "kubernetes-models/networking.k8s.io/v1";
import { PodDisruptionBudget } from "kubernetes-models/policy/v1";
import { ConfigMap, Secret, Service } from "kubernetes-models/v1";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseAllDocuments, parse as parseYaml } from "yaml";
import { REPO_ROOT, ensureHelm } from "../helpers/helm.js";
import { SERVICE_ROLES, flagValue, hasServiceConfig, serviceConfigPath, type ServiceRole } from "../helpers/service-flags.js";
import { ingressAllowed, selectorMatches, type PodRef } from "./network-policy.js";
import { restrictedViolations, writableMounts } from "./pod-security.js";

const CHART = join(REPO_ROOT, "charts/moela");
const DASHBOARDS = join(REPO_ROOT, "deploy/grafana/dashboards");
const RULES = join(REPO_ROOT, "deploy/prometheus/rules");
const RELEASE = "ci";
const NAMESPACE = "inference";
const SHARD_LABEL = "moela.io/shard";
const SCENARIOS = readdirSync(join(CHART, "ci"))
  .filter((f) => f.endsWith("-values.yaml"))
  .sort();

// ---- rendering ------------------------------------------------------------------------------------

type Obj = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any -- rendered YAML

let helm = "";

function runHelm(args: readonly string[]): string {
  try {
    return execFileSync(helm, args, { cwd: REPO_ROOT, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"], timeout: 60_000, maxBuffer: 256 * 1024 * 1024 });
  } catch (err) {
    const e = err as { stderr?: string; stdout?: string; message: string };
    throw new Error(`helm ${args.join(" ")} failed:\n${e.stderr || e.stdout || e.message}`);
  }
}

function render(extra: readonly string[]): Obj[] {
  const out = runHelm(["template", RELEASE, CHART, "--namespace", NAMESPACE, ...extra]);
  const docs = parseAllDocuments(out);
  for (const d of docs) if (d.errors.length > 0) throw new Error(`helm template produced invalid YAML: ${d.errors[0]!.message}`);
  return docs.map((d) => d.toJS() as Obj | null).filter((o): o is Obj => o !== null);
}

/** values.yaml deep-merged with a scenario file (maps merge, everything else replaces), as helm does. */
function mergeValues(base: Obj, over: Obj): Obj {
  const out: Obj = { ...base };
  for (const [k, v] of Object.entries(over)) {
    out[k] = v !== null && typeof v === "object" && !Array.isArray(v) && typeof base[k] === "object" && base[k] !== null ? mergeValues(base[k], v) : v;
  }
  return out;
}

function defaultValues(): Obj {
  return parseYaml(readFileSync(join(CHART, "values.yaml"), "utf8")) as Obj;
}

function scenarioValues(file: string): Obj {
  return mergeValues(defaultValues(), (parseYaml(readFileSync(join(CHART, "ci", file), "utf8")) as Obj | null) ?? {});
}

// ---- schema validation ------------------------------------------------------------------------------

const MODELS: Record<string, new (o: Obj) => { validate(): void }> = {
  "apps/v1 Deployment": Deployment,
  "apps/v1 StatefulSet": StatefulSet,
  "v1 Service": Service,
  "v1 ConfigMap": ConfigMap,
  "v1 Secret": Secret,
  "policy/v1 PodDisruptionBudget": PodDisruptionBudget,
  "networking.k8s.io/v1 NetworkPolicy": NetworkPolicy,
};

/** prometheus-operator's ServiceMonitor is no built-in kind: check the fields the operator requires. */
function validateServiceMonitor(o: Obj): void {
  expect(o.metadata?.name).toBeTypeOf("string");
  expect(o.spec?.selector?.matchLabels).toBeTypeOf("object");
  expect(Array.isArray(o.spec?.endpoints) && o.spec.endpoints.length > 0).toBe(true);
  for (const e of o.spec.endpoints) {
    expect(e.port).toBeTypeOf("string");
    expect(e.interval).toMatch(/^([0-9]+(ms|s|m|h))+$/);
  }
}

/** PrometheusRule (monitoring.coreos.com/v1): named groups of rules, each an alert or a record with an expr. */
function validatePrometheusRule(o: Obj): void {
  expect(o.metadata?.name).toBeTypeOf("string");
  expect(Array.isArray(o.spec?.groups) && o.spec.groups.length > 0).toBe(true);
  for (const g of o.spec.groups as Obj[]) {
    expect(g.name).toBeTypeOf("string");
    for (const r of g.rules as Obj[]) {
      expect(typeof r.alert === "string" || typeof r.record === "string", JSON.stringify(r)).toBe(true);
      expect(r.expr).toBeTypeOf("string");
    }
  }
}

/** KEDA ScaledObject (keda.sh/v1alpha1): a scale target and triggers; prometheus triggers need serverAddress, query, threshold. */
function validateScaledObject(o: Obj): void {
  expect(o.spec?.scaleTargetRef?.name).toBeTypeOf("string");
  expect(Number.isInteger(o.spec.minReplicaCount) && Number.isInteger(o.spec.maxReplicaCount)).toBe(true);
  expect(o.spec.minReplicaCount).toBeLessThanOrEqual(o.spec.maxReplicaCount);
  for (const t of o.spec.triggers as Obj[]) {
    expect(["AverageValue", "Value", "Utilization"]).toContain(t.metricType);
    if (t.type !== "prometheus") continue;
    for (const k of ["serverAddress", "query", "threshold"]) expect(t.metadata[k], k).toBeTypeOf("string");
    expect(Number.isFinite(Number(t.metadata.threshold))).toBe(true);
  }
}

function validateManifest(o: Obj): void {
  const key = `${o.apiVersion} ${o.kind}`;
  if (key === "monitoring.coreos.com/v1 ServiceMonitor") return validateServiceMonitor(o);
  if (key === "monitoring.coreos.com/v1 PrometheusRule") return validatePrometheusRule(o);
  if (key === "keda.sh/v1alpha1 ScaledObject") return validateScaledObject(o);
  const Model = MODELS[key];
  if (Model === undefined) throw new Error(`rendered a ${key} (${o.metadata?.name}), which this test does not know how to validate`);
  try {
    new Model(o).validate();
  } catch (err) {
    throw new Error(`${key} ${o.metadata?.name} does not match the Kubernetes schema: ${(err as Error).message}`);
  }
}

// ---- lookups -------------------------------------------------------------------------------------

function find(objs: readonly Obj[], kind: string, name: string): Obj {
  const o = objs.find((x) => x.kind === kind && x.metadata.name === name);
  if (o === undefined) throw new Error(`no ${kind} ${name} among ${objs.map((x) => `${x.kind}/${x.metadata.name}`).join(", ")}`);
  return o;
}

const fullname = `${RELEASE}-moela`;
const WORKLOAD_KIND: Record<ServiceRole, string> = { router: "Deployment", prefill: "Deployment", decode: "StatefulSet", "expert-host": "StatefulSet" };
const VALUES_KEY: Record<ServiceRole, string> = { router: "router", prefill: "prefill", decode: "decode", "expert-host": "expertHost" };
const ENV_PREFIX: Record<ServiceRole, string> = {
  router: "MOELA_ROUTER_",
  prefill: "MOELA_PREFILL_",
  decode: "MOELA_DECODE_",
  "expert-host": "MOELA_EXPERT_HOST_",
};

/** The one workload of router, prefill or decode. */
function workload(objs: readonly Obj[], role: Exclude<ServiceRole, "expert-host">): Obj {
  return find(objs, WORKLOAD_KIND[role], `${fullname}-${role}`);
}
/** The expert-host StatefulSets, shard s at index s. */
function shardSets(objs: readonly Obj[], shards: number): Obj[] {
  return Array.from({ length: shards }, (_, s) => find(objs, "StatefulSet", `${fullname}-expert-host-${s}`));
}
/** Every workload of a role (expert-host: one per shard). */
function workloads(objs: readonly Obj[], role: ServiceRole): Obj[] {
  if (role !== "expert-host") return [workload(objs, role)];
  return objs.filter((o) => o.kind === "StatefulSet" && o.spec.template.metadata.labels["app.kubernetes.io/component"] === "expert-host");
}
/** Every rendered workload with a pod template. */
function podWorkloads(objs: readonly Obj[]): Obj[] {
  return objs.filter((o) => ["Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"].includes(o.kind));
}
function pod(w: Obj): Obj {
  return w.spec.template.spec;
}
function container(w: Obj): Obj {
  return pod(w).containers[0];
}
function args(w: Obj): string[] {
  return container(w).args as string[];
}
function envEntry(w: Obj, name: string): Obj | undefined {
  return ((container(w).env ?? []) as Obj[]).find((e) => e.name === name);
}
function matches(selector: Record<string, string>, labels: Record<string, string>): boolean {
  return Object.entries(selector).every(([k, v]) => labels[k] === v);
}
/** <sts>-<i>.<headless svc>.<namespace>.svc:<port>: pod i's stable DNS name. */
function podAddress(sts: string, i: number, port: number, svc = sts): string {
  return `${sts}-${i}.${svc}.${NAMESPACE}.svc:${port}`;
}
/** Every pod's address for i in [0, n), comma-separated. */
function podAddresses(sts: string, n: number, port: number): string {
  return Array.from({ length: n }, (_, i) => podAddress(sts, i, port)).join(",");
}
/** Expert-host pods grouped per shard in shard order: shard s is StatefulSet expert-host-<s>'s pods joined by "|". */
function expertHostGroups(values: Obj): string[] {
  const { shards, replicasPerShard } = values.expertHost as { shards: number; replicasPerShard: number };
  return Array.from({ length: shards }, (_, s) =>
    Array.from({ length: replicasPerShard }, (_, r) => podAddress(`${fullname}-expert-host-${s}`, r, values.ports.grpc, `${fullname}-expert-host`)).join("|"),
  );
}
function externalRedis(values: Obj): boolean {
  return values.redis.enabled === false;
}

// ---- a pod's view: Secrets, its environment, Kubernetes' $(VAR) expansion ----------------------------

/** Contents this test gives Secrets the chart only names (existingSecret): a Redis URL where one is expected. */
function existingSecretValue(secret: string, key: string, env: string): string {
  return env.endsWith("_REDIS_URL") ? `redis://:pw-${secret}@${secret}.example:6379/0` : `${secret}.${key}.0123456789abcdef`;
}

function secretValue(objs: readonly Obj[], secret: string, key: string, env: string): string {
  const own = objs.find((o) => o.kind === "Secret" && o.metadata.name === secret);
  if (own === undefined) return existingSecretValue(secret, key, env);
  const b64 = own.data?.[key] as string | undefined;
  if (b64 === undefined) throw new Error(`Secret ${secret} has no key ${key}`);
  return Buffer.from(b64, "base64").toString("utf8");
}

/** The environment pod `ordinal` of workload `w` gets: literals, downward-API fields, Secret keys. */
function podEnv(objs: readonly Obj[], w: Obj, ordinal: number): Record<string, string> {
  const env: Record<string, string> = {};
  for (const e of (container(w).env ?? []) as Obj[]) {
    if (typeof e.value === "string") env[e.name] = expandK8s(e.value, env);
    else if (e.valueFrom?.fieldRef?.fieldPath === "metadata.name") env[e.name] = `${w.metadata.name}-${ordinal}`;
    else if (e.valueFrom?.secretKeyRef !== undefined) env[e.name] = secretValue(objs, e.valueFrom.secretKeyRef.name, e.valueFrom.secretKeyRef.key, e.name);
    else throw new Error(`${w.metadata.name}: env ${e.name} has a source this test does not emulate: ${JSON.stringify(e)}`);
  }
  return env;
}

/**
 * Kubernetes' expansion of command, args and env values (k8s.io/kubernetes third_party/forked/golang/
 * expansion): $(NAME) of a defined variable becomes its value, an undefined one stays as written,
 * $$ is a literal $, and any other $ stays.
 */
function expandK8s(input: string, env: Readonly<Record<string, string>>): string {
  let out = "";
  for (let i = 0; i < input.length; i++) {
    const c = input[i]!;
    if (c !== "$" || i + 1 >= input.length) {
      out += c;
      continue;
    }
    const next = input[i + 1]!;
    if (next === "$") {
      out += "$";
      i += 1;
    } else if (next === "(") {
      const close = input.indexOf(")", i + 2);
      if (close < 0) {
        out += "$(";
        i += 1;
      } else {
        const name = input.slice(i + 2, close);
        out += Object.hasOwn(env, name) ? env[name] : `$(${name})`;
        i = close;
      }
    } else {
      out += `$${next}`;
      i += 1;
    }
  }
  return out;
}

/** The flags pod `ordinal` gets, $(VAR)-expanded with its environment (the image's entrypoint runs them). */
function podServiceArgs(objs: readonly Obj[], w: Obj, ordinal: number): string[] {
  expect(container(w).command, `${w.metadata.name}: the image's own entrypoint runs the role`).toBeUndefined();
  const env = podEnv(objs, w, ordinal);
  return args(w).map((x) => expandK8s(x, env));
}

/**
 * PEM-shaped stand-ins for the files the TLS Secret mounts (the services read and check them at start-up),
 * written once to a scratch folder; podEnv paths under tls.mountPath are mapped there.
 */
let pemDir = "";
function localTlsEnv(env: Record<string, string>, mountPath: string): Record<string, string> {
  if (pemDir === "") {
    pemDir = mkdtempSync(join(tmpdir(), "moela-chart-tls-"));
    mkdirSync(pemDir, { recursive: true });
    const cert = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    writeFileSync(join(pemDir, "tls.crt"), cert);
    writeFileSync(join(pemDir, "ca.crt"), cert);
    writeFileSync(join(pemDir, "tls.key"), "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n");
  }
  return Object.fromEntries(Object.entries(env).map(([k, v]) => [k, v.startsWith(`${mountPath}/`) ? join(pemDir, v.slice(mountPath.length + 1)) : v]));
}

type Parse = (argv: readonly string[], env: NodeJS.ProcessEnv) => unknown;

/**
 * Parse a pod's flags and environment as the role's service does at start-up (its config.ts). The --model
 * value (a path inside the container) is swapped for the repository's tiny model, whose config.json the
 * parsers read; everything else is checked as the pod gets it.
 */
async function parsePod(role: ServiceRole, argv: readonly string[], env: Record<string, string>): Promise<Record<string, unknown>> {
  const mod = (await import(pathToFileURL(serviceConfigPath(role)).href)) as Record<string, unknown>;
  const names = Object.keys(mod).filter((k) => /^parse\w*Config$/.test(k) && typeof mod[k] === "function");
  if (names.length !== 1) throw new Error(`${serviceConfigPath(role)}: expected one parse*Config export, found [${names.join(", ")}]`);
  const at = argv.indexOf("--model");
  const local = argv.map((a, i) => (at >= 0 && i === at + 1 ? join(REPO_ROOT, "models/tiny-v3") : a));
  const cfg = (mod[names[0]!] as Parse)(local, env);
  if (cfg === null || typeof cfg !== "object") throw new Error(`${role}: parser returned ${String(cfg)} for ${local.join(" ")}`);
  return cfg as Record<string, unknown>;
}

/** Every string value in a rendered object, outside Secrets (where a credential must not appear). */
function plainStrings(objs: readonly Obj[]): string[] {
  const out: string[] = [];
  const walk = (x: unknown): void => {
    if (typeof x === "string") out.push(x);
    else if (Array.isArray(x)) x.forEach(walk);
    else if (x !== null && typeof x === "object") Object.values(x).forEach(walk);
  };
  objs.filter((o) => o.kind !== "Secret").forEach(walk);
  return out;
}

// ---- the tests -------------------------------------------------------------------------------------

beforeAll(() => {
  helm = ensureHelm();
}, 180_000);

afterAll(() => {
  if (pemDir !== "") rmSync(pemDir, { recursive: true, force: true });
});

describe("charts/moela", () => {
  it("has ci scenarios covering defaults, shard replicas, external Redis, monitoring + autoscaling, several replicas, chart-made and existing Secrets with TLS and NetworkPolicies", () => {
    expect(SCENARIOS).toEqual([
      "default-values.yaml",
      "expert-replicas-values.yaml",
      "external-redis-values.yaml",
      "hardened-values.yaml",
      "multi-replica-values.yaml",
      "pvc-monitoring-values.yaml",
      "secrets-values.yaml",
    ]);
    // every optional feature is on in at least one scenario, so it is rendered and checked below
    const all = SCENARIOS.map(scenarioValues);
    for (const on of [
      (v: Obj) => v.networkPolicy.enabled,
      (v: Obj) => v.prometheusRule.enabled,
      (v: Obj) => v.autoscaling.enabled,
      (v: Obj) => v.serviceMonitor.enabled,
      (v: Obj) => v.tls.enabled && v.tls.clientAuth,
      (v: Obj) => v.secrets.apiKey.value !== "" && v.secrets.internalSecret.value !== "",
      (v: Obj) => v.secrets.apiKey.existingSecret !== "" && v.secrets.internalSecret.existingSecret !== "" && v.redis.existingSecret !== "",
      (v: Obj) => v.expertHost.replicasPerShard > 1,
      (v: Obj) => Object.keys(v.decode.extraPodSpec).length > 0 && v.router.topologySpreadConstraints.length > 0,
    ]) {
      expect(all.some(on), on.toString()).toBe(true);
    }
  });

  it("reads its dashboards and alert rules through symlinks to deploy/, so the two cannot drift", () => {
    for (const [link, target] of [
      ["dashboards", DASHBOARDS],
      ["prometheus-rules", RULES],
    ] as const) {
      expect(lstatSync(join(CHART, link)).isSymbolicLink(), link).toBe(true);
      expect(realpathSync(join(CHART, link)), link).toBe(realpathSync(target));
    }
    expect(readdirSync(DASHBOARDS).filter((f) => f.endsWith(".json")).length).toBeGreaterThan(0);
    expect(readdirSync(RULES).filter((f) => /\.ya?ml$/.test(f)).length).toBeGreaterThan(0);
  });

  describe.each(SCENARIOS)("%s", (file) => {
    const values = scenarioValues(file);
    const valuesArgs = ["--values", join(CHART, "ci", file)];
    const { shards, replicasPerShard } = values.expertHost as { shards: number; replicasPerShard: number };
    let objs: Obj[] = [];
    beforeAll(() => {
      objs = render(valuesArgs);
    });

    it("passes helm lint --strict", () => {
      const out = runHelm(["lint", CHART, "--strict", ...valuesArgs]);
      expect(out).toMatch(/1 chart\(s\) linted, 0 chart\(s\) failed/);
    });

    it("renders only manifests that match the Kubernetes schemas, with unique names per kind", () => {
      expect(objs.length).toBeGreaterThan(8);
      for (const o of objs) validateManifest(o);
      const ids = objs.map((o) => `${o.kind}/${o.metadata.name}`);
      expect(new Set(ids).size).toBe(ids.length);
    });

    it("passes the restricted Pod Security Standard in every pod, with a read-only root and an emptyDir for /tmp", () => {
      const ws = podWorkloads(objs);
      expect(ws.length).toBe(3 + shards + (values.redis.enabled ? 1 : 0));
      for (const w of ws) {
        expect(restrictedViolations(pod(w)), `${w.kind}/${w.metadata.name}`).toEqual([]);
        const p = pod(w);
        expect(p.securityContext.seccompProfile?.type, w.metadata.name).toBe("RuntimeDefault");
        expect(p.securityContext.runAsNonRoot, w.metadata.name).toBe(true);
        for (const c of p.containers as Obj[]) {
          const writable = writableMounts(p, c);
          expect(writable, `${w.metadata.name}/${c.name}`).toContain("/tmp");
          if (c.name === "redis") expect(writable).toContain("/data");
          const tmp = (p.volumes as Obj[]).find((v) => v.name === (c.volumeMounts as Obj[]).find((m) => m.mountPath === "/tmp")?.name);
          expect(tmp?.emptyDir, `${w.metadata.name}: /tmp is an emptyDir`).toBeDefined();
        }
      }
    });

    it("gives every container resource requests and limits for cpu and memory, and no GPU", () => {
      for (const w of podWorkloads(objs)) {
        for (const c of pod(w).containers as Obj[]) {
          const where = `${w.metadata.name}/${c.name}`;
          for (const kind of ["requests", "limits"]) for (const r of ["cpu", "memory"]) expect(c.resources?.[kind]?.[r], `${where} ${kind}.${r}`).toBeDefined();
          expect(JSON.stringify(c.resources), where).not.toContain("gpu");
        }
      }
      for (const role of SERVICE_ROLES) expect(values[VALUES_KEY[role]].gpu, role).toBe(0);
    });

    it("runs one expert-host StatefulSet per shard, its pods labelled with the shard, serving it and registering their own address", () => {
      const sets = shardSets(objs, shards);
      expect(workloads(objs, "expert-host").length).toBe(shards);
      const svc = find(objs, "Service", `${fullname}-expert-host`);
      expect(svc.spec.clusterIP).toBe("None");
      sets.forEach((sts, s) => {
        expect(sts.spec.replicas, `shard ${s}`).toBe(replicasPerShard);
        expect(sts.spec.serviceName).toBe(`${fullname}-expert-host`);
        expect(sts.spec.template.metadata.labels[SHARD_LABEL]).toBe(String(s));
        expect(sts.spec.selector.matchLabels[SHARD_LABEL]).toBe(String(s));
        expect(matches(svc.spec.selector, sts.spec.template.metadata.labels)).toBe(true);
        // no StatefulSet's selector claims another shard's pods
        for (const other of sets) if (other !== sts) expect(matches(sts.spec.selector.matchLabels, other.spec.template.metadata.labels)).toBe(false);
        // a StatefulSet name over 52 characters gives its pods an invalid controller-revision-hash label
        expect(sts.metadata.name.length).toBeLessThanOrEqual(52);
        for (let r = 0; r < replicasPerShard; r++) {
          const a = podServiceArgs(objs, sts, r);
          expect(flagValue(a, "--shard-index"), `shard ${s} pod ${r}`).toBe(String(s));
          expect(flagValue(a, "--shard-count")).toBe(String(shards));
          expect(flagValue(a, "--advertise-address")).toBe(podAddress(sts.metadata.name, r, values.ports.grpc, `${fullname}-expert-host`));
        }
      });
    });

    it("has one PodDisruptionBudget per expert-host shard that keeps a pod of it up, and one per other role", () => {
      const pdbs = objs.filter((o) => o.kind === "PodDisruptionBudget");
      const on = (role: ServiceRole) => values[VALUES_KEY[role]].pdb.enabled as boolean;
      shardSets(objs, shards).forEach((sts, s) => {
        const own = pdbs.filter((p) => matches(p.spec.selector.matchLabels, sts.spec.template.metadata.labels));
        expect(own.length, `shard ${s}`).toBe(on("expert-host") ? 1 : 0);
        if (own.length === 0) return;
        const pdb = own[0]!;
        expect(pdb.spec.selector.matchLabels[SHARD_LABEL]).toBe(String(s));
        // a voluntary disruption may take replicas - minAvailable of the shard's pods: never all of them
        expect(pdb.spec.maxUnavailable).toBeUndefined();
        expect(pdb.spec.minAvailable).toBe(values.expertHost.pdb.minAvailable);
        expect(pdb.spec.minAvailable).toBeGreaterThanOrEqual(1);
        expect(replicasPerShard - pdb.spec.minAvailable).toBeLessThan(replicasPerShard);
      });
      for (const role of ["router", "prefill", "decode"] as const) {
        const w = workload(objs, role);
        const own = pdbs.filter((p) => matches(p.spec.selector.matchLabels, w.spec.template.metadata.labels));
        expect(own.length, role).toBe(on(role) ? 1 : 0);
        if (own.length === 1) expect(own[0]!.spec.maxUnavailable).toEqual(values[VALUES_KEY[role]].pdb.maxUnavailable);
      }
    });

    it("gives decode and prefill every expert-host pod's stable address, grouped per shard in shard order", () => {
      const expected = expertHostGroups(values).join(",");
      expect(flagValue(args(workload(objs, "decode")), "--expert-hosts")).toBe(expected);
      expect(flagValue(args(workload(objs, "prefill")), "--expert-hosts")).toBe(expected);
    });

    it("gives the router every decode replica's own address as a seed, the address that replica registers", () => {
      const decode = workload(objs, "decode");
      expect(find(objs, "Service", `${fullname}-decode`).spec.clusterIP).toBe("None");
      const router = workload(objs, "router");
      const seeds = podAddresses(`${fullname}-decode`, values.decode.replicas, values.ports.grpc);
      expect(flagValue(args(router), "--decode")).toBe(seeds);
      const advertised = Array.from({ length: values.decode.replicas }, (_, i) => flagValue(podServiceArgs(objs, decode, i), "--advertise-address"));
      expect(advertised.join(",")).toBe(seeds);
      expect(router.spec.replicas).toBe(values.router.replicas);
    });

    it("sets prefill and decode replicas unless KEDA scales them, then leaves the count to their ScaledObjects", () => {
      const scaled = objs.filter((o) => o.kind === "ScaledObject");
      for (const role of ["prefill", "decode"] as const) {
        const w = workload(objs, role);
        if (!values.autoscaling.enabled) {
          expect(w.spec.replicas, role).toBe(values[role].replicas);
          continue;
        }
        expect(w.spec.replicas, `${role}: a replicas field would undo KEDA's count on every upgrade`).toBeUndefined();
        const so = scaled.filter((o) => o.spec.scaleTargetRef.name === w.metadata.name);
        expect(so.length, role).toBe(1);
        expect(so[0]!.spec.scaleTargetRef.kind).toBe(w.kind);
        expect(so[0]!.spec.scaleTargetRef.apiVersion).toBe(w.apiVersion);
        expect([so[0]!.spec.minReplicaCount, so[0]!.spec.maxReplicaCount]).toEqual([
          values.autoscaling[role].minReplicas,
          values.autoscaling[role].maxReplicas,
        ]);
      }
      expect(scaled.length).toBe(values.autoscaling.enabled ? 2 : 0);
    });

    it.runIf(values.autoscaling.enabled)("scales prefill on the queue depth and decode on KV usage, with metric names from packages/metrics", () => {
      const gauges = new Map(Object.values(METRICS).map((m) => [m.name as string, m.kind as string]));
      const trigger = (role: "prefill" | "decode"): Obj => {
        const so = objs.find((o) => o.kind === "ScaledObject" && o.spec.scaleTargetRef.name === `${fullname}-${role}`)!;
        expect(so.spec.triggers.length).toBe(1);
        const t = so.spec.triggers[0] as Obj;
        expect(t.type).toBe("prometheus");
        expect(t.metadata.serverAddress).toBe(values.autoscaling.prometheusAddress);
        // every metric the query names is a gauge of names.ts, selected in this release's namespace
        const names = [...(t.metadata.query as string).matchAll(/\b(moela_[a-z0-9_]+)\{([^}]*)\}/g)];
        expect(names.length, t.metadata.query).toBeGreaterThan(0);
        for (const [, name, selector] of names) {
          expect(gauges.get(name!), `${name} in packages/metrics/src/names.ts`).toBe("gauge");
          expect(selector).toContain(`namespace="${NAMESPACE}"`);
        }
        return t;
      };
      const p = trigger("prefill");
      expect(p.metadata.query).toMatch(/^max\(moela_router_queue_depth\{[^}]*service="ci-moela-router"[^}]*\}\)$/);
      expect(p.metricType).toBe("AverageValue");
      expect(Number(p.metadata.threshold)).toBe(values.autoscaling.prefill.queueDepthPerReplica);
      const d = trigger("decode");
      expect(d.metadata.query).toMatch(/^sum\(moela_decode_kv_blocks_used\{[^}]*\}\) \/ sum\(moela_decode_kv_blocks_capacity\{[^}]*\}\)$/);
      expect(d.metricType).toBe("Value");
      expect(Number(d.metadata.threshold)).toBe(values.autoscaling.decode.kvUsage);
    });

    it("gives every service the registry's Redis key prefix exactly when queuePrefix is set", () => {
      for (const role of SERVICE_ROLES) {
        for (const w of workloads(objs, role))
          expect(flagValue(args(w), "--queue-prefix"), role).toBe(values.queuePrefix === "" ? undefined : values.queuePrefix);
      }
    });

    it("probes every service on its gRPC port (gRPC health, or TCP under TLS) with the timings and timeouts of values", () => {
      for (const role of SERVICE_ROLES) {
        const overrides = (values[VALUES_KEY[role]].probes ?? {}) as Obj;
        for (const w of workloads(objs, role)) {
          const c = container(w);
          const grpcPort = (c.ports as Obj[]).find((p) => p.name === "grpc")?.containerPort;
          expect(grpcPort, role).toBe(values.ports.grpc);
          for (const [field, kind] of [
            ["startupProbe", "startup"],
            ["readinessProbe", "readiness"],
            ["livenessProbe", "liveness"],
          ] as const) {
            const probe = c[field] as Obj;
            if (values.tls.enabled) {
              expect(probe.tcpSocket?.port, `${role} ${field}`).toBe("grpc");
              expect(probe.grpc).toBeUndefined();
            } else {
              expect(probe.grpc?.port, `${role} ${field}`).toBe(grpcPort);
            }
            const want = { ...values.probes[kind], ...(overrides[kind] ?? {}) } as Obj;
            for (const [k, v] of Object.entries(want)) expect(probe[k], `${role} ${field}.${k}`).toBe(v);
            expect(probe.timeoutSeconds, `${role} ${field}`).toBeGreaterThanOrEqual(1);
          }
        }
      }
    });

    it("takes every pod knob from values: scheduling, topology spread, priority, labels, extraPodSpec", () => {
      for (const role of SERVICE_ROLES) {
        const v = values[VALUES_KEY[role]] as Obj;
        for (const w of workloads(objs, role)) {
          const p = pod(w);
          const empty = (x: unknown) => x === undefined || (Array.isArray(x) ? x.length === 0 : typeof x === "object" && Object.keys(x as object).length === 0);
          for (const k of ["nodeSelector", "tolerations", "affinity", "topologySpreadConstraints"]) {
            if (Object.hasOwn(v.extraPodSpec, k)) continue;
            if (empty(v[k])) expect(p[k], `${role} ${k}`).toBeUndefined();
            else expect(p[k], `${role} ${k}`).toEqual(v[k]);
          }
          expect(p.priorityClassName, role).toBe(v.priorityClassName === "" ? undefined : v.priorityClassName);
          for (const [k, val] of Object.entries(v.podLabels as Record<string, string>))
            expect(w.spec.template.metadata.labels[k], `${role} label ${k}`).toBe(val);
          for (const [k, val] of Object.entries(v.extraPodSpec as Obj)) expect(p[k], `${role} extraPodSpec.${k}`).toEqual(val);
        }
      }
    });

    it("runs every role from the one image, the role an argument (serve --role R)", () => {
      const tag = values.image.tag === "" ? (parseYaml(readFileSync(join(CHART, "Chart.yaml"), "utf8")) as Obj).appVersion : values.image.tag;
      for (const role of SERVICE_ROLES) {
        for (const w of workloads(objs, role)) {
          expect(container(w).image, role).toBe(`${values.image.repository}:${tag}`);
          expect(podServiceArgs(objs, w, 0).slice(0, 3), role).toEqual(["serve", "--role", role]);
        }
      }
    });

    it("gives every pod a termination grace period longer than the longest service drain (30 s)", () => {
      for (const role of SERVICE_ROLES) {
        for (const w of workloads(objs, role)) {
          const grace = pod(w).terminationGracePeriodSeconds as number;
          expect(grace, role).toBe(values.terminationGracePeriodSeconds);
          expect(grace, role).toBeGreaterThan(30);
        }
      }
    });

    it("passes the precision profile to every service", () => {
      for (const role of SERVICE_ROLES) for (const w of workloads(objs, role)) expect(flagValue(args(w), "--precision"), role).toBe(values.precision);
    });

    it("exposes each role through a Service whose selector and target ports match its pods", () => {
      for (const role of SERVICE_ROLES) {
        const svc = find(objs, "Service", `${fullname}-${role}`);
        for (const w of workloads(objs, role)) {
          expect(matches(svc.spec.selector, w.spec.template.metadata.labels), role).toBe(true);
          expect(matches(w.spec.selector.matchLabels, w.spec.template.metadata.labels), role).toBe(true);
          const portNames = new Set((container(w).ports as Obj[]).map((p) => p.name));
          for (const p of svc.spec.ports as Obj[]) expect(portNames.has(p.targetPort), `${role} ${p.targetPort}`).toBe(true);
        }
        expect(
          (svc.spec.ports as Obj[]).some((p) => p.name === "metrics"),
          role,
        ).toBe(true);
      }
    });

    it("uses the bundled Redis with append-only persistence as a flag, or the external URL from a Secret only", () => {
      const redis = objs.find((o) => o.kind === "StatefulSet" && o.metadata.name === `${fullname}-redis`);
      for (const role of SERVICE_ROLES) {
        for (const w of workloads(objs, role)) {
          const flag = flagValue(args(w), "--redis-url");
          const env = envEntry(w, `${ENV_PREFIX[role]}REDIS_URL`);
          if (!externalRedis(values)) {
            expect(flag, role).toBe(`redis://${fullname}-redis:6379`);
            expect(env, role).toBeUndefined();
            continue;
          }
          expect(flag, `${role}: a Redis URL may carry a password, so never a flag`).toBeUndefined();
          const ref = env?.valueFrom?.secretKeyRef as Obj | undefined;
          expect(ref, role).toBeDefined();
          if (values.redis.existingSecret !== "") expect([ref!.name, ref!.key]).toEqual([values.redis.existingSecret, values.redis.existingSecretKey]);
          else expect(secretValue(objs, ref!.name, ref!.key, env!.name)).toBe(values.redis.url);
        }
      }
      if (!externalRedis(values)) {
        expect(redis).toBeDefined();
        const a = redis!.spec.template.spec.containers[0].args as string[];
        expect(flagValue(a, "--appendonly")).toBe("yes");
        expect(flagValue(a, "--appendfsync")).toBe("everysec");
        expect(flagValue(a, "--maxmemory-policy")).toBe("noeviction");
        expect((redis!.spec.volumeClaimTemplates ?? []).length).toBe(values.redis.persistence.enabled ? 1 : 0);
        find(objs, "Service", `${fullname}-redis`);
      } else {
        expect(redis).toBeUndefined();
        expect(objs.some((o) => o.metadata.name === `${fullname}-redis`)).toBe(false);
      }
    });

    it("gives the API key to the router only and the internal secret to every role, from Secrets, never in clear", () => {
      const own = objs.filter((o) => o.kind === "Secret");
      const given = [values.secrets.apiKey, values.secrets.internalSecret].filter((s) => s.value !== "" && s.existingSecret === "");
      const ownUrl = externalRedis(values) && values.redis.url !== "" && values.redis.existingSecret === "";
      expect(own.length).toBe(given.length > 0 || ownUrl ? 1 : 0);
      for (const role of SERVICE_ROLES) {
        for (const w of workloads(objs, role)) {
          for (const [name, setting, wanted] of [
            ["API_KEY", values.secrets.apiKey, role === "router"],
            ["INTERNAL_SECRET", values.secrets.internalSecret, true],
          ] as const) {
            const env = envEntry(w, `${ENV_PREFIX[role]}${name}`);
            const configured = setting.value !== "" || setting.existingSecret !== "";
            if (!(wanted && configured)) {
              expect(env, `${role} ${name}`).toBeUndefined();
              continue;
            }
            const ref = env?.valueFrom?.secretKeyRef as Obj;
            expect(ref, `${role} ${name}`).toBeDefined();
            expect(ref.key).toBe(setting.key);
            if (setting.existingSecret !== "") expect(ref.name).toBe(setting.existingSecret);
            else expect(secretValue(objs, ref.name, ref.key, env!.name)).toBe(setting.value);
          }
          expect(
            args(w).filter((a) => a === "--api-key" || a === "--internal-secret"),
            role,
          ).toEqual([]);
        }
      }
      const clear = plainStrings(objs);
      for (const secret of [values.secrets.apiKey.value, values.secrets.internalSecret.value, externalRedis(values) ? values.redis.url : ""].filter(
        (s: string) => s !== "",
      )) {
        expect(
          clear.filter((s) => s.includes(secret)),
          "a credential outside its Secret",
        ).toEqual([]);
      }
    });

    it("mounts the TLS Secret read-only and names its files (and mutual TLS) to every role when TLS is on", () => {
      for (const role of SERVICE_ROLES) {
        for (const w of workloads(objs, role)) {
          const p = pod(w);
          const vol = ((p.volumes ?? []) as Obj[]).find((v) => v.name === "tls");
          const mount = ((container(w).volumeMounts ?? []) as Obj[]).find((m) => m.name === "tls");
          const env = (n: string) => envEntry(w, `${ENV_PREFIX[role]}${n}`)?.value as string | undefined;
          if (!values.tls.enabled) {
            expect([vol, mount, env("TLS_CERT"), env("TLS_KEY"), env("TLS_CA"), env("TLS_CLIENT_AUTH")], role).toEqual([
              undefined,
              undefined,
              undefined,
              undefined,
              undefined,
              undefined,
            ]);
            continue;
          }
          expect(vol?.secret?.secretName, role).toBe(values.tls.existingSecret);
          expect(mount?.readOnly, role).toBe(true);
          expect(mount?.mountPath, role).toBe(values.tls.mountPath);
          expect([env("TLS_CERT"), env("TLS_KEY"), env("TLS_CA")], role).toEqual(["tls.crt", "tls.key", "ca.crt"].map((f) => `${values.tls.mountPath}/${f}`));
          expect(env("TLS_CLIENT_AUTH"), role).toBe(values.tls.clientAuth ? "true" : undefined);
        }
      }
    });

    it("admits each port only from the roles that call it when NetworkPolicies are on", () => {
      const policies = objs.filter((o) => o.kind === "NetworkPolicy");
      if (!values.networkPolicy.enabled) {
        expect(policies).toEqual([]);
        return;
      }
      const nsLabels = (ns: string) => ({ "kubernetes.io/metadata.name": ns });
      const podOf = (w: Obj): PodRef => ({
        namespace: NAMESPACE,
        namespaceLabels: nsLabels(NAMESPACE),
        labels: w.spec.template.metadata.labels,
        ports: Object.fromEntries(((pod(w).containers[0].ports ?? []) as Obj[]).map((p) => [p.name, p.containerPort])),
      });
      const moela: Record<string, PodRef> = {};
      for (const role of SERVICE_ROLES) moela[role] = podOf(workloads(objs, role)[0]!);
      const redis = objs.find((o) => o.kind === "StatefulSet" && o.metadata.name === `${fullname}-redis`);
      if (redis !== undefined) moela["redis"] = podOf(redis);
      // sources beyond the roles: a stranger in the namespace, and one pod in each namespace values name
      const stranger: PodRef = { namespace: NAMESPACE, namespaceLabels: nsLabels(NAMESPACE), labels: { app: "stranger" }, ports: {} };
      const namedNs = (peers: Obj[]) =>
        peers.map((p) => p.namespaceSelector?.matchLabels?.["kubernetes.io/metadata.name"] as string | undefined).filter((n): n is string => n !== undefined);
      const outside = (ns: string): PodRef => ({ namespace: ns, namespaceLabels: nsLabels(ns), labels: { app: "client" }, ports: {} });
      const apiClients = namedNs(values.networkPolicy.apiFrom).map(outside);
      const scrapers = namedNs(values.networkPolicy.metricsFrom).map(outside);
      const sources: Record<string, PodRef> = { ...moela, stranger };
      for (const p of [...apiClients, ...scrapers]) sources[`${p.namespace}/client`] = p;

      const callers: Record<string, Record<string, readonly string[] | "any">> = {
        router: { http: "any", grpc: "any", metrics: "any" },
        prefill: { grpc: [], metrics: "any" },
        decode: { grpc: ["router", "prefill"], metrics: "any" },
        "expert-host": { grpc: ["prefill", "decode"], metrics: "any" },
        redis: { redis: ["router", "prefill", "decode", "expert-host"] },
      };
      for (const [dstName, ports] of Object.entries(callers)) {
        const dst = moela[dstName];
        if (dst === undefined) continue;
        expect(Object.keys(ports).sort(), `${dstName}: every container port is considered`).toEqual(Object.keys(dst.ports).sort());
        for (const [port, who] of Object.entries(ports)) {
          const from = port === "metrics" ? values.networkPolicy.metricsFrom : values.networkPolicy.apiFrom;
          for (const [srcName, src] of Object.entries(sources)) {
            let expected: boolean;
            if (who !== "any") expected = who.includes(srcName);
            else if (from.length === 0) expected = true;
            else expected = (port === "metrics" ? scrapers : apiClients).some((p) => p === src);
            expect(ingressAllowed(policies, src, dst, port), `${srcName} -> ${dstName}:${port}`).toBe(expected);
          }
        }
      }
      // every policy selects pods of this release only
      for (const p of policies) expect(selectorMatches(p.spec.podSelector, { app: "stranger" }), p.metadata.name).toBe(false);
    });

    it("renders a PrometheusRule only when enabled, with exactly the rule groups docker-compose's Prometheus loads", () => {
      const rules = objs.filter((o) => o.kind === "PrometheusRule");
      expect(rules.length).toBe(values.prometheusRule.enabled ? 1 : 0);
      if (rules.length === 0) return;
      const compose = readdirSync(RULES)
        .filter((f) => /\.ya?ml$/.test(f))
        .sort()
        .flatMap((f) => (parseYaml(readFileSync(join(RULES, f), "utf8")) as Obj).groups as Obj[]);
      expect(compose.length).toBeGreaterThan(0);
      expect(rules[0]!.spec.groups).toEqual(compose);
      for (const [k, v] of Object.entries(values.prometheusRule.labels as Record<string, string>)) expect(rules[0]!.metadata.labels[k]).toBe(v);
    });

    it("renders a ServiceMonitor only when enabled, selecting every service's metrics port", () => {
      const monitors = objs.filter((o) => o.kind === "ServiceMonitor");
      expect(monitors.length).toBe(values.serviceMonitor.enabled ? 1 : 0);
      if (monitors.length === 0) return;
      const sm = monitors[0]!;
      expect(sm.spec.endpoints.map((e: Obj) => e.port)).toEqual(["metrics"]);
      for (const [k, v] of Object.entries(values.serviceMonitor.labels as Record<string, string>)) expect(sm.metadata.labels[k]).toBe(v);
      const selected = objs.filter(
        (o) =>
          o.kind === "Service" &&
          matches(sm.spec.selector.matchLabels, o.metadata.labels) &&
          (sm.spec.selector.matchExpressions as Obj[]).every((e) => e.operator === "In" && e.values.includes(o.metadata.labels[e.key])),
      );
      expect(selected.map((s) => s.metadata.name).sort()).toEqual(SERVICE_ROLES.map((r) => `${fullname}-${r}`).sort());
    });

    it("ships every dashboard JSON, byte for byte, in one grafana_dashboard ConfigMap (when enabled)", () => {
      const maps = objs.filter((o) => o.kind === "ConfigMap" && o.metadata.labels?.grafana_dashboard === "1");
      if (!values.dashboards.enabled) {
        expect(maps).toEqual([]);
        return;
      }
      expect(maps.length).toBe(1);
      const files = readdirSync(DASHBOARDS)
        .filter((f) => f.endsWith(".json"))
        .sort();
      expect(Object.keys(maps[0]!.data).sort()).toEqual(files);
      for (const f of files) expect(maps[0]!.data[f], f).toBe(readFileSync(join(DASHBOARDS, f), "utf8"));
    });

    // Each role's flags and Secret-fed environment go through that service's own parser, pod by pod, as the
    // pod gets them ($(VAR) expansion; TLS files mapped to local PEM stand-ins).
    for (const role of SERVICE_ROLES) {
      it.runIf(hasServiceConfig(role))(`passes ${role} flags and environment its config parser accepts`, async () => {
        for (const w of workloads(objs, role)) {
          const pods = w.kind === "StatefulSet" ? (w.spec.replicas as number) : 1;
          for (let i = 0; i < pods; i++) {
            const a = podServiceArgs(objs, w, i);
            expect(a.slice(0, 3), `${role} pod ${i}`).toEqual(["serve", "--role", role]);
            const env = localTlsEnv(podEnv(objs, w, i), values.tls.mountPath);
            const cfg = await parsePod(role, a.slice(3), env);
            expect(cfg["precision"]).toBe(values.precision);
            const redisUrl = !externalRedis(values)
              ? `redis://${fullname}-redis:6379`
              : values.redis.existingSecret !== ""
                ? existingSecretValue(values.redis.existingSecret, values.redis.existingSecretKey, "_REDIS_URL")
                : values.redis.url;
            expect(cfg["redisUrl"]).toBe(redisUrl);
            if (values.queuePrefix !== "") expect(cfg["queuePrefix"]).toBe(values.queuePrefix);
            if (role === "decode") expect(cfg["advertiseAddress"]).toBe(podAddress(w.metadata.name, i, values.ports.grpc));
            if (role === "expert-host") {
              const s = Number(w.spec.template.metadata.labels[SHARD_LABEL]);
              expect(cfg["advertiseAddress"]).toBe(podAddress(w.metadata.name, i, values.ports.grpc, `${fullname}-expert-host`));
              expect([cfg["shardIndex"], cfg["shardCount"]]).toEqual([s, shards]);
            }
            if (role === "decode" || role === "prefill") expect(cfg["expertHosts"]).toEqual(expertHostGroups(values));
            if (role === "router" && (values.secrets.apiKey.value !== "" || values.secrets.apiKey.existingSecret !== "")) {
              const key = env["MOELA_ROUTER_API_KEY"]!;
              expect(cfg["apiKeys"]).toEqual(key.split(",").map((k) => k.trim()));
            }
          }
        }
      });
    }
  });

  it("defaults to the exact precision profile, as npm start, moela generate and docker-compose", () => {
    expect(defaultValues().precision).toBe("exact");
  });

  it("defaults every optional feature off and requests no GPU", () => {
    const v = defaultValues();
    expect([v.networkPolicy.enabled, v.prometheusRule.enabled, v.autoscaling.enabled, v.tls.enabled, v.serviceMonitor.enabled]).toEqual([
      false,
      false,
      false,
      false,
      false,
    ]);
    for (const role of SERVICE_ROLES) expect(v[VALUES_KEY[role]].gpu, role).toBe(0);
  });

  // The checks above must be able to fail: each insecure or wrong override is caught.
  it.each([
    ["a writable root filesystem", ["--set", "securityContext.readOnlyRootFilesystem=false"], /readOnlyRootFilesystem is not true/],
    ["privilege escalation", ["--set", "securityContext.allowPrivilegeEscalation=true"], /allowPrivilegeEscalation is not false/],
    ["kept capabilities", ["--set", "securityContext.capabilities.drop=null"], /capabilities do not drop ALL/],
    ["an unconfined seccomp profile", ["--set", "podSecurityContext.seccompProfile.type=Unconfined,securityContext.seccompProfile=null"], /seccompProfile/],
    ["root", ["--set", "podSecurityContext.runAsNonRoot=false,securityContext.runAsNonRoot=null"], /runAsNonRoot is not true/],
    [
      "a hostPath volume through extraPodSpec",
      ["--set-json", 'decode.extraPodSpec={"volumes":[{"name":"tmp","hostPath":{"path":"/tmp"}}]}'],
      /type hostPath is not allowed/,
    ],
    ["the host network through extraPodSpec", ["--set", "router.extraPodSpec.hostNetwork=true"], /hostNetwork is true/],
  ])("the restricted check catches %s", (_what, extra, message) => {
    const violations = podWorkloads(render(extra)).flatMap((w) => restrictedViolations(pod(w)).map((v) => `${w.metadata.name}: ${v}`));
    expect(violations.join("\n")).toMatch(message);
  });

  it("requests nvidia.com/gpu in requests and limits when a role is given a GPU count", () => {
    const objs = render(["--set", "decode.gpu=2"]);
    const res = container(workload(objs, "decode")).resources as Obj;
    expect([res.requests["nvidia.com/gpu"], res.limits["nvidia.com/gpu"]]).toEqual([2, 2]);
    expect(JSON.stringify(container(workload(objs, "prefill")).resources)).not.toContain("gpu");
  });

  it("keeps every StatefulSet name within 52 characters and pod name within 63 for a long release name and 1024 shards", () => {
    const release = "a-release-name-long-enough-to-be-truncated-by-chart"; // 51: helm allows 53
    const out = runHelm(["template", release, CHART, "--namespace", NAMESPACE, "--set", "expertHost.shards=1024,expertHost.replicasPerShard=2"]);
    const sets = parseAllDocuments(out)
      .map((d) => d.toJS() as Obj | null)
      .filter((o): o is Obj => o !== null && o.kind === "StatefulSet");
    expect(sets.filter((o) => o.metadata.labels[SHARD_LABEL] !== undefined).length).toBe(1024);
    for (const sts of sets) {
      // the controller-revision-hash label is "<name>-<10 characters>", at most 63
      expect(sts.metadata.name.length, sts.metadata.name).toBeLessThanOrEqual(52);
      expect(`${sts.metadata.name}-${sts.spec.replicas - 1}`.length).toBeLessThanOrEqual(63);
    }
  });

  it("lets one expert-host PodDisruptionBudget per shard keep every replica (minAvailable = replicasPerShard)", () => {
    const objs = render(["--set", "expertHost.shards=3,expertHost.replicasPerShard=3,expertHost.pdb.minAvailable=3"]);
    const pdbs = objs.filter((o) => o.kind === "PodDisruptionBudget" && o.metadata.labels[SHARD_LABEL] !== undefined);
    expect(pdbs.map((p) => [p.metadata.labels[SHARD_LABEL], p.spec.minAvailable])).toEqual([
      ["0", 3],
      ["1", 3],
      ["2", 3],
    ]);
  });

  it.each([
    ["an unknown precision", ["--set", "precision=fast"], /precision/],
    ["zero expert-host shards", ["--set", "expertHost.shards=0"], /expertHost\/shards/],
    ["zero expert-host replicas per shard", ["--set", "expertHost.replicasPerShard=0"], /expertHost\/replicasPerShard/],
    ["an expert-host PDB that lets a whole shard go (minAvailable 0)", ["--set", "expertHost.pdb.minAvailable=0"], /expertHost\/pdb\/minAvailable/],
    ["external Redis without a URL or Secret", ["--set", "redis.enabled=false"], /redis\/url[\s\S]*redis\/existingSecret/],
    ["a negative GPU count", ["--set", "decode.gpu=-1"], /decode\/gpu/],
    ["a misspelt key", ["--set", "decode.replica=2"], /replica/],
    ["appendfsync no (loses queued work)", ["--set", "redis.appendfsync=no"], /appendfsync/],
    ["TLS without its Secret", ["--set", "tls.enabled=true"], /tls\/existingSecret/],
    ["a KV usage target above 1", ["--set-json", "autoscaling.decode.kvUsage=1.5"], /autoscaling\/decode\/kvUsage'?: maximum/],
    ["a probe timeout of 0", ["--set", "probes.readiness.timeoutSeconds=0"], /probes\/readiness\/timeoutSeconds/],
    [
      "two chart-made credentials under one Secret key",
      ["--set", "secrets.apiKey.value=k1,secrets.internalSecret.value=0123456789abcdef,secrets.internalSecret.key=api-key"],
      /keys of <fullname>-secrets must differ/,
    ],
  ])("the chart (values.schema.json or a template check) rejects %s", (_what, extra, message) => {
    expect(() => render(extra)).toThrow(message);
  });
});
