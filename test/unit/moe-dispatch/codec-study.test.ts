/**
 * The codec study's measurements: the metric formulas on hand-made inputs, the headline numbers on
 * fixed synthetic data, and the model runs (recording, codec rounding, teacher forcing) on a tiny
 * random-weight checkpoint.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DeepseekModel, type ExpertExecutor } from "@moela/engine";
import {
  CodecExpertExecutor,
  LogitDiffAccumulator,
  RecordingExpertExecutor,
  STUDY_CODECS,
  claimOnData,
  codecError,
  createInProcessExperts,
  dataStats,
  defaultOutputVariants,
  logUniformActivations,
  routingAgreement,
  studyCodec,
  studyModel,
  syntheticActivations,
  teacherForced,
  type StudyCodec,
} from "@moela/moe-dispatch";
import { makeCheckpoint, removeCheckpoints } from "../../helpers/checkpoints.js";
import { bits } from "./random.js";

/** A fake codec with a known error: scales by 1.01 and sends the first value of each row as 0. */
const FAKE: StudyCodec = {
  name: "fake",
  label: "fake",
  dispatchCodec: null,
  bytesPerValue: () => 1,
  roundTrip: (x, rows, cols, out) => {
    for (let i = 0; i < rows * cols; i++) out[i] = i % cols === 0 ? 0 : x[i]! * 1.01;
    return out;
  },
};

