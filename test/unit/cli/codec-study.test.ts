// `moela codec-study`: one small run on a random-weight checkpoint, as JSON and as tables.
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import type { CodecStudyReport } from "../../../services/cli/src/codec-study.js";
import { weightsKind } from "../../../services/cli/src/codec-study.js";
import { run } from "../../../services/cli/src/main.js";
import { REPO_ROOT } from "../../../services/cli/src/paths.js";
import { makeCheckpoint, removeCheckpoints } from "../../helpers/checkpoints.js";

async function capture(argv: string[]): Promise<{ code: number; out: string }> {
  let out = "";
  const w = vi.spyOn(process.stdout, "write").mockImplementation((s: string | Uint8Array) => {
    out += String(s);
    return true;
  });
  const e = vi.spyOn(process.stderr, "write").mockImplementation(() => true);
  try {
    const code = await run(argv);
    return { code, out };
  } finally {
    w.mockRestore();
    e.mockRestore();
    process.exitCode = undefined;
  }
}

describe("moela codec-study", () => {
  let dir: string;
  const small = ["--sequences", "1", "--context", "4", "--steps", "2", "--synthetic-rows", "2", "--synthetic-cols", "256", "--kernels", "portable"];
  beforeAll(() => {
    dir = makeCheckpoint("tiny-v3");
  });
  afterAll(removeCheckpoints);

  it("says a generated checkpoint has random weights", () => {
    expect(weightsKind(dir)).toBe("random");
    expect(weightsKind("/nonexistent")).toBe("unknown");
  });

  it("says the bundled trained models are trained, though their cards mention the random test models", () => {
    for (const name of ["moela-v3-deep", "moela-v3-brown"]) expect(weightsKind(join(REPO_ROOT, "models", name))).toBe("trained");
    expect(weightsKind(join(REPO_ROOT, "models", "tiny-v3"))).toBe("random");
  });

  it("--json: every codec on the model's MoE inputs and on synthetic data, every output variant, the claim per data set", async () => {
    const { code, out } = await capture(["codec-study", "--model", dir, ...small, "--json"]);
    expect(code).toBe(0);
    const r = JSON.parse(out) as CodecStudyReport;
    expect(r.codecs.map((c) => c.name)).toEqual(["f32", "bf16", "fp8-tile", "fp8-e5m2-tile", "logfmt6", "logfmt7", "logfmt8", "logfmt9", "logfmt10"]);
    expect(r.codecs.filter((c) => c.wire === null).map((c) => c.name)).toEqual(["fp8-e5m2-tile", "logfmt6", "logfmt7", "logfmt9", "logfmt10"]);
    expect(r.models).toHaveLength(1);
    expect(r.models[0]).toMatchObject({ dir, weights: "random" });
    expect(r.models[0]!.study.outputs).toHaveLength(17);
    expect(r.synthetic.map((s) => s.kind)).toEqual(["gaussian", "student-t3", "outlier-channels"]);
    expect(r.rangeSweep.length).toBeGreaterThan(4);
    expect(r.claim.data).toHaveLength(4);
    expect(r.claim.outputs.map((o) => o.combine)).toEqual(["bf16", "f32"]);
  });

  it("prints the tables, naming random weights as such", async () => {
    const { code, out } = await capture(["codec-study", "--model", dir, ...small]);
    expect(code).toBe(0);
    expect(out).toContain("RANDOM weights (not a trained model)");
    expect(out).toContain("| LogFMT-8 | 1.0625 |");
    expect(out).toContain("## The claim: LogFMT-8 vs FP8 E4M3");
  });

  it("refuses a folder without config.json", async () => {
    const { code } = await capture(["codec-study", "--model", "/nonexistent", ...small]);
    expect(code).toBe(2);
  });
});
