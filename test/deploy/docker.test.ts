/**
 * deploy/docker: no Docker engine runs here, so the Dockerfile is checked by reading it (one image whose
 * entrypoint is the moela CLI, the role an argument; a current Node LTS base while package.json still
 * allows Node 20; dependencies installed from the manifests alone, before the sources are copied; a
 * production install that still has tsx), its manifest-extraction step is run for real on this checkout,
 * and the container healthcheck script is run for real against a grpc.health.v1 server, plaintext and mTLS.
 */
import { execFile } from "node:child_process";
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { Server, ServerCredentials } from "@grpc/grpc-js";
import { HealthImplementation } from "grpc-health-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { REPO_ROOT } from "../helpers/helm.js";
import { SERVICE_ROLES } from "../helpers/service-flags.js";
import { hasOpenssl, makeTestCa, makeTestLeaf, removeTestCerts, type TestCa, type TestLeaf } from "../helpers/tls.js";

const execFileAsync = promisify(execFile);
const DOCKERFILE = readFileSync(join(REPO_ROOT, "deploy/docker/Dockerfile"), "utf8");

/** The Dockerfile's stages: name -> instructions (continuation lines joined). */
function stages(text: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  let current: string[] | undefined;
  const lines = text
    .replace(/\\\n/g, " ")
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l !== "" && !l.startsWith("#"));
  for (const line of lines) {
    const from = /^FROM\s+(\S+)(?:\s+AS\s+(\S+))?$/i.exec(line);
    if (from !== null) {
      current = [line];
      out.set(from[2] ?? from[1]!, current);
    } else current?.push(line);
  }
  return out;
}

describe("deploy/docker/Dockerfile", () => {
  const s = stages(DOCKERFILE);

  it("builds on a current Node LTS (an even major, 24 or later) while the code still declares Node 20", () => {
    const arg = /^ARG NODE_VERSION=(\d+)$/m.exec(DOCKERFILE);
    expect(arg, "ARG NODE_VERSION=<major> before the first FROM").not.toBeNull();
    const major = Number(arg![1]);
    expect(major % 2, "LTS lines are the even majors").toBe(0);
    expect(major).toBeGreaterThanOrEqual(24);
    expect(s.get("base")?.[0]).toBe("FROM node:${NODE_VERSION}-bookworm-slim AS base");
    const pkg = JSON.parse(readFileSync(join(REPO_ROOT, "package.json"), "utf8")) as { engines: { node: string } };
    expect(pkg.engines.node).toBe(">=20");
  });

  it("installs production dependencies with npm ci from the manifests alone, before the sources are copied", () => {
    const deps = s.get("deps")!;
    expect(deps).toBeDefined();
    const install = deps.findIndex((l) => /^RUN npm ci --omit=dev\b/.test(l));
    expect(install).toBeGreaterThan(0);
    expect(deps.slice(0, install).filter((l) => l.startsWith("COPY"))).toEqual(["COPY --from=manifests /manifests/ ./"]);
    const image = [...s.values()].at(-1)!;
    expect(image.filter((l) => l.startsWith("COPY"))).toEqual(["COPY --from=deps /app/ ./", "COPY . ."]);
    expect(image).toContain("USER node");
  });

  it("extracts every workspace manifest, the lockfile and the native kernels' package (the manifests stage, run here)", () => {
    const run = s.get("manifests")!.find((l) => l.startsWith("RUN "))!;
    const out = mkdtempSync(join(tmpdir(), "moela-manifests-"));
    try {
      execFileSync("/bin/sh", ["-c", run.slice(4).replaceAll("/manifests", out).replaceAll("/src", REPO_ROOT)], { stdio: "pipe" });
      const pkg = JSON.parse(readFileSync(join(REPO_ROOT, "package.json"), "utf8")) as { workspaces: string[] };
      expect(pkg.workspaces).toEqual(["packages/*", "services/*"]);
      const workspaces = execFileSync("/bin/sh", ["-c", "ls -d packages/*/package.json services/*/package.json"], { cwd: REPO_ROOT, encoding: "utf8" })
        .trim()
        .split("\n");
      for (const f of [
        "package.json",
        "package-lock.json",
        ...workspaces,
        "packages/engine-native/binding.gyp",
        "packages/engine-native/scripts/build.cjs",
        "packages/shm-native/binding.gyp",
      ]) {
        expect(existsSync(join(out, f)), f).toBe(true);
      }
      expect(existsSync(join(out, "packages/core/src")), "sources stay out of the install layer").toBe(false);
    } finally {
      rmSync(out, { recursive: true, force: true });
    }
  });

  it("is one image: the moela CLI as entrypoint, the role an argument (no per-role targets)", () => {
    const image = [...s.entries()].at(-1)!;
    expect(image[0], "the last stage is the default target").toBe("moela");
    expect(image[1]).toContain('ENTRYPOINT ["node", "services/cli/bin/moela.js"]');
    for (const role of SERVICE_ROLES) expect(s.has(role), role).toBe(false);
  });

  it("keeps tsx a runtime dependency, since the services run TypeScript through it", () => {
    const pkg = JSON.parse(readFileSync(join(REPO_ROOT, "package.json"), "utf8")) as { dependencies: Record<string, string> };
    expect(pkg.dependencies["tsx"]).toBeDefined();
  });

  it("keeps out of the build context nothing the runtime needs", () => {
    const ignored = readFileSync(join(REPO_ROOT, ".dockerignore"), "utf8")
      .split("\n")
      .map((l) => l.trim())
      .filter((l) => l !== "" && !l.startsWith("#"));
    const needed = [
      "package.json",
      "package-lock.json",
      "packages",
      "services",
      "proto",
      "models/tiny-v3",
      "models/moela-v3-brown",
      "models/moela-v3-deep",
      "deploy/docker/grpc-health.mjs",
    ];
    for (const path of needed) {
      for (const pattern of ignored) expect(path === pattern || path.startsWith(`${pattern}/`), `${pattern} hides ${path}`).toBe(false);
    }
    // a locally built addon must not replace the one the deps stage built for the image's Node
    expect(ignored).toContain("packages/engine-native/build");
    expect(ignored).toContain("packages/shm-native/build");
  });
});

