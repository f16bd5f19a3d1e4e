/**
 * docker-compose.yml: `docker-compose config` (Compose v1.29, which also rejects Compose-v2-only keys)
 * accepts it, and the resolved file is the cluster it claims to be: redis with append-only persistence
 * on a volume, router, prefill, decode, expert-hosts 0 and 1 of 2 wired in shard order, every service
 * on the registry (redis URL, key prefix), decode and the expert-hosts advertising their service name,
 * the very address the static seeds name, every service's flags accepted by its own config parser, precision exact by default, Prometheus scraping every
 * service's metrics port, Grafana provisioned from deploy/grafana; one image for every role (`serve --role R`),
 * the router's HTTP and gRPC ports published, and a stop grace period longer than every service's drain;
 * the internal secret (a compose secret) and optional TLS (MOELA_TLS_*) reach every service's own parser.
 * Skipped only where docker-compose is not installed (.ci/run installs it).
 */
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import type { InternalSecurity } from "@moela/rpc";
import { parseConfig as parseDecodeConfig } from "../../services/decode/src/config.js";
import { parseConfig as parseExpertHostConfig } from "../../services/expert-host/src/config.js";
import { parsePrefillConfig } from "../../services/prefill/src/config.js";
import { parseRouterConfig } from "../../services/router/src/config.js";
import { parse as parseYaml } from "yaml";
import { REPO_ROOT } from "../helpers/helm.js";
import { DEFAULT_SHUTDOWN_GRACE_MS } from "../../services/router/src/main.js";
import { flagValue, hasServiceConfig, parseServiceFlags, type ServiceRole } from "../helpers/service-flags.js";

type Obj = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any -- parsed YAML

