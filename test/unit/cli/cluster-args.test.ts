// `moela cluster` argument handling and the flags each role is started with (`moela serve --role`: test/e2e/serve-role.test.ts).
import { describe, expect, it } from "vitest";
import { groupServiceArgs, parseServiceArg } from "../../../services/cli/src/cluster.js";
import { serviceArgs, type ServiceArgsInput } from "../../../services/cli/src/launcher.js";
import { parseClusterArgs } from "../../helpers/cli-args.js";

const parseCluster = parseClusterArgs;

describe("moela cluster options", () => {
  it("defaults to 1 prefill, 1 decode, 2 expert-hosts, exact, 127.0.0.1:8000, state in .moela", async () => {
    const o = await parseCluster([]);
    expect(o).toMatchObject({
      prefill: 1,
      decode: 1,
      expertHosts: 2,
      expertReplicas: 1,
      precision: "exact",
      host: "127.0.0.1",
      port: 8000,
      queuePrefix: "moela",
      stateDir: ".moela",
      serviceArg: [],
    });
    expect(o.model).toBeUndefined();
    expect(o.redisUrl).toBeUndefined();
  });

  it("takes the topology, model, precision, port and Redis from flags", async () => {
    const o = await parseCluster([
      "--model",
      "/ckpt",
      "--prefill",
      "2",
      "--decode",
      "3",
      "--expert-hosts",
      "4",
      "--expert-replicas",
      "2",
      "--precision",
      "paper",
      "--port",
      "0",
      "--redis-url",
      "redis://r:1",
      "--service-arg",
      "decode=--kv-blocks=64",
      "--service-arg",
      "router=--x",
    ]);
    expect(o).toMatchObject({ model: "/ckpt", prefill: 2, decode: 3, expertHosts: 4, expertReplicas: 2, precision: "paper", port: 0, redisUrl: "redis://r:1" });
    expect(o.serviceArg).toEqual(["decode=--kv-blocks=64", "router=--x"]);
  });

  it.each([
    ["--prefill", "two"],
    ["--port", "80.5"],
    ["--expert-hosts", "x"],
    ["--expert-replicas", "1.5"],
  ])("refuses %s %s", async (flag, value) => {
    await expect(parseCluster([flag, value])).rejects.toThrow(/must be an integer/);
  });
});

describe("--service-arg", () => {
  it.each([
    ["decode=--kv-blocks=64", ["decode", "--kv-blocks=64"]],
    ["expert-host=--log-level=debug", ["expert-host", "--log-level=debug"]],
    ["router=a=b", ["router", "a=b"]],
  ])("parses %s", (spec, want) => {
    expect(parseServiceArg(spec)).toEqual(want);
  });
  it.each(["decode", "gateway=--x", "=--x", "decode="])("refuses %s, naming the roles", (spec) => {
    expect(() => parseServiceArg(spec)).toThrow(/ROLE=ARG with ROLE one of router, prefill, decode, expert-host/);
  });
  it("groups by role, in order", () => {
    expect(groupServiceArgs(["decode=--a", "router=--b", "decode=--c"])).toEqual({ decode: ["--a", "--c"], router: ["--b"] });
  });
});

describe("serviceArgs", () => {
  const input: ServiceArgsInput = {
    model: "/m",
    precision: "paper",
    logLevel: "warn",
    host: "127.0.0.1",
    redisUrl: "redis://127.0.0.1:6379",
    queuePrefix: "q1",
    expertHostAddresses: ["127.0.0.1:1", "127.0.0.1:2"],
    decodeAddresses: ["127.0.0.1:3"],
    httpAddress: "127.0.0.1:8000",
    servedModelName: undefined,
    shardIndex: 1,
    shardCount: 2,
  };
  const flagsOf = (args: string[]) => {
    const m = new Map<string, string>();
    for (let i = 0; i < args.length; i += 2) m.set(args[i]!, args[i + 1]!);
    return Object.fromEntries(m);
  };
  const common = { "--model": "/m", "--precision": "paper", "--log-level": "warn", "--grpc-address": "127.0.0.1:0", "--metrics-address": "127.0.0.1:0" };

  it.each([
    ["expert-host", { ...common, "--shard-index": "1", "--shard-count": "2", "--redis-url": "redis://127.0.0.1:6379", "--queue-prefix": "q1" }],
    ["decode", { ...common, "--redis-url": "redis://127.0.0.1:6379", "--queue-prefix": "q1", "--expert-hosts": "127.0.0.1:1,127.0.0.1:2" }],
    ["prefill", { ...common, "--redis-url": "redis://127.0.0.1:6379", "--queue-prefix": "q1", "--expert-hosts": "127.0.0.1:1,127.0.0.1:2" }],
    ["router", { ...common, "--http-address": "127.0.0.1:8000", "--redis-url": "redis://127.0.0.1:6379", "--queue-prefix": "q1", "--decode": "127.0.0.1:3" }],
  ] as const)("%s gets exactly its flags", (role, want) => {
    expect(flagsOf(serviceArgs(role, input))).toEqual(want);
  });

  it("gives decode --threads when the launcher sets it, and nobody else", () => {
    for (const role of ["expert-host", "prefill", "router"] as const)
      expect(flagsOf(serviceArgs(role, { ...input, decodeThreads: 2 }))["--threads"]).toBeUndefined();
    expect(flagsOf(serviceArgs("decode", { ...input, decodeThreads: 2 }))["--threads"]).toBe("2");
  });

  it("gives the expert-hosts --nice when the launcher sets it, and nobody else", () => {
    for (const role of ["decode", "prefill", "router"] as const) expect(flagsOf(serviceArgs(role, { ...input, expertHostNice: 5 }))["--nice"]).toBeUndefined();
    expect(flagsOf(serviceArgs("expert-host", { ...input, expertHostNice: 5 }))["--nice"]).toBe("5");
  });

  it("gives the expert-hosts --threads and decode --micro-batches when the launcher sets them, and nobody else", () => {
    const both = { ...input, expertHostThreads: 2, decodeMicroBatches: 1 };
    for (const role of ["prefill", "router"] as const) {
      expect(flagsOf(serviceArgs(role, both))["--threads"]).toBeUndefined();
      expect(flagsOf(serviceArgs(role, both))["--micro-batches"]).toBeUndefined();
    }
    expect(flagsOf(serviceArgs("expert-host", both))["--threads"]).toBe("2");
    expect(flagsOf(serviceArgs("expert-host", both))["--micro-batches"]).toBeUndefined();
    expect(flagsOf(serviceArgs("decode", both))["--micro-batches"]).toBe("1");
    expect(flagsOf(serviceArgs("decode", both))["--threads"]).toBeUndefined();
  });

  it("passes --served-model-name to the router only when given", () => {
    expect(flagsOf(serviceArgs("router", { ...input, servedModelName: "m1" }))["--served-model-name"]).toBe("m1");
    expect(flagsOf(serviceArgs("decode", { ...input, servedModelName: "m1" }))["--served-model-name"]).toBeUndefined();
  });
});
