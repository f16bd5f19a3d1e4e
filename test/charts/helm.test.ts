/**
 * charts/moela: `helm lint --strict` and `helm template` for every charts/moela/ci/*-values.yaml, each
 * rendered manifest checked against the Kubernetes schemas (kubernetes-models), then the topology:
 * one expert-host pod per shard with its shard index from the pod ordinal, decode and prefill given
 * every shard's address in shard order, the router given every decode replica, gRPC probes, PDBs,
 * the ServiceMonitor only when enabled, the dashboards ConfigMap holding every dashboard, and every
 * service's flags accepted by that service's own config parser.
 */
import { execFileSync } from "node:child_process";
import { lstatSync, readFileSync, readdirSync, realpathSync } from "node:fs";
import { join } from "node:path";
import { Deployment, StatefulSet } from "kubernetes-models/apps/v1";
import { PodDisruptionBudget } from "kubernetes-models/policy/v1";
import { ConfigMap, Service } from "kubernetes-models/v1";
import { beforeAll, describe, expect, it } from "vitest";
import { parseAllDocuments, parse as parseYaml } from "yaml";
import { REPO_ROOT, ensureHelm } from "../helpers/helm.js";
import { SERVICE_ROLES, flagValue, hasServiceConfig, parseServiceFlags, type ServiceRole } from "../helpers/service-flags.js";

const CHART = join(REPO_ROOT, "charts/moela");
const DASHBOARDS = join(REPO_ROOT, "deploy/grafana/dashboards");
const RELEASE = "ci";
const NAMESPACE = "inference";
const SCENARIOS = readdirSync(join(CHART, "ci"))
  .filter((f) => f.endsWith("-values.yaml"))
  .sort();

// ---- rendering ------------------------------------------------------------------------------------

type Obj = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any -- rendered YAML

let helm = "";