function hasDockerCompose(): boolean {
  try {
    execFileSync("docker-compose", ["version"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

/** `docker-compose config` with the given extra environment (MOELA_* overrides stripped otherwise). */
function composeConfig(extraEnv: Record<string, string> = {}): Obj {
  const env: NodeJS.ProcessEnv = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("MOELA_") && !k.startsWith("COMPOSE_")));
  try {
    const out = execFileSync("docker-compose", ["--file", join(REPO_ROOT, "docker-compose.yml"), "config"], {
      cwd: REPO_ROOT,
      env: { ...env, ...extraEnv },
      encoding: "utf8",
      stdio: ["ignore", "pipe", "pipe"],
      timeout: 30_000,
    });
    return parseYaml(out) as Obj;
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`docker-compose config rejected docker-compose.yml:\n${e.stderr || e.message}`);
  }
}

const MOELA_SERVICES: Record<string, ServiceRole> = {
  router: "router",
  prefill: "prefill",
  decode: "decode",
  "expert-host-0": "expert-host",
  "expert-host-1": "expert-host",
};

/** A service's volumes as target -> source (docker-compose 1.29 prints them as "source:target[:mode]"). */
function mounts(svc: Obj): Map<string, string> {
  return new Map(
    (svc.volumes as (string | Obj)[]).map((v) => {
      if (typeof v !== "string") return [v.target as string, v.source as string];
      const [source, target] = v.split(":");
      return [target!, source!];
    }),
  );
}

/** A Compose duration ("45s", "1m30s", "500ms") in milliseconds. */
function durationMs(d: string): number {
  const parts = [...d.matchAll(/(\d+(?:\.\d+)?)(ms|us|h|m|s)/g)];
  if (parts.map((m) => m[0]).join("") !== d) throw new Error(`not a Compose duration: ${d}`);
  const unit: Record<string, number> = { h: 3_600_000, m: 60_000, s: 1_000, ms: 1, us: 0.001 };
  return parts.reduce((ms, m) => ms + Number(m[1]) * unit[m[2]!]!, 0);
}

function port(address: string | undefined): number {
  if (address === undefined) throw new Error("missing address");
  return Number(address.slice(address.lastIndexOf(":") + 1));
}

describe.skipIf(!hasDockerCompose())("docker-compose.yml (docker-compose config)", () => {
  let config: Obj = {};
  beforeAll(() => {
    config = composeConfig();
  });
  const cmd = (name: string): string[] => config.services[name].command as string[];
  /** The service's own flags: the command after `serve --role <role>`. */
  const serviceFlags = (name: string): string[] => cmd(name).slice(3);

  it("defines exactly the 8 services of the cluster", () => {
    expect(Object.keys(config.services).sort()).toEqual(
      ["decode", "expert-host-0", "expert-host-1", "grafana", "prefill", "prometheus", "redis", "router"].sort(),
    );
  });

  it("stays Compose-v1 compatible (no top-level name, no depends_on.required)", () => {
    const raw = parseYaml(readFileSync(join(REPO_ROOT, "docker-compose.yml"), "utf8")) as Obj;
    expect(raw.name).toBeUndefined();
    for (const [name, svc] of Object.entries(raw.services as Obj)) {
      for (const dep of Object.values((svc.depends_on ?? {}) as Obj)) {
        if (dep !== null && typeof dep === "object") expect(dep.required, name).toBeUndefined();
      }
    }
  });

  it("persists Redis with appendonly + appendfsync everysec on a named volume, noeviction", () => {
    const redis = config.services.redis;
    const c = redis.command as string[];
    expect(flagValue(c, "--appendonly")).toBe("yes");
    expect(flagValue(c, "--appendfsync")).toBe("everysec");
    expect(flagValue(c, "--maxmemory-policy")).toBe("noeviction");
    expect(mounts(redis).get("/data")).toBe("redis-data");
    expect(Object.keys(config.volumes)).toContain("redis-data");
  });

  it("runs every moela service from the one image, its role an argument (serve --role R), with a gRPC healthcheck on its gRPC port", () => {
    for (const [name, role] of Object.entries(MOELA_SERVICES)) {
      const svc = config.services[name];
      expect(svc.build.dockerfile, name).toBe("deploy/docker/Dockerfile");
      expect(svc.build.target, name).toBeUndefined();
      expect(svc.image, name).toBe("moela:latest");
      expect(cmd(name).slice(0, 3), name).toEqual(["serve", "--role", role]);
      expect(svc.healthcheck.test, name).toEqual(["CMD", "node", "deploy/docker/grpc-health.mjs", `127.0.0.1:${port(flagValue(cmd(name), "--grpc-address"))}`]);
      expect(flagValue(cmd(name), "--grpc-address"), name).toMatch(/^0\.0\.0\.0:\d+$/);
      expect(flagValue(cmd(name), "--metrics-address"), name).toMatch(/^0\.0\.0\.0:\d+$/);
    }
  });

  it("runs expert-hosts 0 and 1 of 2, and gives decode and prefill both in shard order", () => {
    expect(["expert-host-0", "expert-host-1"].map((n) => [flagValue(cmd(n), "--shard-index"), flagValue(cmd(n), "--shard-count")])).toEqual([
      ["0", "2"],
      ["1", "2"],
    ]);
    const hosts = ["expert-host-0", "expert-host-1"].map((n) => `${n}:${port(flagValue(cmd(n), "--grpc-address"))}`).join(",");
    expect(flagValue(cmd("decode"), "--expert-hosts")).toBe(hosts);
    expect(flagValue(cmd("prefill"), "--expert-hosts")).toBe(hosts);
  });

  it("points every moela service at the redis service under one key prefix (MOELA_QUEUE_PREFIX, default moela)", () => {
    for (const name of Object.keys(MOELA_SERVICES)) {
      expect(flagValue(cmd(name), "--redis-url"), name).toBe("redis://redis:6379");
      expect(flagValue(cmd(name), "--queue-prefix"), name).toBe("moela");
    }
    const staging = composeConfig({ MOELA_QUEUE_PREFIX: "staging" });
    for (const name of Object.keys(MOELA_SERVICES)) expect(flagValue(staging.services[name].command, "--queue-prefix"), name).toBe("staging");
  });

  it("has decode and the expert-hosts advertise <service>:<grpc port>, exactly the seeds the router and decode/prefill are given", () => {
    const advertised = (name: string) => flagValue(cmd(name), "--advertise-address");
    for (const name of ["decode", "expert-host-0", "expert-host-1"])
      expect(advertised(name), name).toBe(`${name}:${port(flagValue(cmd(name), "--grpc-address"))}`);
    expect(flagValue(cmd("router"), "--decode")).toBe(advertised("decode"));
    const seeds = ["expert-host-0", "expert-host-1"].map(advertised).join(",");
    expect(flagValue(cmd("decode"), "--expert-hosts")).toBe(seeds);
    expect(flagValue(cmd("prefill"), "--expert-hosts")).toBe(seeds);
    for (const name of ["router", "prefill"]) expect(flagValue(cmd(name), "--advertise-address"), name).toBeUndefined();
  });

  it("points the router at decode and publishes its HTTP port and its gRPC port (the SDK's 127.0.0.1:50051)", () => {
    expect(flagValue(cmd("router"), "--decode")).toBe(`decode:${port(flagValue(cmd("decode"), "--grpc-address"))}`);
    const published = config.services.router.ports.map((p: Obj | string) => (typeof p === "string" ? p : `${p.published}:${p.target}`));
    expect(published).toContain("8000:8000");
    expect(port(flagValue(cmd("router"), "--http-address"))).toBe(8000);
    const grpc = port(flagValue(cmd("router"), "--grpc-address"));
    expect(grpc).toBe(50051);
    expect(published).toContain(`${grpc}:${grpc}`);
    expect(readFileSync(join(REPO_ROOT, "packages/client/README.md"), "utf8")).toContain(`127.0.0.1:${grpc}`);
  });

  it("gives every moela service a stop grace period longer than its drain, so docker never SIGKILLs a drain", async () => {
    for (const [name, role] of Object.entries(MOELA_SERVICES)) {
      const grace = config.services[name].stop_grace_period as string | undefined;
      expect(grace, name).toBeDefined();
      let drainMs = 0;
      if (role === "router") drainMs = DEFAULT_SHUTDOWN_GRACE_MS;
      else if (role === "decode" || role === "expert-host") drainMs = (await parseServiceFlags(role, serviceFlags(name)))["drainGraceMs"] as number;
      // prefill finishes its active jobs (each bounded by a prompt's prefill) and drains gRPC for 5 s
      else drainMs = 5_000;
      expect(drainMs, name).toBeGreaterThan(0);
      // room beyond the drain for closing Redis, gRPC and /metrics
      expect(durationMs(grace!), name).toBeGreaterThanOrEqual(drainMs + 10_000);
    }
  });

  it("waits for healthy dependencies before starting a service", () => {
    const deps = (name: string) => config.services[name].depends_on as Obj;
    for (const name of ["expert-host-0", "expert-host-1"]) expect(Object.keys(deps(name)), name).toEqual(["redis"]);
    expect(Object.keys(deps("decode")).sort()).toEqual(["expert-host-0", "expert-host-1", "redis"]);
    expect(Object.keys(deps("prefill")).sort()).toEqual(["expert-host-0", "expert-host-1", "redis"]);
    expect(Object.keys(deps("router")).sort()).toEqual(["decode", "prefill", "redis"]);
    for (const name of Object.keys(MOELA_SERVICES)) for (const d of Object.values(deps(name))) expect(d, name).toEqual({ condition: "service_healthy" });
  });

  it("runs the exact precision profile by default (as npm start, moela generate and the chart) and honours MOELA_PRECISION", () => {
    for (const name of Object.keys(MOELA_SERVICES)) expect(flagValue(cmd(name), "--precision"), name).toBe("exact");
    const paper = composeConfig({ MOELA_PRECISION: "paper" });
    for (const name of Object.keys(MOELA_SERVICES)) expect(flagValue(paper.services[name].command, "--precision"), name).toBe("paper");
  });

  for (const [name, role] of Object.entries(MOELA_SERVICES)) {
    it.runIf(hasServiceConfig(role))(`passes ${name} flags the ${role} config parser accepts`, async () => {
      const cfg = await parseServiceFlags(role, serviceFlags(name));
      expect(cfg["precision"]).toBe("exact");
      expect([cfg["redisUrl"], cfg["queuePrefix"]]).toEqual(["redis://redis:6379", "moela"]);
      if (role === "decode" || role === "expert-host") expect(cfg["advertiseAddress"]).toBe(flagValue(cmd(name), "--advertise-address"));
      if (role === "expert-host") expect(cfg["shardIndex"]).toBe(Number(name.slice(name.lastIndexOf("-") + 1)));
    });
  }

  it("gives every moela service the internal secret (compose secret -> MOELA_<ROLE>_INTERNAL_SECRET_FILE) and, when MOELA_TLS_* are set, TLS/mTLS its own parser reads", () => {
    expect(config.secrets["moela-internal-secret"].file).toBe(join(REPO_ROOT, "deploy/secrets/internal-secret"));
    expect(readFileSync(join(REPO_ROOT, "deploy/secrets/.gitignore"), "utf8")).toMatch(/^internal-secret$/m);
    const tlsOn = composeConfig({
      MOELA_TLS_CERT: "/etc/moela/tls/tls.crt",
      MOELA_TLS_KEY: "/etc/moela/tls/tls.key",
      MOELA_TLS_CA: "/etc/moela/tls/ca.crt",
      MOELA_TLS_CLIENT_AUTH: "true",
    });
    // The container's paths, mapped onto files here so the real parsers can read them.
    const here = mkdtempSync(join(tmpdir(), "moela-compose-"));
    try {
      const pemCert = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
      const files: Record<string, string> = {
        "/run/secrets/moela-internal-secret": "0123456789abcdef0123456789abcdef\n",
        "/etc/moela/tls/tls.crt": pemCert,
        "/etc/moela/tls/tls.key": "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n",
        "/etc/moela/tls/ca.crt": pemCert,
      };
      const local = new Map(
        Object.entries(files).map(([path, text], i) => {
          const file = join(here, `f${i}`);
          writeFileSync(file, text);
          return [path, file] as const;
        }),
      );
      const model = join(REPO_ROOT, "models/tiny-v3");
      const parse = (name: string, role: ServiceRole, env: Record<string, string>): InternalSecurity => {
        const mapped = Object.fromEntries(Object.entries(env).map(([k, v]) => [k, local.get(v) ?? v]));
        const flags = serviceFlags(name).map((a, i, all) => (all[i - 1] === "--model" ? model : a));
        if (role === "decode") return parseDecodeConfig(flags, mapped)!.security;
        if (role === "expert-host") return parseExpertHostConfig(flags, mapped)!.security;
        if (role === "prefill") return parsePrefillConfig(flags, mapped).security!;
        return parseRouterConfig(flags, mapped).security!;
      };
      for (const [name, role] of Object.entries(MOELA_SERVICES)) {
        const prefix = `MOELA_${role.toUpperCase().replace("-", "_")}_`;
        for (const c of [config, tlsOn]) {
          const svc = c.services[name];
          expect(
            (svc.secrets as (string | Obj)[]).map((x) => (typeof x === "string" ? x : x.source)),
            name,
          ).toEqual(["moela-internal-secret"]);
          expect(svc.environment[`${prefix}INTERNAL_SECRET_FILE`], name).toBe("/run/secrets/moela-internal-secret");
          expect(mounts(svc).get("/etc/moela/tls"), name).toBe(join(REPO_ROOT, "deploy/tls"));
        }
        const plain = parse(name, role, config.services[name].environment as Record<string, string>);
        expect(plain.secrets, name).toEqual(["0123456789abcdef0123456789abcdef"]);
        expect(plain.tls, name).toBeUndefined();
        const tls = parse(name, role, tlsOn.services[name].environment as Record<string, string>);
        expect(tls.secrets, name).toHaveLength(1);
        // The router only dials decode (its own gRPC is the public API): a client of mTLS, no --tls-client-auth.
        expect(tls.tls?.clientAuth, name).toBe(role !== "router");
        expect(tls.tls?.cert?.toString(), name).toContain("BEGIN CERTIFICATE");
      }
    } finally {
      rmSync(here, { recursive: true, force: true });
    }
  });

  it("has Prometheus scrape every moela service's metrics port, each target labelled with its role", () => {
    const prom = mounts(config.services.prometheus);
    expect(prom.get("/etc/prometheus/prometheus.yml")).toBe(join(REPO_ROOT, "deploy/prometheus/prometheus.yml"));
    expect(prom.get("/etc/prometheus/rules")).toBe(join(REPO_ROOT, "deploy/prometheus/rules"));
    const promConfig = parseYaml(readFileSync(join(REPO_ROOT, "deploy/prometheus/prometheus.yml"), "utf8")) as Obj;
    const targets = new Map<string, string>();
    for (const job of promConfig.scrape_configs as Obj[]) {
      for (const sc of job.static_configs as Obj[]) for (const t of sc.targets as string[]) targets.set(t, sc.labels?.role);
    }
    for (const [name, role] of Object.entries(MOELA_SERVICES)) {
      const target = `${name}:${port(flagValue(cmd(name), "--metrics-address"))}`;
      expect(targets.get(target), target).toBe(role);
    }
    expect(promConfig.rule_files).toEqual(["/etc/prometheus/rules/*.yml"]);
  });

  it.runIf(existsSync("/usr/bin/promtool") || existsSync("/usr/local/bin/promtool"))("has a Prometheus config and rules that promtool accepts", () => {
    execFileSync("promtool", ["check", "config", "--syntax-only", join(REPO_ROOT, "deploy/prometheus/prometheus.yml")], { stdio: "pipe" });
    execFileSync("promtool", ["check", "rules", join(REPO_ROOT, "deploy/prometheus/rules/moela.yml")], { stdio: "pipe" });
  });

  it("provisions Grafana with the Prometheus datasource and every dashboard in deploy/grafana/dashboards", () => {
    const grafana = mounts(config.services.grafana);
    expect(grafana.get("/etc/grafana/provisioning")).toBe(join(REPO_ROOT, "deploy/grafana/provisioning"));
    const datasources = parseYaml(readFileSync(join(REPO_ROOT, "deploy/grafana/provisioning/datasources/prometheus.yml"), "utf8")) as Obj;
    expect(datasources.datasources[0]).toMatchObject({ type: "prometheus", uid: "prometheus", url: "http://prometheus:9090" });
    const providers = parseYaml(readFileSync(join(REPO_ROOT, "deploy/grafana/provisioning/dashboards/moela.yml"), "utf8")) as Obj;
    const path = providers.providers[0].options.path as string;
    expect(grafana.get(path)).toBe(join(REPO_ROOT, "deploy/grafana/dashboards"));
  });
});
