/**
 * deploy/docker: no Docker engine runs here, so the Dockerfile is checked by reading it (one target per
 * role, each starting `moela serve --role <role>`, a production install that still has tsx), and the
 * container healthcheck script is run for real against a grpc.health.v1 server.
 */
import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { Server, ServerCredentials } from "@grpc/grpc-js";
import { HealthImplementation } from "grpc-health-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { REPO_ROOT } from "../helpers/helm.js";
import { SERVICE_ROLES } from "../helpers/service-flags.js";

const execFileAsync = promisify(execFile);
const DOCKERFILE = readFileSync(join(REPO_ROOT, "deploy/docker/Dockerfile"), "utf8");

/** The Dockerfile's stages: name -> instructions (continuation lines joined). */
function stages(text: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  let current: string[] | undefined;
  const lines = text.replace(/\\\n/g, " ").split("\n").map((l) => l.trim()).filter((l) => l !== "" && !l.startsWith("#"));
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

  it("builds on node:20-bookworm-slim and installs production dependencies with npm ci", () => {
    const base = s.get("base");
    expect(base?.[0]).toBe("FROM node:20-bookworm-slim AS base");
    expect(base?.some((l) => /^RUN npm ci --omit=dev\b/.test(l))).toBe(true);
    expect(base).toContain("USER node");
  });

  it("keeps tsx a runtime dependency, since the services run TypeScript through it", () => {
    const pkg = JSON.parse(readFileSync(join(REPO_ROOT, "package.json"), "utf8")) as { dependencies: Record<string, string> };
    expect(pkg.dependencies["tsx"]).toBeDefined();
  });

  it.each(SERVICE_ROLES)("has a %s target that differs from the base only by its entrypoint", (role) => {
    expect(s.get(role)).toEqual([
      `FROM base AS ${role}`,
      `ENTRYPOINT ["node", "services/cli/bin/moela.js", "serve", "--role", "${role}"]`,
    ]);
  });

  it("keeps out of the build context nothing the runtime needs", () => {
    const ignored = readFileSync(join(REPO_ROOT, ".dockerignore"), "utf8")
      .split("\n")
      .map((l) => l.trim())
      .filter((l) => l !== "" && !l.startsWith("#"));
    const needed = ["package.json", "package-lock.json", "packages", "services", "proto", "models/tiny-v3", "deploy/docker/grpc-health.mjs"];
    for (const path of needed) {
      for (const pattern of ignored) expect(path === pattern || path.startsWith(`${pattern}/`), `${pattern} hides ${path}`).toBe(false);
    }
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
