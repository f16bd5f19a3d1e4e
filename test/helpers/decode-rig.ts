/**
 * A decode instance over two real expert-host shards on a generated tiny-v3 checkpoint, and the prefill
 * engine that feeds it: the set-up of the decode service's gRPC integration tests.
 */
import type { Logger } from "@moela/core";
import { parseConfig, startDecode, type DecodeConfig, type DecodeDeps, type RunningDecode } from "@moela/decode";
import { DeepseekModel, Engine } from "@moela/engine";
import { parseConfig as parseExpertHostConfig, startExpertHost, type RunningExpertHost } from "@moela/expert-host";
import { createInProcessExperts, precisionProfile, type PrecisionName } from "@moela/moe-dispatch";
import { makeCheckpoint, removeCheckpoints } from "./checkpoints.js";

export interface DecodeRigOptions {
  readonly precision: PrecisionName;
  /** More decode flags, after the model, its hosts and DECODE_FLAGS. */
  readonly decodeArgs?: readonly string[];
  /** The decode and expert-host env (their env twins: a shared secret, for one). */
  readonly decodeEnv?: NodeJS.ProcessEnv;
  readonly hostEnv?: NodeJS.ProcessEnv;
  readonly deps?: DecodeDeps;
}

export interface DecodeRig {
  readonly hosts: RunningExpertHost[];
  readonly decode: RunningDecode;
  /** The prefill side: the same checkpoint and precision, every routed expert over two in-process hosts, blocks of 4, chunks of 5. */
  readonly prefill: Engine;
  /** Closes decode, then the hosts, and removes the checkpoint. */
  close(): Promise<void>;
}

export async function startDecodeRig(logger: Logger, opts: DecodeRigOptions): Promise<DecodeRig> {
  const dir = makeCheckpoint({ preset: "tiny-v3" });
  const hosts: RunningExpertHost[] = [];
  const closeHosts = () => Promise.all(hosts.map((h) => h.close(0)));
  const precisionArgs = ["--precision", opts.precision];
  let decode: RunningDecode;
  try {
    for (let shard = 0; shard < 2; shard++) {
      const cfg = parseExpertHostConfig(["--model", dir, "--shard-index", String(shard), "--shard-count", "2", ...precisionArgs], opts.hostEnv ?? {})!;
      hosts.push(await startExpertHost(cfg, logger));
    }
    decode = await startDecode(decodeConfig(dir, hosts, precisionArgs, opts), logger, opts.deps);
  } catch (err) {
    // A set-up that fails half-way leaves no host running behind the failed test file.
    await closeHosts();
    removeCheckpoints();
    throw err;
  }
  const model = DeepseekModel.load(dir, { kvDtype: precisionProfile(opts.precision).kvDtype });
  model.setExpertExecutor(createInProcessExperts(model, 2, opts.precision).executor);
  const prefill = new Engine(model, { blockSize: 4, numBlocks: 512, prefillChunk: 5 });
  return {
    hosts,
    decode,
    prefill,
    async close() {
      await decode.close(0);
      await closeHosts();
      removeCheckpoints();
    },
  };
}

/** 128 KV blocks of 4 tokens, 2 s of Stream grace and no drain grace. */
const DECODE_FLAGS = ["--kv-blocks", "128", "--block-size", "4", "--stream-grace-ms", "2000", "--drain-grace-ms", "0"];

function decodeConfig(dir: string, hosts: readonly RunningExpertHost[], precisionArgs: readonly string[], opts: DecodeRigOptions): DecodeConfig {
  const hostList = hosts.map((h) => h.grpcAddress).join(",");
  return parseConfig(["--model", dir, "--expert-hosts", hostList, ...precisionArgs, ...DECODE_FLAGS, ...(opts.decodeArgs ?? [])], opts.decodeEnv ?? {})!;
}
