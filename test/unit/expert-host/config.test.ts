import { describe, expect, it } from "vitest";
import { InvalidArgumentError } from "@moela/core";
import { parseConfig } from "@moela/expert-host";

const base = ["--model", "/m", "--shard-index", "0", "--shard-count", "2"];

describe("expert-host config", () => {
  it("applies the defaults", () => {
    expect(parseConfig(base, {})).toEqual({
      model: "/m",
      shardIndex: 0,
      shardCount: 2,
      grpcAddress: "127.0.0.1:0",
      metricsAddress: "127.0.0.1:0",
      precision: "exact",
      logLevel: "info",
      kernels: "fast",
      threads: 1,
      nice: 0,
      perExpertMetrics: false,
      sharedExpert: false,
      drainGraceMs: 10_000,
      security: { secrets: [] },
    });
  });

  it("reads every setting from its env twin, and a flag wins over its twin", () => {
    const env = {
      MOELA_EXPERT_HOST_MODEL: "/env-model",
      MOELA_EXPERT_HOST_SHARD_INDEX: "3",
      MOELA_EXPERT_HOST_SHARD_COUNT: "4",
      MOELA_EXPERT_HOST_GRPC_ADDRESS: "0.0.0.0:50051",
      MOELA_EXPERT_HOST_METRICS_ADDRESS: "[::]:9100",
      MOELA_EXPERT_HOST_PRECISION: "paper",
      MOELA_EXPERT_HOST_LOG_LEVEL: "debug",
      MOELA_EXPERT_HOST_KERNELS: "reference",
      MOELA_EXPERT_HOST_THREADS: "2",
      MOELA_EXPERT_HOST_NICE: "7",
      MOELA_EXPERT_HOST_PER_EXPERT_METRICS: "true",
      MOELA_EXPERT_HOST_SHARED_EXPERT: "true",
      MOELA_EXPERT_HOST_DRAIN_GRACE_MS: "500",
    };
    expect(parseConfig([], env)).toEqual({
      model: "/env-model",
      shardIndex: 3,
      shardCount: 4,
      grpcAddress: "0.0.0.0:50051",
      metricsAddress: "[::]:9100",
      precision: "paper",
      logLevel: "debug",
      kernels: "reference",
      threads: 2,
      nice: 7,
      perExpertMetrics: true,
      sharedExpert: true,
      drainGraceMs: 500,
      security: { secrets: [] },
    });
    expect(parseConfig(["--precision", "exact", "--shard-index", "1"], env)).toMatchObject({ precision: "exact", shardIndex: 1 });
  });

  it("returns null for --help", () => {
    expect(parseConfig(["--help"], {})).toBeNull();
  });

  it.each<[string, string[], Record<string, string>, RegExp]>([
    ["a missing model", ["--shard-index", "0", "--shard-count", "1"], {}, /--model \/ MOELA_EXPERT_HOST_MODEL: is required/],
    [
      "a non-integer shard index",
      [...base, "--shard-index", "x"],
      {},
      /--shard-index \/ MOELA_EXPERT_HOST_SHARD_INDEX: must be a non-negative integer \(got "x"\)/,
    ],
    [
      "a bad env shard count",
      ["--model", "/m", "--shard-index", "0"],
      { MOELA_EXPERT_HOST_SHARD_COUNT: "0" },
      /--shard-count \/ MOELA_EXPERT_HOST_SHARD_COUNT: must be >= 1/,
    ],
    [
      "a shard index past the count",
      ["--model", "/m", "--shard-index", "2", "--shard-count", "2"],
      {},
      /--shard-index \/ MOELA_EXPERT_HOST_SHARD_INDEX is 2, must be below --shard-count/,
    ],
    ["an unknown precision", [...base, "--precision", "fp4"], {}, /--precision \/ MOELA_EXPERT_HOST_PRECISION: must be one of exact, paper, paper-logfmt8/],
    ["an address without a port", [...base, "--grpc-address", "localhost"], {}, /--grpc-address \/ MOELA_EXPERT_HOST_GRPC_ADDRESS: must be host:port/],
    ["a port out of range", [...base, "--metrics-address", "127.0.0.1:70000"], {}, /--metrics-address \/ MOELA_EXPERT_HOST_METRICS_ADDRESS: port must be in/],
    [
      "a bad boolean twin",
      base,
      { MOELA_EXPERT_HOST_PER_EXPERT_METRICS: "yes" },
      /--per-expert-metrics \/ MOELA_EXPERT_HOST_PER_EXPERT_METRICS: must be true or false/,
    ],
    ["an unknown flag", [...base, "--shards", "2"], {}, /Unknown option '--shards'/],
    ["unknown kernels", [...base, "--kernels", "gpu"], {}, /--kernels \/ MOELA_EXPERT_HOST_KERNELS: must be fast, portable or reference/],
    ["zero threads", [...base, "--threads", "0"], {}, /--threads \/ MOELA_EXPERT_HOST_THREADS: must be >= 1/],
    ["a niceness past 19", [...base, "--nice", "20"], {}, /--nice \/ MOELA_EXPERT_HOST_NICE: must be <= 19/],
    ["a negative niceness (a raised priority)", base, { MOELA_EXPERT_HOST_NICE: "-5" }, /--nice \/ MOELA_EXPERT_HOST_NICE: must be a non-negative integer/],
  ])("rejects %s, naming the flag and its env twin", (_, argv, env, message) => {
    const run = () => parseConfig(argv, env);
    expect(run).toThrow(InvalidArgumentError);
    expect(run).toThrow(message);
  });
});