describe("codec study metrics on hand-made inputs", () => {
  it("codecError: relative RMS, mean relative, max (absolute and per tile max) and flushed fraction", () => {
    const x = Float32Array.of(2, 1, -4, 0, /* row 2 */ 1, 1, 1, 1);
    const e = codecError(FAKE, x, 2, 4, 2); // tiles of 2: [2,1] [-4,0] [1,1] [1,1]
    const y = FAKE.roundTrip(x, 2, 4, new Float32Array(8));
    let num = 0;
    let den = 0;
    for (let i = 0; i < 8; i++) {
      num += (y[i]! - x[i]!) ** 2;
      den += x[i]! ** 2;
    }
    expect(e.relRms).toBeCloseTo(Math.sqrt(num / den), 12);
    // Nonzero inputs: 2 (flushed, rel 1), 1, -4 (0.01 each, up to float32 rounding), 1 (flushed), 1, 1, 1.
    expect(e.flushedToZero).toBeCloseTo(2 / 7, 12);
    expect(e.meanRelErr).toBeCloseTo((2 + 5 * 0.01) / 7, 6);
    expect(e.maxAbsErr).toBe(2);
    expect(e.maxTileRelErr).toBe(1); // the 2 in tile [2, 1] lost entirely
    expect(e.bytesPerValue).toBe(1);
    expect(e.codec).toBe("fake");
  });

  it("codecError: F32 is exact and an all-zero matrix has no error", () => {
    const f32 = studyCodec("f32");
    const x = syntheticActivations("student-t3", 4, 256, 1);
    expect(codecError(f32, x, 4, 256)).toMatchObject({ relRms: 0, meanRelErr: 0, maxAbsErr: 0, maxTileRelErr: 0, flushedToZero: 0, bytesPerValue: 4 });
    for (const c of STUDY_CODECS) expect(codecError(c, new Float32Array(256), 2, 128)).toMatchObject({ relRms: 0, maxAbsErr: 0, flushedToZero: 0 });
  });

  it("dataStats: a +-1 matrix has kurtosis 1, tile crest 1 and no in-tile range", () => {
    const x = Float32Array.from({ length: 2 * 256 }, (_, i) => (i % 2 ? -1 : 1));
    expect(dataStats(x, 2, 256)).toEqual({ rows: 2, cols: 256, rms: 1, amax: 1, kurtosis: 1, tileCrest: 1, tileLog2Range: 0, zeros: 0 });
    const z = dataStats(Float32Array.of(0, 0, 4, 0), 1, 4);
    expect(z.zeros).toBe(0.75);
    expect(z.kurtosis).toBeCloseTo(4, 12); // E[x^4] / E[x^2]^2 = 64 / 16
  });

  it("synthetic data: seeded, and shaped as named (gaussian kurtosis 3; the heavy-tailed kinds much more)", () => {
    expect(bits(syntheticActivations("gaussian", 8, 512, 3))).toEqual(bits(syntheticActivations("gaussian", 8, 512, 3)));
    expect(bits(syntheticActivations("gaussian", 8, 512, 3))).not.toEqual(bits(syntheticActivations("gaussian", 8, 512, 4)));
    const g = dataStats(syntheticActivations("gaussian", 64, 7168, 0), 64, 7168);
    expect(g.kurtosis).toBeGreaterThan(2.9);
    expect(g.kurtosis).toBeLessThan(3.1);
    expect(g.rms).toBeCloseTo(1, 1);
    expect(dataStats(syntheticActivations("student-t3", 64, 7168, 1), 64, 7168).kurtosis).toBeGreaterThan(10);
    const o = syntheticActivations("outlier-channels", 64, 7168, 2);
    expect(dataStats(o, 64, 7168).kurtosis).toBeGreaterThan(30);
    // The outlier channels are the same in every row.
    let big = 0;
    for (let c = 0; c < 7168; c++) {
      let s = 0;
      for (let r = 0; r < 64; r++) s += o[r * 7168 + c]! ** 2;
      if (Math.sqrt(s / 64) > 10) big++;
    }
    expect(big).toBeGreaterThan(60);
    expect(big).toBeLessThanOrEqual(72);
  });

  it("LogitDiffAccumulator: equal logits agree fully; a constant shift changes no probability; a swapped top-1 is counted", () => {
    const a = new LogitDiffAccumulator(4);
    const e = Float32Array.of(1, 3, 2, 0);
    a.add(e, 0, Float32Array.of(1, 3, 2, 0), 0);
    a.add(e, 0, Float32Array.of(6, 8, 7, 5), 0); // +5 everywhere
    a.add(e, 0, Float32Array.of(9, 1, 3, 2, 0), 1); // offset 1: [1, 3, 2, 0]
    const r = a.result();
    expect(r).toMatchObject({ top1Agreement: 1, pairs: 3, maxAbsDiff: 5 });
    expect(r.meanAbsDiff).toBeCloseTo(5 / 3, 6);
    expect(r.meanKl).toBeCloseTo(0, 6);
    const b = new LogitDiffAccumulator(2);
    b.add(Float32Array.of(1, 0), 0, Float32Array.of(0, 1), 0);
    const p = 1 / (1 + Math.exp(-1)); // softmax([1, 0])[0]
    expect(b.result().top1Agreement).toBe(0);
    expect(b.result().meanKl).toBeCloseTo(p * Math.log(p / (1 - p)) + (1 - p) * Math.log((1 - p) / p), 6);
  });

  it("routingAgreement: the fraction of (token, slot) expert choices the exact run also made, order within a token ignored", () => {
    const exact = [Int32Array.of(1, 2, 3, 4), Int32Array.of(5, 6)]; // k = 2: tokens [1,2] [3,4], then [5,6]
    expect(routingAgreement(exact, [Int32Array.of(2, 1, 3, 4), Int32Array.of(5, 6)], 2)).toBe(1);
    expect(routingAgreement(exact, [Int32Array.of(1, 9, 3, 4), Int32Array.of(7, 8)], 2)).toBe(3 / 6);
    expect(() => routingAgreement(exact, [Int32Array.of(1, 2, 3, 4)], 2)).toThrow(/2 calls against 1/);
  });

  it("logUniformActivations: every tile spans about the asked binades; FP8 E4M3 flushes what falls below its 2^-17.8 reach", () => {
    for (const b of [4, 12, 24]) {
      const x = logUniformActivations(8, 1024, b, 1);
      const st = dataStats(x, 8, 1024);
      expect(st.tileLog2Range).toBeGreaterThan(b * 0.95);
      expect(st.tileLog2Range).toBeLessThanOrEqual(b);
    }
    const x = logUniformActivations(16, 1024, 24, 2);
    // E4M3's smallest subnormal is 2^-9 of a scale of max/448: below about 2^-18.8 of the tile max a value rounds to 0.
    const flushed = codecError(studyCodec("fp8-tile"), x, 16, 1024).flushedToZero;
    expect(flushed).toBeGreaterThan((24 - 18.9) / 24 - 0.03);
    expect(flushed).toBeLessThan((24 - 18.7) / 24 + 0.03);
    expect(codecError(studyCodec("logfmt8"), x, 16, 1024).flushedToZero).toBe(0);
  });

  it("claimOnData: the ratio and the narrowest LogFMT at least as accurate as E4M3", () => {
    const err = (codec: string, relRms: number, bytesPerValue: number) => ({
      codec,
      relRms,
      bytesPerValue,
      meanRelErr: relRms,
      maxAbsErr: 0,
      maxTileRelErr: 0,
      flushedToZero: 0,
    });
    const c = claimOnData("d", [err("fp8-tile", 0.026, 1.03), err("logfmt7", 0.029, 0.94), err("logfmt8", 0.014, 1.06), err("logfmt9", 0.007, 1.19)]);
    expect(c.ratio).toBeCloseTo(26 / 14, 12);
    expect(c.narrowestLogFmtAsGood).toBe("logfmt8");
    expect(claimOnData("d", [err("fp8-tile", 0.01, 1.03), err("logfmt8", 0.02, 1.06)]).narrowestLogFmtAsGood).toBeNull();
  });
});