function runHelm(args: readonly string[]): string {
  try {
    return execFileSync(helm, args, { cwd: REPO_ROOT, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"], timeout: 60_000 });
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

function scenarioValues(file: string): Obj {
  const base = parseYaml(readFileSync(join(CHART, "values.yaml"), "utf8")) as Obj;
  return mergeValues(base, (parseYaml(readFileSync(join(CHART, "ci", file), "utf8")) as Obj | null) ?? {});
}

// ---- schema validation ------------------------------------------------------------------------------

const MODELS: Record<string, new (o: Obj) => { validate(): void }> = {
  "apps/v1 Deployment": Deployment,
  "apps/v1 StatefulSet": StatefulSet,
  "v1 Service": Service,
  "v1 ConfigMap": ConfigMap,
  "policy/v1 PodDisruptionBudget": PodDisruptionBudget,
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

function validateManifest(o: Obj): void {
  const key = `${o.apiVersion} ${o.kind}`;
  if (key === "monitoring.coreos.com/v1 ServiceMonitor") return validateServiceMonitor(o);
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

function workload(objs: readonly Obj[], role: ServiceRole): Obj {
  return find(objs, WORKLOAD_KIND[role], `${fullname}-${role}`);
}
function container(w: Obj): Obj {
  return w.spec.template.spec.containers[0];
}
function args(w: Obj): string[] {
  return container(w).args as string[];
}
function matches(selector: Record<string, string>, labels: Record<string, string>): boolean {
  return Object.entries(selector).every(([k, v]) => labels[k] === v);
}
/** <sts>-<i>.<headless svc>.<namespace>.svc:<port> for i in [0, n). */
function podAddresses(sts: string, n: number, port: number): string {
  return Array.from({ length: n }, (_, i) => `${sts}-${i}.${sts}.${NAMESPACE}.svc:${port}`).join(",");
}

// ---- the tests -------------------------------------------------------------------------------------

beforeAll(() => {
  helm = ensureHelm();
}, 180_000);

describe("charts/moela", () => {
  it("has ci scenarios covering defaults, external Redis, GPU + ServiceMonitor and several replicas", () => {
    expect(SCENARIOS).toEqual(["default-values.yaml", "external-redis-values.yaml", "gpu-servicemonitor-values.yaml", "multi-replica-values.yaml"]);
  });

  it("reads its dashboards through a symlink to deploy/grafana/dashboards, so the two cannot drift", () => {
    const link = join(CHART, "dashboards");
    expect(lstatSync(link).isSymbolicLink()).toBe(true);
    expect(realpathSync(link)).toBe(realpathSync(DASHBOARDS));
    expect(readdirSync(DASHBOARDS).filter((f) => f.endsWith(".json")).length).toBeGreaterThan(0);
  });

  describe.each(SCENARIOS)("%s", (file) => {
    const values = scenarioValues(file);
    const valuesArgs = ["--values", join(CHART, "ci", file)];
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

    it("runs one expert-host pod per shard, its shard index taken from the pod ordinal", () => {
      const shards = values.expertHost.shards as number;
      const sts = workload(objs, "expert-host");
      expect(sts.spec.replicas).toBe(shards);
      expect(sts.spec.serviceName).toBe(`${fullname}-expert-host`);
      const svc = find(objs, "Service", `${fullname}-expert-host`);
      expect(svc.spec.clusterIP).toBe("None");
      expect(matches(svc.spec.selector, sts.spec.template.metadata.labels)).toBe(true);
      const env = (container(sts).env as Obj[]).find((e) => e.name === "MOELA_EXPERT_HOST_SHARD_INDEX");
      expect(env?.valueFrom?.fieldRef?.fieldPath).toBe("metadata.labels['apps.kubernetes.io/pod-index']");
      expect(flagValue(args(sts), "--shard-index")).toBe("$(MOELA_EXPERT_HOST_SHARD_INDEX)");
      expect(flagValue(args(sts), "--shard-count")).toBe(String(shards));
    });

    it("gives decode and prefill every shard's stable address, in shard order", () => {
      const expected = podAddresses(`${fullname}-expert-host`, values.expertHost.shards, values.ports.grpc);
      expect(flagValue(args(workload(objs, "decode")), "--expert-hosts")).toBe(expected);
      expect(flagValue(args(workload(objs, "prefill")), "--expert-hosts")).toBe(expected);
    });

    it("gives the router every decode replica's own address (headless Service)", () => {
      const decode = workload(objs, "decode");
      expect(decode.spec.replicas).toBe(values.decode.replicas);
      expect(find(objs, "Service", `${fullname}-decode`).spec.clusterIP).toBe("None");
      const router = workload(objs, "router");
      expect(flagValue(args(router), "--decode")).toBe(podAddresses(`${fullname}-decode`, values.decode.replicas, values.ports.grpc));
      expect(router.spec.replicas).toBe(values.router.replicas);
      expect(workload(objs, "prefill").spec.replicas).toBe(values.prefill.replicas);
    });

    it("probes every service with native gRPC health checks on its gRPC port", () => {
      for (const role of SERVICE_ROLES) {
        const c = container(workload(objs, role));
        const grpcPort = (c.ports as Obj[]).find((p) => p.name === "grpc")?.containerPort;
        expect(grpcPort, role).toBe(values.ports.grpc);
        for (const probe of ["startupProbe", "readinessProbe", "livenessProbe"]) {
          expect(c[probe]?.grpc?.port, `${role} ${probe}`).toBe(grpcPort);
        }
      }
    });

    it("passes the precision profile to every service", () => {
      for (const role of SERVICE_ROLES) expect(flagValue(args(workload(objs, role)), "--precision"), role).toBe(values.precision);
    });

    it("exposes each workload through a Service whose selector and target ports match its pods", () => {
      for (const role of SERVICE_ROLES) {
        const w = workload(objs, role);
        const svc = find(objs, "Service", `${fullname}-${role}`);
        expect(matches(svc.spec.selector, w.spec.template.metadata.labels), role).toBe(true);
        expect(matches(w.spec.selector.matchLabels, w.spec.template.metadata.labels), role).toBe(true);
        const portNames = new Set((container(w).ports as Obj[]).map((p) => p.name));
        for (const p of svc.spec.ports as Obj[]) expect(portNames.has(p.targetPort), `${role} ${p.targetPort}`).toBe(true);
        expect((svc.spec.ports as Obj[]).some((p) => p.name === "metrics"), role).toBe(true);
      }
    });

    it("has a PodDisruptionBudget selecting each role's pods", () => {
      const pdbs = objs.filter((o) => o.kind === "PodDisruptionBudget");
      for (const role of SERVICE_ROLES) {
        const w = workload(objs, role);
        const own = pdbs.filter((p) => matches(p.spec.selector.matchLabels, w.spec.template.metadata.labels));
        expect(own.length, role).toBe(values[VALUES_KEY[role]].pdb.enabled ? 1 : 0);
        if (own.length === 1) expect(own[0]!.spec.maxUnavailable).toEqual(values[VALUES_KEY[role]].pdb.maxUnavailable);
      }
    });

    it("requests nvidia.com/gpu exactly for the roles given a GPU count", () => {
      for (const role of SERVICE_ROLES) {
        const gpu = values[VALUES_KEY[role]].gpu as number;
        const res = container(workload(objs, role)).resources as Obj;
        expect(res.limits?.["nvidia.com/gpu"], role).toBe(gpu > 0 ? gpu : undefined);
        expect(res.requests?.["nvidia.com/gpu"], role).toBe(gpu > 0 ? gpu : undefined);
      }
    });

    it("uses the bundled Redis with append-only persistence, or exactly the external URL", () => {
      const router = args(workload(objs, "router"));
      const prefill = args(workload(objs, "prefill"));
      const redis = objs.find((o) => o.kind === "StatefulSet" && o.metadata.name === `${fullname}-redis`);
      if (values.redis.enabled) {
        expect(redis).toBeDefined();
        const a = redis!.spec.template.spec.containers[0].args as string[];
        expect(flagValue(a, "--appendonly")).toBe("yes");
        expect(flagValue(a, "--appendfsync")).toBe("everysec");
        expect(flagValue(a, "--maxmemory-policy")).toBe("noeviction");
        expect((redis!.spec.volumeClaimTemplates ?? []).length).toBe(values.redis.persistence.enabled ? 1 : 0);
        const url = `redis://${fullname}-redis:6379`;
        find(objs, "Service", `${fullname}-redis`);
        expect(flagValue(router, "--redis-url")).toBe(url);
        expect(flagValue(prefill, "--redis-url")).toBe(url);
      } else {
        expect(redis).toBeUndefined();
        expect(objs.some((o) => o.metadata.name === `${fullname}-redis`)).toBe(false);
        expect(flagValue(router, "--redis-url")).toBe(values.redis.url);
        expect(flagValue(prefill, "--redis-url")).toBe(values.redis.url);
      }
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
      const files = readdirSync(DASHBOARDS).filter((f) => f.endsWith(".json")).sort();
      expect(Object.keys(maps[0]!.data).sort()).toEqual(files);
      for (const f of files) expect(maps[0]!.data[f], f).toBe(readFileSync(join(DASHBOARDS, f), "utf8"));
    });

    // Each role's flags go through that service's own parser, pod by pod (the shard index the way
    // Kubernetes expands $(MOELA_EXPERT_HOST_SHARD_INDEX) from the pod-index label).
    for (const role of SERVICE_ROLES) {
      it.runIf(hasServiceConfig(role))(`passes ${role} flags its config parser accepts`, async () => {
        const w = workload(objs, role);
        const pods = role === "expert-host" ? (w.spec.replicas as number) : 1;
        for (let i = 0; i < pods; i++) {
          const a = args(w).map((x) => x.replace("$(MOELA_EXPERT_HOST_SHARD_INDEX)", String(i)));
          const cfg = await parseServiceFlags(role, a);
          expect(cfg["precision"]).toBe(values.precision);
          if (role === "expert-host") expect([cfg["shardIndex"], cfg["shardCount"]]).toEqual([i, values.expertHost.shards]);
        }
      });
    }
  });

  it("defaults to the paper precision profile", () => {
    const values = parseYaml(readFileSync(join(CHART, "values.yaml"), "utf8")) as Obj;
    expect(values.precision).toBe("paper");
  });

  it.each([
    ["an unknown precision", ["--set", "precision=fast"], /precision/],
    ["zero expert-host shards", ["--set", "expertHost.shards=0"], /expertHost\/shards/],
    ["external Redis without a URL", ["--set", "redis.enabled=false"], /redis\/url/],
    ["a negative GPU count", ["--set", "decode.gpu=-1"], /decode\/gpu/],
    ["a misspelt key", ["--set", "decode.replica=2"], /replica/],
    ["appendfsync no (loses queued work)", ["--set", "redis.appendfsync=no"], /appendfsync/],
  ])("values.schema.json rejects %s", (_what, extra, message) => {
    expect(() => render(extra)).toThrow(message);
  });
});
