/**
 * The publishable package: built by scripts/build-client.ts, packed by npm, installed in another
 * project, it type-checks (strict, skipLibCheck off) and runs under plain node, with errors that
 * are the same classes the package exports.
 */
import { execFile } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { installPackedClient, readmeExample, type ConsumerProject } from "../../helpers/client-package.js";

const execFileAsync = promisify(execFile);
let consumer: ConsumerProject;

beforeAll(async () => {
  consumer = await installPackedClient();
}, 120_000);
afterAll(() => consumer?.remove());

describe("@moela/client as an installed package", () => {
  it("has a manifest with exports, types and files, and no workspace dependency", () => {
    const pkg = JSON.parse(readFileSync(join(consumer.dir, "node_modules/@moela/client/package.json"), "utf8")) as Record<string, unknown>;
    expect(pkg["name"]).toBe("@moela/client");
    expect(pkg["version"]).toMatch(/^\d+\.\d+\.\d+/);
    expect(pkg["exports"]).toEqual({ ".": { types: "./client/src/index.d.ts", import: "./client/src/index.js", default: "./client/src/index.js" } });
    expect(pkg["types"]).toBe("./client/src/index.d.ts");
    expect(pkg["files"]).toEqual(expect.arrayContaining(["client", "README.md"]));
    const deps = Object.keys(pkg["dependencies"] as Record<string, string>);
    expect(deps).toContain("@grpc/grpc-js");
    expect(deps.filter((d) => d.startsWith("@moela/"))).toEqual([]);
  });

  it("type-checks in a strict consumer project, README example included", async () => {
    writeFileSync(join(consumer.dir, "example.ts"), readmeExample());
    writeFileSync(
      join(consumer.dir, "typed.ts"),
      [
        'import { MoelaClient, DeadlineExceededError, MoelaError, type GenerateEvent, type Completion } from "@moela/client";',
        'const client = new MoelaClient({ address: "127.0.0.1:1" });',
        'const stream = client.generate({ prompt: [1, 2, 3], maxTokens: 4 }, { deadlineMs: 10 });',
        "const id: string = stream.requestId;",
        "export async function first(): Promise<GenerateEvent | undefined> { for await (const e of stream) return e; return undefined; }",
        "export const done: Promise<Completion> = client.complete({ prompt: 'x' });",
        "export const isMoela: boolean = new DeadlineExceededError('x') instanceof MoelaError;",
        "// @ts-expect-error prompt is required",
        "client.generate({ maxTokens: 3 });",
        "export { id };",
      ].join("\n"),
    );
    await expect(consumer.typecheck(["example.ts", "typed.ts"])).resolves.toBe("");
  }, 120_000);

  it("runs under plain node: a refused connection is an UnavailableError of the package", async () => {
    writeFileSync(
      join(consumer.dir, "refused.mjs"),
      [
        'import { MoelaClient, UnavailableError, MoelaError } from "@moela/client";',
        'const client = new MoelaClient({ address: "127.0.0.1:1", maxRetries: 1, initialBackoffMs: 1 });',
        "try { for await (const e of client.generate({ prompt: 'x' })) console.log(JSON.stringify(e)); }",
        "catch (err) { console.log(JSON.stringify({ unavailable: err instanceof UnavailableError, moela: err instanceof MoelaError, code: err.code, name: err.name })); }",
        "finally { client.close(); }",
      ].join("\n"),
    );
    const { stdout } = await execFileAsync(process.execPath, ["refused.mjs"], { cwd: consumer.dir });
    expect(JSON.parse(stdout.trim())).toEqual({ unavailable: true, moela: true, code: 14, name: "UnavailableError" });
  }, 60_000);
});