describe("codec study on fixed synthetic input (64 x 7168, seed 0): the paper's comparison", () => {
  const x = syntheticActivations("gaussian", 64, 7168, 0);
  const err = Object.fromEntries(STUDY_CODECS.map((c) => [c.name, codecError(c, x, 64, 7168)]));

  it("sizes: F32 4, BF16 2, FP8 1 + 4/128, LogFMT-n n/8 + 8/128 bytes per value", () => {
    expect(err.f32!.bytesPerValue).toBe(4);
    expect(err.bf16!.bytesPerValue).toBe(2);
    expect(err["fp8-tile"]!.bytesPerValue).toBe(1 + 4 / 128);
    expect(err["fp8-e5m2-tile"]!.bytesPerValue).toBe(1 + 4 / 128);
    for (const n of [6, 7, 8, 9, 10]) expect(err[`logfmt${n}`]!.bytesPerValue).toBe(n / 8 + 8 / 128);
  });

  it("gaussian tiles: LogFMT-8 about half E4M3's error, E5M2 about twice; each LogFMT bit halves the error", () => {
    const rel = (n: string): number => err[n]!.relRms;
    expect(rel("fp8-tile")).toBeGreaterThan(0.024);
    expect(rel("fp8-tile")).toBeLessThan(0.028);
    expect(rel("logfmt8")).toBeGreaterThan(0.012);
    expect(rel("logfmt8")).toBeLessThan(0.016);
    expect(rel("fp8-e5m2-tile") / rel("fp8-tile")).toBeGreaterThan(1.8);
    expect(rel("fp8-e5m2-tile") / rel("fp8-tile")).toBeLessThan(2.2);
    for (const n of [6, 7, 8, 9]) {
      const ratio = rel(`logfmt${n}`) / rel(`logfmt${n + 1}`);
      expect(ratio).toBeGreaterThan(1.8);
      expect(ratio).toBeLessThan(2.2);
    }
    expect(rel("bf16")).toBeLessThan(0.002);
    expect(claimOnData("gaussian", Object.values(err)).narrowestLogFmtAsGood).toBe("logfmt8");
  });
});

