import { describe, expect, it } from "vitest";
import { parseConfig } from "@moela/decode";

describe("decode config", () => {
  it("has the documented defaults", () => {
    expect(parseConfig(["--model", "/m"], {})).toEqual({
      model: "/m",
      grpcAddress: "127.0.0.1:0",
      metricsAddress: "127.0.0.1:0",
      expertHosts: [],
      precision: "exact",
      kvBlocks: 2048,
      blockSize: 16,
      maxBatch: 32,
      speculative: "auto",
      speculativeTokens: 1,
      streamGraceMs: 10_000,
      kvWaitMs: 120_000,
      kvIdleMs: 30_000,
      kvMaxTransfersPerPeer: 64,
      drainGraceMs: 30_000,
      logLevel: "info",
      kernels: "fast",
      threads: 1,
      microBatches: 2,
      sharedExpert: "local",
      sharedMemory: true,
      security: { secrets: [] },
    });
  });

  it("takes whether to dispatch through shared memory, and refuses other values", () => {
    expect(parseConfig(["--model", "/m", "--shared-memory", "off"], {})).toMatchObject({ sharedMemory: false });
    expect(parseConfig(["--model", "/m"], { MOELA_DECODE_SHARED_MEMORY: "off" })).toMatchObject({ sharedMemory: false });
    expect(() => parseConfig(["--model", "/m", "--shared-memory", "maybe"], {})).toThrow(/--shared-memory \/ MOELA_DECODE_SHARED_MEMORY: must be on or off/);
  });

  it("takes where the shared expert runs, and refuses other places", () => {
    expect(parseConfig(["--model", "/m", "--shared-expert", "hosts"], {})).toMatchObject({ sharedExpert: "hosts" });
    expect(parseConfig(["--model", "/m"], { MOELA_DECODE_SHARED_EXPERT: "hosts" })).toMatchObject({ sharedExpert: "hosts" });
    expect(() => parseConfig(["--model", "/m", "--shared-expert", "gpu"], {})).toThrow(/--shared-expert \/ MOELA_DECODE_SHARED_EXPERT: must be local or hosts/);
  });

  it("takes the micro-batch count, and refuses 0 and more than 8", () => {
    expect(parseConfig(["--model", "/m", "--micro-batches", "1"], {})).toMatchObject({ microBatches: 1 });
    expect(parseConfig(["--model", "/m"], { MOELA_DECODE_MICRO_BATCHES: "3" })).toMatchObject({ microBatches: 3 });
    expect(() => parseConfig(["--model", "/m", "--micro-batches", "0"], {})).toThrow(/--micro-batches \/ MOELA_DECODE_MICRO_BATCHES: must be >= 1/);
    expect(() => parseConfig(["--model", "/m", "--micro-batches", "9"], {})).toThrow(/--micro-batches \/ MOELA_DECODE_MICRO_BATCHES: must be <= 8/);
  });

  it("takes the draft vocabulary (default: none given, the whole vocabulary), and refuses 0", () => {
    expect(parseConfig(["--model", "/m"], {})!.draftVocab).toBeUndefined();
    expect(parseConfig(["--model", "/m", "--draft-vocab", "1024"], {})).toMatchObject({ draftVocab: 1024 });
    expect(parseConfig(["--model", "/m"], { MOELA_DECODE_DRAFT_VOCAB: "512" })).toMatchObject({ draftVocab: 512 });
    expect(() => parseConfig(["--model", "/m", "--draft-vocab", "0"], {})).toThrow(/--draft-vocab \/ MOELA_DECODE_DRAFT_VOCAB: must be >= 1/);
  });

  it("takes the drafts per step (default 1), and refuses 0 and more than 4", () => {
    expect(parseConfig(["--model", "/m", "--speculative-tokens", "2"], {})).toMatchObject({ speculativeTokens: 2 });
    expect(parseConfig(["--model", "/m"], { MOELA_DECODE_SPECULATIVE_TOKENS: "3" })).toMatchObject({ speculativeTokens: 3 });
    expect(() => parseConfig(["--model", "/m", "--speculative-tokens", "0"], {})).toThrow(
      /--speculative-tokens \/ MOELA_DECODE_SPECULATIVE_TOKENS: must be >= 1/,
    );
    expect(() => parseConfig(["--model", "/m", "--speculative-tokens", "5"], {})).toThrow(
      /--speculative-tokens \/ MOELA_DECODE_SPECULATIVE_TOKENS: must be <= 4/,
    );
  });

  it("takes the kernel backend and its threads, and refuses others", () => {
    expect(parseConfig(["--model", "/m", "--kernels", "reference"], { MOELA_DECODE_THREADS: "2" })).toMatchObject({ kernels: "reference", threads: 2 });
    expect(() => parseConfig(["--model", "/m", "--kernels", "cuda"], {})).toThrow(/--kernels \/ MOELA_DECODE_KERNELS: must be fast, portable or reference/);
    expect(() => parseConfig(["--model", "/m"], { MOELA_DECODE_THREADS: "0" })).toThrow(/--threads \/ MOELA_DECODE_THREADS: must be >= 1/);
  });

  it("reads every setting from its flag, or else from its MOELA_DECODE_ twin, flag first", () => {
    const cfg = parseConfig(["--model", "/flag", "--expert-hosts", "10.0.0.1:5000, 10.0.0.2:5000", "--no-speculative", "--kv-blocks=64"], {
      MOELA_DECODE_MODEL: "/env",
      MOELA_DECODE_PRECISION: "paper",
      MOELA_DECODE_BLOCK_SIZE: "4",
      MOELA_DECODE_MAX_BATCH: "8",
      MOELA_DECODE_KV_BLOCKS: "9",
      MOELA_DECODE_GRPC_ADDRESS: "0.0.0.0:7001",
      MOELA_DECODE_LOG_LEVEL: "debug",
    })!;
    expect(cfg).toMatchObject({
      model: "/flag",
      expertHosts: ["10.0.0.1:5000", "10.0.0.2:5000"],
      speculative: "off",
      kvBlocks: 64,
      precision: "paper",
      blockSize: 4,
      maxBatch: 8,
      grpcAddress: "0.0.0.0:7001",
      logLevel: "debug",
    });
    expect(parseConfig(["--model", "/m"], { MOELA_DECODE_NO_SPECULATIVE: "true" })!.speculative).toBe("off");
    expect(Object.isFrozen(cfg)).toBe(true);
  });

  it.each([
    [["--speculative", "on"], {}, "on"],
    [["--speculative=off"], {}, "off"],
    [[], { MOELA_DECODE_SPECULATIVE: "on" }, "on"],
    [["--speculative", "auto"], { MOELA_DECODE_SPECULATIVE: "off" }, "auto"],
    [["--no-speculative", "--speculative", "off"], {}, "off"],
    [[], { MOELA_DECODE_NO_SPECULATIVE: "false", MOELA_DECODE_SPECULATIVE: "on" }, "on"],
  ])("speculation %j with env %j is %s", (argv, env, want) => {
    expect(parseConfig(["--model", "/m", ...argv], env)!.speculative).toBe(want);
  });

  it("returns null for --help", () => {
    expect(parseConfig(["--help"], {})).toBeNull();
  });

  it.each([
    ["no model", [], {}, /--model \/ MOELA_DECODE_MODEL: is required/],
    [
      "a bad precision",
      ["--model", "/m", "--precision", "fp4"],
      {},
      /--precision \/ MOELA_DECODE_PRECISION: must be one of exact, paper, paper-logfmt8 \(got "fp4"\)/,
    ],
    ["zero KV blocks", ["--model", "/m"], { MOELA_DECODE_KV_BLOCKS: "0" }, /--kv-blocks \/ MOELA_DECODE_KV_BLOCKS: must be >= 1/],
    ["a fractional block size", ["--model", "/m", "--block-size", "1.5"], {}, /--block-size \/ MOELA_DECODE_BLOCK_SIZE: must be a non-negative integer/],
    ["an expert-host without a port", ["--model", "/m", "--expert-hosts", "a:1,b"], {}, /--expert-hosts \/ MOELA_DECODE_EXPERT_HOSTS: must be host:port/],
    ["an expert-host on port 0", ["--model", "/m", "--expert-hosts", "a:0"], {}, /--expert-hosts \/ MOELA_DECODE_EXPERT_HOSTS: port must be in \[1, 65535\]/],
    ["a listen address without a port", ["--model", "/m", "--grpc-address", "localhost"], {}, /--grpc-address \/ MOELA_DECODE_GRPC_ADDRESS: must be host:port/],
    ["a bad boolean", ["--model", "/m"], { MOELA_DECODE_NO_SPECULATIVE: "maybe" }, /--no-speculative \/ MOELA_DECODE_NO_SPECULATIVE: must be true or false/],
    [
      "a bad speculation mode",
      ["--model", "/m", "--speculative", "sometimes"],
      {},
      /--speculative \/ MOELA_DECODE_SPECULATIVE: must be auto, on or off \(got "sometimes"\)/,
    ],
    [
      "--no-speculative with another mode",
      ["--model", "/m", "--no-speculative"],
      { MOELA_DECODE_SPECULATIVE: "on" },
      /--speculative \/ MOELA_DECODE_SPECULATIVE: is on, but --no-speculative \/ MOELA_DECODE_NO_SPECULATIVE says off \(got "on"\)/,
    ],
    ["an unknown flag", ["--model", "/m", "--batch", "4"], {}, /decode: Unknown option '--batch'/],
  ])("refuses %s, naming the flag and its env twin", (_name, argv, env, msg) => {
    expect(() => parseConfig(argv as string[], env as NodeJS.ProcessEnv)).toThrow(msg);
  });
});
