/**
 * decode with the instance registry, in process against real Redis and real gRPC (tiny-v3): it finds
 * the expert-hosts of each shard in the registry alone (--expert-shards, no --expert-hosts), generates
 * exactly the single-process tokens through them, publishes its KV load for the routers, and leaves the
 * registry first when it shuts down. The expert-hosts register themselves (--redis-url).
 */
import { randomUUID } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Redis } from "ioredis";
import { createLogger } from "@moela/core";
import { DeepseekModel, Engine } from "@moela/engine";
import { grpcKvConnector } from "@moela/kv-transfer";
import { checkpointModelId, createInProcessExperts } from "@moela/moe-dispatch";
import { DecodeClient, type StreamResponse } from "@moela/proto-gen";
import { connect, serverStreamCall } from "@moela/rpc";
import { createRedisClient, InstanceRegistry } from "@moela/scheduler";
import { parseConfig as parseExpertHostConfig, startExpertHost, type RunningExpertHost } from "@moela/expert-host";
import { parseConfig, startDecode, type RunningDecode } from "../../../services/decode/src/main.js";
import { makeCheckpoint, removeCheckpoints } from "../../helpers/checkpoints.js";
import { GREEDY, prefillAndSend, referenceRun } from "../../helpers/kv.js";

const REDIS = process.env.REDIS_URL ?? "redis://127.0.0.1:6379";
const silent = createLogger("decode-registry-test", "silent");
const PROMPT = [0, 399, 332, 17, 256, 901, 44, 12];
const prefix = `moela-test-decode-registry-${randomUUID()}`;
let dir: string;
let redis: Redis;
const hosts: RunningExpertHost[] = [];
let decode: RunningDecode | undefined;

beforeAll(async () => {
  dir = makeCheckpoint("tiny-v3");
  redis = createRedisClient(REDIS);
  for (let shard = 0; shard < 2; shard++) {
    const cfg = parseExpertHostConfig(
      ["--model", dir, "--shard-index", String(shard), "--shard-count", "2", "--redis-url", REDIS, "--queue-prefix", prefix],
      {},
    )!;
    hosts.push(await startExpertHost(cfg, silent));
  }
});

afterAll(async () => {
  await decode?.close(0);
  await Promise.all(hosts.map((h) => h.close(0)));
  const keys = await redis.keys(`${prefix}:*`);
  if (keys.length > 0) await redis.del(...keys);
  await redis.quit();
  removeCheckpoints();
});

describe("decode and the registry", () => {
  it("finds its expert-hosts in the registry, generates the single-process tokens, publishes its load, deregisters on close", async () => {
    const registry = new InstanceRegistry(redis, { prefix });
    const registered = await registry.list("expert-host");
    expect(registered.map((r) => [r.shardIndex, r.shardCount, r.grpcAddress]).sort()).toEqual([
      [0, 2, hosts[0]!.grpcAddress],
      [1, 2, hosts[1]!.grpcAddress],
    ]);

    const cfg = parseConfig(
      ["--model", dir, "--expert-shards", "2", "--redis-url", REDIS, "--queue-prefix", prefix, "--kv-blocks", "64", "--block-size", "4"],
      {},
    )!;
    expect(cfg.expertHosts).toEqual([]);
    decode = await startDecode(cfg, silent);

    const [me] = await registry.list("decode");
    expect(me).toMatchObject({
      role: "decode",
      grpcAddress: decode.grpcAddress,
      metricsUrl: decode.metricsUrl,
      precision: "exact",
      modelId: checkpointModelId(dir),
      load: { freeKvBlocks: 64, totalKvBlocks: 64, blockSize: 4, runningSequences: 0, accepting: true },
    });

    // The same tokens as one process with the experts over two in-process hosts.
    const model = DeepseekModel.load(dir);
    model.setExpertExecutor(createInProcessExperts(model, 2, "exact").executor);
    const want = await referenceRun(new Engine(model, { blockSize: 4, numBlocks: 64 }), PROMPT, GREEDY);
    const prefill = new Engine(model, { blockSize: 4, numBlocks: 64 });
    const client = connect(DecodeClient, decode.grpcAddress);
    const connector = grpcKvConnector(decode.grpcAddress);
    try {
      const got: number[] = [];
      const streamed = (async () => {
        for await (const m of serverStreamCall<StreamResponse>((md, o) => client.stream({ requestId: "req-reg", startIndex: 0 }, md, o))) {
          got.push(...m.tokens.map((t) => t.tokenId));
        }
      })();
      const { outcome } = await prefillAndSend(prefill, connector, PROMPT, GREEDY, {
        transferId: "t-reg",
        requestId: "req-reg",
        modelId: checkpointModelId(dir),
      });
      expect(outcome.ok).toBe(true);
      await streamed;
      expect(got).toEqual(want.map((t) => t.id));
    } finally {
      client.close();
      connector.close();
    }

    await decode.close(0);
    decode = undefined;
    expect(await registry.list("decode")).toEqual([]);
  });

  it("refuses --expert-shards without --expert-hosts or --redis-url", async () => {
    const cfg = parseConfig(["--model", dir, "--expert-shards", "2"], {})!;
    await expect(startDecode(cfg, silent)).rejects.toThrow(/--expert-shards without --expert-hosts needs --redis-url/);
  });

  it("takes replicas of a shard joined by |", () => {
    expect(parseConfig(["--model", dir, "--expert-hosts", "a:1|b:2,c:3"], {})!.expertHosts).toEqual(["a:1|b:2", "c:3"]);
    expect(() => parseConfig(["--model", dir, "--expert-hosts", "a:1|b"], {})).toThrow(/--expert-hosts \/ MOELA_DECODE_EXPERT_HOSTS: must be host:port/);
  });
});
