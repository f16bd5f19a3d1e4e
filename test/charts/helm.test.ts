/**
 * charts/moela: `helm lint --strict` and `helm template` for every charts/moela/ci/*-values.yaml, each
 * rendered manifest checked against the Kubernetes schemas (kubernetes-models), then the topology:
 * shards x replicasPerShard expert-host pods whose shard index is the pod ordinal mod shards (computed
 * by the container's shell, which the test runs), decode and prefill given every pod's address grouped
 * per shard in shard order, the router given every decode replica as a seed, every service given the
 * Redis URL and key prefix of the registry, decode and expert-host pods advertising exactly their seed
 * address, gRPC probes, PDBs, the ServiceMonitor only when enabled, the dashboards ConfigMap holding
 * every dashboard, and every pod's flags (after Kubernetes' $(VAR) expansion) accepted by that
 * service's own config parser.
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
const DOCKERFILE = join(REPO_ROOT, "deploy/docker/Dockerfile");
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
/** <sts>-<i>.<headless svc>.<namespace>.svc:<port>: pod i's stable DNS name. */
function podAddress(sts: string, i: number, port: number): string {
  return `${sts}-${i}.${sts}.${NAMESPACE}.svc:${port}`;
}
/** Every pod's address for i in [0, n), comma-separated. */
function podAddresses(sts: string, n: number, port: number): string {
  return Array.from({ length: n }, (_, i) => podAddress(sts, i, port)).join(",");
}
/** Expert-host pods grouped per shard in shard order: shard s is ordinals s, s+shards, ... joined by "|". */
function expertHostGroups(values: Obj): string[] {
  const { shards, replicasPerShard } = values.expertHost as { shards: number; replicasPerShard: number };
  return Array.from({ length: shards }, (_, s) =>
    Array.from({ length: replicasPerShard }, (_, r) => podAddress(`${fullname}-expert-host`, s + r * shards, values.ports.grpc)).join("|"),
  );
}

// ---- a pod's view: its environment, Kubernetes' $(VAR) expansion, the expert-host shell -------------

