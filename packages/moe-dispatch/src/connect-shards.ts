/**
 * Connecting a model's routed experts to their expert-hosts, as prefill and decode both do at start-up:
 * each shard's replicas are the static ones ("a|b" in --expert-hosts) plus those a discovery source (the
 * registry) reports, each checked with Info against the placement before it takes traffic; a dispatch
 * fails over between a shard's replicas (transports/replicas.ts). Resolves once every shard has a usable
 * replica, with the HostedExpertExecutor the model dispatches through.
 */
import { InvalidArgumentError, type Logger } from "@moela/core";
import type { ModelConfig } from "@moela/engine";
import type { ClientChannel } from "@moela/rpc";
import { checkHostInfo, HostedExpertExecutor, type DispatchMetrics, type SharedExpertPlacement } from "./dispatcher.js";
import { placementFor } from "./host.js";
import type { PrecisionProfile } from "./profile.js";
import { ExpertShardSet, parseShardReplicas, type FoundReplica } from "./transports/replicas.js";

/**
 * Where more replicas come from (the registry's expert-host records): calls `onChange` with every replica
 * found, now and whenever that changes; resolves after the first read with what stops it.
 */
export type ShardDiscovery = (onChange: (found: readonly FoundReplica[]) => void) => Promise<{ close(): unknown }>;

export interface ExpertShardsConfig {
  /** --expert-hosts: shards in order, each "host:port" or replicas "a|b"; may be empty when discovery finds them. */
  readonly expertHosts: readonly string[];
  /** --expert-shards: the shard count H. */
  readonly shardCount: number;
  /** Whether a discovery source (the registry, --redis-url) is configured. */
  readonly discoverable: boolean;
}

/** Throws INVALID_ARGUMENT unless the settings name a usable set of shards (before anything is loaded). */
export function checkExpertShardsConfig(c: ExpertShardsConfig): void {
  if (c.expertHosts.length > 0 && c.expertHosts.length !== c.shardCount) {
    throw new InvalidArgumentError(`--expert-hosts lists ${c.expertHosts.length} shards, --expert-shards says ${c.shardCount}`);
  }
  if (c.expertHosts.length === 0 && !c.discoverable) {
    throw new InvalidArgumentError("--expert-shards without --expert-hosts needs --redis-url (the hosts are found in the registry)");
  }
}

export interface ConnectExpertShardsOptions {
  readonly expertHosts: readonly string[];
  readonly shardCount: number;
  /** The registry's replicas; absent: the static ones alone. */
  readonly discover?: ShardDiscovery | undefined;
  readonly modelConfig: ModelConfig;
  /** The model's MoE layers (main and MTP), any order. */
  readonly moeLayers: Iterable<number>;
  readonly modelId: string;
  readonly profile: PrecisionProfile;
  /** "hosts": the hosts compute the shared expert too (and must hold it). Default local. */
  readonly sharedExpert?: SharedExpertPlacement | undefined;
  /** Dispatch through shared memory to hosts on this machine (default true; GrpcExpertHostOptions.sharedMemory). */
  readonly sharedMemory?: boolean | undefined;
  /** The expert-hosts are dialled with this instance's internal security (TLS, the secret). */
  readonly channel: ClientChannel;
  /** How long each replica may stay unreachable at Info, and how long start-up waits for every shard. */
  readonly waitMs: number;
  readonly metrics?: DispatchMetrics | undefined;
  readonly logger: Logger;
}

export interface ConnectedExpertShards {
  readonly executor: HostedExpertExecutor;
  readonly shards: ExpertShardSet;
  /** Stops discovery and closes every replica's channel. */
  close(): Promise<void>;
}

/** Connects every shard (see the module comment); on failure closes what it opened and rethrows. */
export async function connectExpertShards(o: ConnectExpertShardsOptions): Promise<ConnectedExpertShards> {
  checkExpertShardsConfig({ expertHosts: o.expertHosts, shardCount: o.shardCount, discoverable: o.discover !== undefined });
  const placement = placementFor(o.modelConfig, o.shardCount);
  const hidden = o.modelConfig.hiddenSize;
  const want = {
    placement,
    profile: o.profile,
    hidden,
    layers: [...o.moeLayers].sort((a, b) => a - b),
    modelId: o.modelId,
    sharedExpert: o.sharedExpert === "hosts",
  };
  const answerWait = o.metrics?.moeDispatchSharedMemoryAnswerWait;
  const shards = new ExpertShardSet({
    credentials: o.channel.credentials,
    channelOptions: o.channel.options,
    shardCount: o.shardCount,
    staticReplicas: parseShardReplicas(o.expertHosts),
    validate: async (t, shard) => checkHostInfo(await t.info(), { ...want, shard }, t.name),
    validateWaitMs: o.waitMs,
    logger: o.logger,
    ...(o.sharedMemory !== undefined ? { sharedMemory: o.sharedMemory } : {}),
    ...(answerWait !== undefined ? { onSharedMemoryAnswerWait: (seconds: number) => answerWait.observe(seconds) } : {}),
  });
  let discovery: { close(): unknown } | undefined;
  const close = async (): Promise<void> => {
    await discovery?.close();
    shards.close();
  };
  try {
    discovery = await o.discover?.((found) => shards.update(found));
    await shards.waitReady(o.waitMs);
  } catch (err) {
    await close();
    throw err;
  }
  const executor = new HostedExpertExecutor({
    placement,
    profile: o.profile,
    hosts: shards.shards,
    hidden,
    ...(o.metrics !== undefined ? { metrics: o.metrics } : {}),
    ...(o.sharedExpert !== undefined ? { sharedExpert: o.sharedExpert } : {}),
  });
  return { executor, shards, close };
}
