/**
 * The publishable package: `npm pack` in packages/client (prepack builds it), `npm install <tarball>`
 * in a scratch project outside the repository. It type-checks there (strict, skipLibCheck off), loads
 * as an ES module and through require(), carries no logger, config or service code, and its errors
 * are the classes it exports.
 */
import { execFile } from "node:child_process";
import { readFileSync, readdirSync, statSync, writeFileSync } from "node:fs";
import { join, relative } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { installPackedClient, readmeExample, type ConsumerProject } from "../../helpers/client-package.js";

const execFileAsync = promisify(execFile);
let consumer: ConsumerProject;
let installed: string;

function walk(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const p = join(dir, name);
    return statSync(p).isDirectory() ? walk(p) : [p];
  });
}

beforeAll(async () => {
  consumer = await installPackedClient();
  installed = join(consumer.dir, "node_modules", "@moela", "client");
}, 600_000);
afterAll(() => consumer?.remove());

describe("@moela/client as an installed package", () => {
  it("has a publishable manifest: not private, a version, import/require/types exports, files, only registry dependencies", () => {
    const pkg = JSON.parse(readFileSync(join(installed, "package.json"), "utf8")) as Record<string, unknown>;
    expect(pkg["name"]).toBe("@moela/client");
    expect(pkg["private"]).toBeUndefined();
    expect(pkg["version"]).toMatch(/^\d+\.\d+\.\d+/);
    const root = (pkg["exports"] as Record<string, Record<string, unknown>>)["."]!;
    expect(root["import"]).toEqual({ types: "./dist/esm/client/src/index.d.ts", default: "./dist/esm/client/src/index.js" });
    expect(root["require"]).toEqual({ types: "./dist/cjs/client/src/index.d.ts", default: "./dist/cjs/client/src/index.js" });
    expect(pkg["files"]).toEqual(["dist/esm", "dist/cjs", "README.md"]);
    expect(Object.keys(pkg["dependencies"] as Record<string, string>).sort()).toEqual(["@bufbuild/protobuf", "@grpc/grpc-js"]);
    // Every file an export names is in the tarball.
    for (const target of [root["import"], root["require"]].flatMap((t) => Object.values(t as Record<string, string>))) {
      expect(statSync(join(installed, target)).isFile(), target).toBe(true);
    }
    // The consumer's install resolved the dependencies itself (from the npm cache or the registry).
    const consumerPkg = JSON.parse(readFileSync(join(consumer.dir, "package.json"), "utf8")) as { dependencies: Record<string, string> };
    expect(consumerPkg.dependencies["@moela/client"]).toMatch(/^file:.*\.tgz$/);
    expect(statSync(join(consumer.dir, "node_modules", "@grpc", "grpc-js", "package.json")).isFile()).toBe(true);
  });

  it("ships no logger, config or service code: only the client, core's errors and clock and the router's wire types", () => {
    const files = walk(join(installed, "dist"))
      .map((f) => relative(installed, f))
      .sort();
    const sources = files.filter((f) => f.endsWith(".js")).map((f) => f.replace(/^dist\/(esm|cjs)\//, ""));
    expect([...new Set(sources)].sort()).toEqual([
      "client/src/client.js",
      "client/src/errors.js",
      "client/src/index.js",
      "client/src/stream.js",
      "core/src/client-core.js",
      "core/src/clock.js",
      "core/src/errors.js",
      "proto-gen/src/client-wire.js",
      "proto-gen/src/gen/moela/v1/common.js",
      "proto-gen/src/gen/moela/v1/router.js",
    ]);
    for (const f of files.filter((f) => f.endsWith(".js") || f.endsWith(".d.ts"))) {
      const text = readFileSync(join(installed, f), "utf8");
      expect(text, f).not.toMatch(/["'](@moela\/[^"']+|pino|zod|bullmq|ioredis|prom-client|fastify)["']/);
    }
  });

  it("type-checks in a strict consumer project, README example included", async () => {
    writeFileSync(join(consumer.dir, "example.ts"), readmeExample());
    consumer.write(
      "typed.ts",
      `
      import { MoelaClient, DeadlineExceededError, MoelaError, type GenerateEvent, type Completion, type ModelInfo } from "@moela/client";
      const client = new MoelaClient({ address: "127.0.0.1:1" });
      const stream = client.generate({ prompt: [1, 2, 3], maxTokens: 4 }, { deadlineMs: 10 });
      const id: string = stream.requestId;
      export async function first(): Promise<GenerateEvent | undefined> { for await (const e of stream) return e; return undefined; }
      export const done: Promise<Completion> = client.complete({ messages: [{ role: 'user', content: 'x' }] });
      export const models: Promise<ModelInfo[]> = client.listModels({ deadlineMs: Infinity });
      export const isMoela: boolean = new DeadlineExceededError('x') instanceof MoelaError;
      // @ts-expect-error prompt or messages is required
      client.generate({ maxTokens: 3 });
      // @ts-expect-error not both
      client.generate({ prompt: 'x', messages: [{ role: 'user', content: 'x' }] });
      // @ts-expect-error an unknown role
      client.generate({ messages: [{ role: 'wizard', content: 'x' }] });
      export { id };
      `,
    );
    consumer.write(
      "typed-cjs.cts",
      `
      import client = require("@moela/client");
      const c: client.MoelaClient = new client.MoelaClient({ address: "127.0.0.1:1" });
      export const models: Promise<client.ModelInfo[]> = c.listModels();
      `,
    );
    await expect(consumer.typecheck(["example.ts", "typed.ts", "typed-cjs.cts"])).resolves.toBe("");
  }, 120_000);

  it("runs under plain node as an ES module: a refused connection is an UnavailableError of the package", async () => {
    consumer.write(
      "refused.mjs",
      `
      import { MoelaClient, UnavailableError, MoelaError } from "@moela/client";
      const client = new MoelaClient({ address: "127.0.0.1:1", maxRetries: 1, initialBackoffMs: 1 });
      try { for await (const e of client.generate({ prompt: 'x' })) console.log(JSON.stringify(e)); }
      catch (err) { console.log(JSON.stringify({ unavailable: err instanceof UnavailableError, moela: err instanceof MoelaError, code: err.code, name: err.name })); }
      finally { client.close(); }
      `,
    );
    const { stdout } = await consumer.node("refused.mjs");
    expect(JSON.parse(stdout.trim())).toEqual({ unavailable: true, moela: true, code: 14, name: "UnavailableError" });
  }, 60_000);

  it("loads through require() (the CommonJS build), with the same API and working error classes", async () => {
    consumer.write(
      "refused.cjs",
      `
      const pkg = require("@moela/client");
      const client = new pkg.MoelaClient({ address: "127.0.0.1:1", maxRetries: 0 });
      client.listModels({ deadlineMs: 5000 })
        .then(() => console.log('unexpected success'), (err) => console.log(JSON.stringify({
          cjs: require.resolve('@moela/client').includes('/dist/cjs/'),
          exports: Object.keys(pkg).sort(), unavailable: err instanceof pkg.UnavailableError, code: err.code })))
        .finally(() => client.close());
      `,
    );
    const { stdout } = await consumer.node("refused.cjs");
    const esm = await execFileAsync(
      process.execPath,
      ["--input-type=module", "-e", 'import * as p from "@moela/client"; console.log(JSON.stringify(Object.keys(p).sort()))'],
      {
        cwd: consumer.dir,
      },
    );
    const out = JSON.parse(stdout.trim()) as { cjs: boolean; exports: string[]; unavailable: boolean; code: number };
    expect(out.cjs).toBe(true);
    expect(out.unavailable).toBe(true);
    expect(out.code).toBe(14);
    expect(out.exports).toEqual(JSON.parse(esm.stdout.trim()));
    expect(out.exports).toEqual(expect.arrayContaining(["MoelaClient", "MoelaError", "ResourceExhaustedError", "retryAfterMs"]));
  }, 60_000);
});