/** The environment pod `ordinal` of workload `w` gets: literal values and the downward-API fields the chart uses. */
function podEnv(w: Obj, ordinal: number): Record<string, string> {
  const env: Record<string, string> = {};
  for (const e of (container(w).env ?? []) as Obj[]) {
    if (typeof e.value === "string") env[e.name] = expandK8s(e.value, env);
    else if (e.valueFrom?.fieldRef?.fieldPath === "metadata.name") env[e.name] = `${w.metadata.name}-${ordinal}`;
    else if (e.valueFrom?.fieldRef?.fieldPath === "metadata.labels['apps.kubernetes.io/pod-index']") env[e.name] = String(ordinal);
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

/** The image's ENTRYPOINT (the Dockerfile's last one: one image for every role). */
function dockerEntrypoint(): string[] {
  const all = [...readFileSync(DOCKERFILE, "utf8").matchAll(/^ENTRYPOINT (\[.*\])$/gm)];
  if (all.length === 0) throw new Error(`${DOCKERFILE}: no ENTRYPOINT`);
  return JSON.parse(all.at(-1)![1]!) as string[];
}

/**
 * The flags pod `ordinal` of a role's service receives, as the pod would run it: command and args
 * expanded with the pod's environment; for a command that is a shell wrapper (expert-host), the shell
 * is run for real with the entrypoint swapped for printf, which prints the arguments it would exec.
 */
function podServiceArgs(role: ServiceRole, w: Obj, ordinal: number): string[] {
  const env = podEnv(w, ordinal);
  const a = args(w).map((x) => expandK8s(x, env));
  const command = (container(w).command as string[] | undefined)?.map((x) => expandK8s(x, env));
  if (command === undefined) return a;
  expect(command.slice(0, 2)).toEqual(["/bin/sh", "-c"]);
  expect(command.slice(4), `${role}: the wrapper must exec the image's own entrypoint`).toEqual(dockerEntrypoint());
  const out = execFileSync("/bin/sh", ["-c", command[2]!, command[3]!, "printf", "%s\\n", ...a], {
    env: { PATH: process.env.PATH ?? "/usr/bin:/bin", ...env },
    encoding: "utf8",
  });
  return out.split("\n").slice(0, -1);
}

// ---- the tests -------------------------------------------------------------------------------------

beforeAll(() => {
  helm = ensureHelm();
}, 180_000);

describe("charts/moela", () => {
  it("has ci scenarios covering defaults, expert-host replicas per shard, external Redis, GPU + ServiceMonitor and several replicas", () => {
    expect(SCENARIOS).toEqual([
      "default-values.yaml",
      "expert-replicas-values.yaml",
      "external-redis-values.yaml",
      "gpu-servicemonitor-values.yaml",
      "multi-replica-values.yaml",
    ]);
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

    it("runs replicasPerShard expert-host pods per shard, pod i serving shard i mod shards and registering its own address", () => {
      const { shards, replicasPerShard } = values.expertHost as { shards: number; replicasPerShard: number };
      const sts = workload(objs, "expert-host");
      expect(sts.spec.replicas).toBe(shards * replicasPerShard);
      expect(sts.spec.serviceName).toBe(`${fullname}-expert-host`);
      const svc = find(objs, "Service", `${fullname}-expert-host`);
      expect(svc.spec.clusterIP).toBe("None");
      expect(matches(svc.spec.selector, sts.spec.template.metadata.labels)).toBe(true);
      const served: number[] = [];
      for (let i = 0; i < shards * replicasPerShard; i++) {
        const a = podServiceArgs("expert-host", sts, i);
        expect(flagValue(a, "--shard-index"), `pod ${i}`).toBe(String(i % shards));
        expect(flagValue(a, "--shard-count"), `pod ${i}`).toBe(String(shards));
        expect(flagValue(a, "--advertise-address"), `pod ${i}`).toBe(podAddress(`${fullname}-expert-host`, i, values.ports.grpc));
        served.push(i % shards);
      }
      for (let s = 0; s < shards; s++) expect(served.filter((x) => x === s).length, `shard ${s}`).toBe(replicasPerShard);
    });

    it("gives decode and prefill every expert-host pod's stable address, grouped per shard in shard order", () => {
      const expected = expertHostGroups(values).join(",");
      expect(flagValue(args(workload(objs, "decode")), "--expert-hosts")).toBe(expected);
      expect(flagValue(args(workload(objs, "prefill")), "--expert-hosts")).toBe(expected);
    });

    it("gives the router every decode replica's own address as a seed, the address that replica registers", () => {
      const decode = workload(objs, "decode");
      expect(decode.spec.replicas).toBe(values.decode.replicas);
      expect(find(objs, "Service", `${fullname}-decode`).spec.clusterIP).toBe("None");
      const router = workload(objs, "router");
      const seeds = podAddresses(`${fullname}-decode`, values.decode.replicas, values.ports.grpc);
      expect(flagValue(args(router), "--decode")).toBe(seeds);
      const advertised = Array.from({ length: values.decode.replicas }, (_, i) => flagValue(podServiceArgs("decode", decode, i), "--advertise-address"));
      expect(advertised.join(",")).toBe(seeds);
      expect(router.spec.replicas).toBe(values.router.replicas);
      expect(workload(objs, "prefill").spec.replicas).toBe(values.prefill.replicas);
    });

    it("gives every service the registry's Redis key prefix exactly when queuePrefix is set", () => {
      for (const role of SERVICE_ROLES) {
        expect(flagValue(args(workload(objs, role)), "--queue-prefix"), role).toBe(values.queuePrefix === "" ? undefined : values.queuePrefix);
      }
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

    it("runs every role from the one image, the role an argument (serve --role R)", () => {
      const tag = values.image.tag === "" ? (parseYaml(readFileSync(join(CHART, "Chart.yaml"), "utf8")) as Obj).appVersion : values.image.tag;
      for (const role of SERVICE_ROLES) {
        const w = workload(objs, role);
        expect(container(w).image, role).toBe(`${values.image.repository}:${tag}`);
        expect(podServiceArgs(role, w, 0).slice(0, 3), role).toEqual(["serve", "--role", role]);
      }
    });

    it("gives every pod a termination grace period longer than the longest service drain (30 s)", () => {
      for (const role of SERVICE_ROLES) {
        const grace = ((workload(objs, role).spec as Obj).template as Obj).spec.terminationGracePeriodSeconds as number;
        expect(grace, role).toBe(values.terminationGracePeriodSeconds);
        expect(grace, role).toBeGreaterThan(30);
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

    it("uses the bundled Redis with append-only persistence, or exactly the external URL, for every service", () => {
      const urls = SERVICE_ROLES.map((role) => flagValue(args(workload(objs, role)), "--redis-url"));
      const redis = objs.find((o) => o.kind === "StatefulSet" && o.metadata.name === `${fullname}-redis`);
      if (values.redis.enabled) {
        expect(redis).toBeDefined();
        const a = redis!.spec.template.spec.containers[0].args as string[];
        expect(flagValue(a, "--appendonly")).toBe("yes");
        expect(flagValue(a, "--appendfsync")).toBe("everysec");
        expect(flagValue(a, "--maxmemory-policy")).toBe("noeviction");
        expect((redis!.spec.volumeClaimTemplates ?? []).length).toBe(values.redis.persistence.enabled ? 1 : 0);
        find(objs, "Service", `${fullname}-redis`);
        expect(urls).toEqual(SERVICE_ROLES.map(() => `redis://${fullname}-redis:6379`));
      } else {
        expect(redis).toBeUndefined();
        expect(objs.some((o) => o.metadata.name === `${fullname}-redis`)).toBe(false);
        expect(urls).toEqual(SERVICE_ROLES.map(() => values.redis.url));
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

    // Each role's flags go through that service's own parser, pod by pod of the StatefulSets, as the
    // pod gets them (podServiceArgs: $(VAR) expansion, the expert-host shell).
    for (const role of SERVICE_ROLES) {
      it.runIf(hasServiceConfig(role))(`passes ${role} flags its config parser accepts`, async () => {
        const w = workload(objs, role);
        const pods = w.kind === "StatefulSet" ? (w.spec.replicas as number) : 1;
        const redisUrl = values.redis.enabled ? `redis://${fullname}-redis:6379` : values.redis.url;
        for (let i = 0; i < pods; i++) {
          const a = podServiceArgs(role, w, i);
          expect(a.slice(0, 3), `${role} pod ${i}`).toEqual(["serve", "--role", role]);
          const cfg = await parseServiceFlags(role, a.slice(3));
          expect(cfg["precision"]).toBe(values.precision);
          expect(cfg["redisUrl"]).toBe(redisUrl);
          if (values.queuePrefix !== "") expect(cfg["queuePrefix"]).toBe(values.queuePrefix);
          if (w.kind === "StatefulSet") expect(cfg["advertiseAddress"]).toBe(podAddress(w.metadata.name, i, values.ports.grpc));
          if (role === "expert-host") expect([cfg["shardIndex"], cfg["shardCount"]]).toEqual([i % values.expertHost.shards, values.expertHost.shards]);
          if (role === "decode" || role === "prefill") expect(cfg["expertHosts"]).toEqual(expertHostGroups(values));
        }
      });
    }
  });

  it("defaults to the exact precision profile, as npm start, moela generate and docker-compose", () => {
    const values = parseYaml(readFileSync(join(CHART, "values.yaml"), "utf8")) as Obj;
    expect(values.precision).toBe("exact");
  });

  it.each([
    ["an unknown precision", ["--set", "precision=fast"], /precision/],
    ["zero expert-host shards", ["--set", "expertHost.shards=0"], /expertHost\/shards/],
    ["zero expert-host replicas per shard", ["--set", "expertHost.replicasPerShard=0"], /expertHost\/replicasPerShard/],
    ["external Redis without a URL", ["--set", "redis.enabled=false"], /redis\/url/],
    ["a negative GPU count", ["--set", "decode.gpu=-1"], /decode\/gpu/],
    ["a misspelt key", ["--set", "decode.replica=2"], /replica/],
    ["appendfsync no (loses queued work)", ["--set", "redis.appendfsync=no"], /appendfsync/],
  ])("values.schema.json rejects %s", (_what, extra, message) => {
    expect(() => render(extra)).toThrow(message);
  });
});
