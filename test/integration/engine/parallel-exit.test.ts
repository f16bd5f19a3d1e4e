/** A process that used a MatmulPool exits by itself (a child process per case: fixtures/parallel-exit.ts). */
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

describe("process lifetime", () => {
  it.each([
    ["after close()", "close"],
    ["without close() (workers are unref'd)", "no-close"],
  ])("a process that used a pool exits on its own %s", (_name, mode) => {
    const fixture = fileURLToPath(new URL("./fixtures/parallel-exit.ts", import.meta.url));
    const root = fileURLToPath(new URL("../../../", import.meta.url));
    const r = spawnSync(process.execPath, ["--import", "tsx", fixture, mode], { cwd: root, encoding: "utf8", timeout: 60_000 });
    expect(r.error).toBeUndefined();
    expect(r.signal).toBeNull();
    expect(r.stderr).toBe("");
    expect(r.status).toBe(0);
    expect(r.stdout.trim()).toBe("same bits, worker chunks > 0");
  });
});