describe("codec study on a model (tiny-v3, random weights)", () => {
  let dir: string;
  let model: DeepseekModel;
  const seqs = [
    { context: [5, 17, 200, 3, 90, 44], next: [7, 300, 12, 8] },
    { context: [400, 2, 2, 61, 800, 15], next: [19, 23, 29, 31] },
  ];
  beforeAll(() => {
    dir = makeCheckpoint("tiny-v3");
    model = DeepseekModel.load(dir, { kvDtype: "f32", kernels: "portable" });
  });
  afterAll(async () => {
    await model.close();
    removeCheckpoints();
  });

  async function run(experts: ExpertExecutor, steps = 4): Promise<Float32Array[]> {
    model.setExpertExecutor(experts);
    const out: Float32Array[] = [];
    await teacherForced(model, seqs, steps, (_, logits) => out.push(logits.slice(0, seqs.length * model.config.vocabSize)));
    return out;
  }

  it("the recorder changes nothing and keeps every MoE layer's input rows", async () => {
    const exact = createInProcessExperts(model, 1, "exact").executor;
    const plain = await run(exact);
    const rec = new RecordingExpertExecutor(exact, model.config.hiddenSize, { expertsPerToken: model.config.numExpertsPerTok });
    const recorded = await run(rec);
    expect(recorded.map(bits)).toEqual(plain.map(bits));
    // One routing record per call: 3 MoE layers x (prefill + 3 decode steps), [T, k] each.
    expect(rec.routes).toHaveLength(3 * 4);
    expect(rec.routes[0]).toHaveLength(12 * model.config.numExpertsPerTok);
    expect(rec.routes[3]).toHaveLength(2 * model.config.numExpertsPerTok);
    // tiny-v3: 4 layers, the first dense; rows = prefill (2 x 6) + 3 decode steps x 2 sequences.
    expect([...rec.captured.keys()]).toEqual([1, 2, 3]);
    expect(rec.matrix(1).rows).toBe(12 + 3 * 2);
    expect(rec.matrix().rows).toBe(3 * 18);
  });

  it("CodecExpertExecutor with E4M3 dispatch and BF16 combine gives the bits of the dispatcher with those codecs (one host)", async () => {
    const exact = createInProcessExperts(model, 1, "exact").executor;
    const viaStudy = await run(new CodecExpertExecutor(exact, model.config.hiddenSize, studyCodec("fp8-tile"), studyCodec("bf16")));
    const paperKvF32 = { name: "paper", kvDtype: "f32", dispatch: "fp8-tile", combine: "bf16" } as const;
    const viaDispatcher = await run(createInProcessExperts(model, 1, paperKvF32).executor);
    expect(viaStudy.map(bits)).toEqual(viaDispatcher.map(bits));
    expect(viaStudy.map(bits)).not.toEqual((await run(exact)).map(bits)); // the codecs did round
    const logfmt = await run(new CodecExpertExecutor(exact, model.config.hiddenSize, studyCodec("logfmt8"), studyCodec("bf16")));
    const viaDispatcherLogFmt = await run(createInProcessExperts(model, 1, { ...paperKvF32, dispatch: "logfmt8" }).executor);
    expect(logfmt.map(bits)).toEqual(viaDispatcherLogFmt.map(bits));
  });

  it("studyModel: exact-equivalent variants match exactly, lossy ones do not, and the report has every codec", async () => {
    const f32 = studyCodec("f32");
    const variants = [
      { dispatch: f32, combine: f32 },
      { dispatch: studyCodec("logfmt6"), combine: studyCodec("bf16") },
    ];
    const runs: string[] = [];
    const s = await studyModel(model, seqs, 4, { variants, onRun: (name) => runs.push(name) });
    expect(runs).toEqual(["exact", "f32+f32", "logfmt6+bf16"]);
    expect(s).toMatchObject({ hidden: model.config.hiddenSize, vocab: model.config.vocabSize, sequences: 2, contextTokens: 6, steps: 4 });
    expect(s.outputs[0]).toMatchObject({ dispatch: "f32", combine: "f32", top1Agreement: 1, maxAbsDiff: 0, meanKl: 0, pairs: 8, routingAgreement: 1 });
    expect(s.outputs[1]!.maxAbsDiff).toBeGreaterThan(0);
    expect(s.outputs[1]!.routingAgreement).toBeGreaterThan(0.5);
    expect(s.outputs[1]!.routingAgreement).toBeLessThanOrEqual(1);
    expect(s.exactTop1Margin).toBeGreaterThan(0);
    expect(s.activations.stats.rows).toBe(3 * 18);
    expect(s.activations.errors.map((e) => e.codec)).toEqual(STUDY_CODECS.map((c) => c.name));
    expect(s.perLayer.map((l) => l.layer)).toEqual([1, 2, 3]);
    expect(s.exactLogitRms).toBeGreaterThan(0);
  });

  it("the default variants: F32 dispatch with BF16 combine, then every other codec with BF16 and with F32 combine", () => {
    const v = defaultOutputVariants().map((x) => `${x.dispatch.name}+${x.combine.name}`);
    expect(v[0]).toBe("f32+bf16");
    expect(v).toHaveLength(1 + 2 * (STUDY_CODECS.length - 1));
    expect(v).toContain("fp8-e5m2-tile+bf16");
    expect(v).toContain("logfmt10+f32");
  });

  it("refuses a model with BF16 latent KV (the KV rounding would mix with the codecs')", async () => {
    const m = DeepseekModel.load(dir, { kvDtype: "bf16", kernels: "portable" });
    await expect(studyModel(m, seqs, 2)).rejects.toThrow(/kvDtype f32/);
    await m.close();
  });
});