describe("deploy/docker/grpc-health.mjs", () => {
  let server: Server;
  let address = "";
  const health = new HealthImplementation({ "": "SERVING", "moela.v1.Decode": "NOT_SERVING" });

  beforeAll(async () => {
    server = new Server();
    health.addToServer(server);
    const port = await new Promise<number>((resolve, reject) =>
      server.bindAsync("127.0.0.1:0", ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
    );
    address = `127.0.0.1:${port}`;
  });
  afterAll(() => {
    server.forceShutdown();
  });

  async function probe(...args: string[]): Promise<{ code: number; stderr: string }> {
    try {
      await execFileAsync(process.execPath, [join(REPO_ROOT, "deploy/docker/grpc-health.mjs"), ...args], { cwd: REPO_ROOT, timeout: 15_000 });
      return { code: 0, stderr: "" };
    } catch (err) {
      const e = err as { code?: number; stderr?: string };
      return { code: e.code ?? -1, stderr: e.stderr ?? "" };
    }
  }

  it("exits 0 when the server reports SERVING", async () => {
    expect(await probe(address)).toEqual({ code: 0, stderr: "" });
  });

  it("exits 1 naming the status when a service reports NOT_SERVING", async () => {
    const r = await probe(address, "moela.v1.Decode");
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("NOT_SERVING");
  });

  it("exits 1 when nothing listens on the address", async () => {
    const r = await probe("127.0.0.1:1");
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("127.0.0.1:1");
  });
});

describe.runIf(hasOpenssl())("deploy/docker/grpc-health.mjs against an mTLS service", () => {
  let server: Server;
  let address = "";
  let ca: TestCa;
  let leaf: TestLeaf;

  beforeAll(async () => {
    ca = makeTestCa();
    leaf = makeTestLeaf(ca, "decode");
    server = new Server();
    new HealthImplementation({ "": "SERVING" }).addToServer(server);
    const creds = ServerCredentials.createSsl(readFileSync(ca.caCert), [{ cert_chain: readFileSync(leaf.cert), private_key: readFileSync(leaf.key) }], true);
    const port = await new Promise<number>((resolve, reject) => server.bindAsync("127.0.0.1:0", creds, (err, p) => (err ? reject(err) : resolve(p))));
    address = `127.0.0.1:${port}`;
  });
  afterAll(() => {
    server?.forceShutdown();
    removeTestCerts();
  });

  /** The probe with the container's environment (only the given MOELA_* variables). */
  async function probe(env: Record<string, string>): Promise<number> {
    const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("MOELA_")));
    try {
      await execFileAsync(process.execPath, [join(REPO_ROOT, "deploy/docker/grpc-health.mjs"), address], {
        cwd: REPO_ROOT,
        timeout: 15_000,
        env: { ...clean, ...env },
      });
      return 0;
    } catch (err) {
      return (err as { code?: number }).code ?? -1;
    }
  }

  it("dials TLS with the service's own files (MOELA_<ROLE>_TLS_*), and fails without them", async () => {
    expect(await probe({ MOELA_DECODE_TLS_CA: ca.caCert, MOELA_DECODE_TLS_CERT: leaf.cert, MOELA_DECODE_TLS_KEY: leaf.key })).toBe(0);
    expect(await probe({ MOELA_EXPERT_HOST_TLS_CA: ca.caCert, MOELA_EXPERT_HOST_TLS_CERT: leaf.cert, MOELA_EXPERT_HOST_TLS_KEY: leaf.key })).toBe(0);
    // Empty values (compose's unset MOELA_TLS_*) and the router's settings (its gRPC is plaintext) mean plaintext.
    expect(await probe({ MOELA_DECODE_TLS_CA: "", MOELA_DECODE_TLS_CERT: "", MOELA_DECODE_TLS_KEY: "" })).toBe(1);
    expect(await probe({ MOELA_ROUTER_TLS_CA: ca.caCert, MOELA_ROUTER_TLS_CERT: leaf.cert, MOELA_ROUTER_TLS_KEY: leaf.key })).toBe(1);
    // mTLS: a CA alone (no client certificate) is refused.
    expect(await probe({ MOELA_PREFILL_TLS_CA: ca.caCert })).toBe(1);
  });
});
