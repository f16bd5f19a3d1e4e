/**
 * The expert-host replicas in the registry, as prefill and decode find them (@moela/moe-dispatch
 * connect-shards.ts takes this as its ShardDiscovery): the records of role expert-host of this shard count
 * and precision, re-read every second.
 */
import { RegistryWatcher, shardReplicas, type InstanceRegistry } from "./registry.js";

/** Calls `onChange` with the registered replicas now and after every read; resolves with the watcher (close() stops it). */
export function registeredExpertHosts(
  registry: InstanceRegistry,
  shardCount: number,
  precision: string,
): (onChange: (found: { shard: number; address: string }[]) => void) => Promise<RegistryWatcher> {
  return async (onChange) => {
    const found = new RegistryWatcher(registry, "expert-host", 1_000);
    found.onChange((records) => onChange(shardReplicas(records, shardCount, precision)));
    await found.start();
    return found;
  };
}
