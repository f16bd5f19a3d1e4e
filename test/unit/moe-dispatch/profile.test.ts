// Precision profiles: each name resolves to the formats the table in packages/moe-dispatch/src/profile.ts
// promises, maps to its own wire value and back, and every list of profile names in the platform (the
// scheduler's job schema, the launcher, the chart's values schema) is the same list.
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { InvalidArgumentError } from "@moela/core";
import {
  fromInfoResponse,
  fromTensor,
  fromWirePrecision,
  getDispatchCodec,
  isPrecisionName,
  PRECISION_NAMES,
  PRECISION_PROFILES,
  precisionProfile,
  resolveProfile,
  toInfoResponse,
  toTensor,
  toWirePrecision,
  type PrecisionName,
} from "@moela/moe-dispatch";
import { DType, Precision } from "@moela/proto-gen";
import { PRECISIONS as JOB_PRECISIONS } from "@moela/scheduler";
import { PRECISIONS as LAUNCHER_PRECISIONS } from "../../../services/cli/src/launcher.js";
import { bits, gaussianMatrix } from "./random.js";

describe("precision profiles", () => {
  it.each<[PrecisionName, string, string, string, Precision]>([
    ["exact", "f32", "f32", "f32", Precision.PRECISION_EXACT],
    ["paper", "bf16", "fp8-tile", "bf16", Precision.PRECISION_PAPER],
    ["paper-logfmt8", "bf16", "logfmt8", "bf16", Precision.PRECISION_PAPER_LOGFMT8],
  ])("%s: %s KV, %s dispatch, %s combine, wire value %i", (name, kv, dispatch, combine, wire) => {
    const p = precisionProfile(name);
    expect(p).toEqual({ name, kvDtype: kv, dispatch, combine });
    expect(resolveProfile(name)).toBe(p);
    expect(PRECISION_PROFILES[name]).toBe(p);
    expect(Object.isFrozen(p)).toBe(true);
    // The names are registered codecs: the dispatcher and the hosts get exactly these.
    expect(getDispatchCodec(p.dispatch).name).toBe(dispatch);
    expect(getDispatchCodec(p.combine).name).toBe(combine);
    expect(toWirePrecision(name)).toBe(wire);
    expect(fromWirePrecision(wire)).toBe(name);
  });

  it("paper-logfmt8 sends as many bytes as paper, 1 per value plus per-tile metadata", () => {
    const [paper, logfmt] = [precisionProfile("paper"), precisionProfile("paper-logfmt8")];
    expect(getDispatchCodec(logfmt.dispatch).bytesPerValue).toBe(getDispatchCodec(paper.dispatch).bytesPerValue);
    expect(getDispatchCodec(logfmt.dispatch).bytesPerValue).toBe(1);
    // LogFMT carries two float32 per 1x128 tile (lo, hi), FP8 one scale.
    expect(getDispatchCodec(logfmt.dispatch).encodedBytes(2, 256) - getDispatchCodec(paper.dispatch).encodedBytes(2, 256)).toBe(2 * 2 * 4);
  });

  it("PRECISION_NAMES is exactly the table's profiles, in order", () => {
    expect([...PRECISION_NAMES]).toEqual(["exact", "paper", "paper-logfmt8"]);
    expect(Object.keys(PRECISION_PROFILES)).toEqual([...PRECISION_NAMES]);
    for (const n of PRECISION_NAMES) expect(isPrecisionName(n)).toBe(true);
  });

  it("every other list of profile names in the platform is the same list", () => {
    const schema = JSON.parse(readFileSync(new URL("../../../charts/moela/values.schema.json", import.meta.url), "utf8")) as {
      properties: { precision: { enum: string[] } };
    };
    expect([...JOB_PRECISIONS], "packages/scheduler queues.ts PRECISIONS").toEqual([...PRECISION_NAMES]);
    expect([...LAUNCHER_PRECISIONS], "services/cli launcher.ts PRECISIONS").toEqual([...PRECISION_NAMES]);
    expect(schema.properties.precision.enum, "charts/moela/values.schema.json precision enum").toEqual([...PRECISION_NAMES]);
  });

  it("an unknown name is refused with every known profile listed", () => {
    for (const bad of ["logfmt8", "paper-logfmt", "PAPER", ""]) {
      expect(isPrecisionName(bad)).toBe(false);
      expect(() => precisionProfile(bad)).toThrow(InvalidArgumentError);
      expect(() => precisionProfile(bad)).toThrow(`unknown precision profile "${bad}"; known: exact, paper, paper-logfmt8`);
    }
  });

  it("a wire precision without a profile is refused, naming the ones served", () => {
    expect(() => fromWirePrecision(Precision.PRECISION_UNSPECIFIED)).toThrow(InvalidArgumentError);
    expect(() => fromWirePrecision(Precision.PRECISION_UNSPECIFIED)).toThrow(
      /PRECISION_UNSPECIFIED is not one this build serves \(exact, paper, paper-logfmt8\)/,
    );
  });

  it("an expert-host running paper-logfmt8 says so over the wire (Info), and its activations cross as LOGFMT8 tensors", () => {
    const info = {
      shardIndex: 1,
      shardCount: 2,
      layers: [{ layer: 3, expertIds: [4, 5] }],
      modelId: "tiny",
      precision: "paper-logfmt8" as const,
      hiddenSize: 256,
      sharedExpert: false,
    };
    const msg = toInfoResponse(info);
    expect(msg.precision).toBe(Precision.PRECISION_PAPER_LOGFMT8);
    expect(fromInfoResponse(msg)).toEqual(info);

    const codec = getDispatchCodec(precisionProfile("paper-logfmt8").dispatch);
    const x = gaussianMatrix(3, 2, 256);
    const t = toTensor(codec.encode(x, 2, 256));
    expect(t.dtype).toBe(DType.DTYPE_LOGFMT8);
    expect(t.tileSize).toBe(128);
    const back = fromTensor(t, "activations");
    expect(back.codec).toBe("logfmt8");
    expect(bits(codec.decode(back))).toEqual(bits(codec.roundTrip(x.slice(), 2, 256)));
  });
});
