/**
 * .moela/cluster.json (what a script reads to find the running cluster: every instance's addresses,
 * pid and log) and what `moela cluster` prints from it: the endpoint table and a curl to try.
 */
import { mkdirSync, renameSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";
import type { RedisSource } from "./redis-local.js";
import type { Precision, Role } from "./topology.js";

/** One instance in cluster.json. */
export interface InstanceInfo {
  readonly role: Role;
  /** 0-based within its role. */
  readonly index: number;
  readonly pid: number;
  /** host:port */
  readonly grpc: string;
  /** http://host:port/metrics */
  readonly metrics: string;
  /** router: http://host:port */
  readonly http?: string;
  /** expert-host: its shard index */
  readonly shard?: number;
  /** Its log file. */
  readonly log: string;
}

/** .moela/cluster.json: everything a script needs to find the running cluster. */
export interface ClusterInfo {
  readonly version: 1;
  readonly started_at: string;
  /** pid of the launcher; when it is gone the file is stale. */
  readonly launcher_pid: number;
  readonly model: string;
  readonly served_model_name: string;
  readonly precision: Precision;
  /** http://host:port of the router */
  readonly url: string;
  /** what OpenAI clients take as baseURL */
  readonly openai_base_url: string;
  readonly curl: string;
  readonly redis: { readonly url: string; readonly source: RedisSource; readonly pid: number | null };
  readonly queue_prefix: string;
  /**
   * Internal gRPC security of the services: the file holding the shared secret their calls carry (absent:
   * no secret, or one given by value), and whether they talk TLS or mTLS. Never the secret itself.
   */
  readonly internal?: { readonly secret_file?: string; readonly secret: boolean; readonly tls: "off" | "tls" | "mtls" };
  /** expert_hosts counts shards; expert_replicas (present when > 1) the replicas of each. */
  readonly topology: { readonly prefill: number; readonly decode: number; readonly expert_hosts: number; readonly expert_replicas?: number };
  readonly instances: readonly InstanceInfo[];
}

/** Write cluster.json atomically (a reader never sees half a file). */
export function writeClusterFile(path: string, info: ClusterInfo): void {
  mkdirSync(dirname(path), { recursive: true });
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, `${JSON.stringify(info, null, 2)}\n`);
  renameSync(tmp, path);
}

/** A curl that asks the router for a short greedy completion (token ids when there is no tokenizer). */
export function curlExample(url: string, servedModelName: string, hasTokenizer: boolean, withApiKey = false): string {
  const body = {
    model: servedModelName,
    prompt: hasTokenizer ? "The capital of France is" : [0, 17, 42, 99],
    max_tokens: 16,
    temperature: 0,
  };
  const auth = withApiKey ? ` -H "Authorization: Bearer $MOELA_ROUTER_API_KEY"` : "";
  return `curl -s ${url}/v1/completions -H 'Content-Type: application/json'${auth} -d '${JSON.stringify(body)}'`;
}

/** The endpoint table as aligned text: role, index, pid, gRPC address, metrics URL (and router HTTP). */
export function formatEndpointTable(instances: readonly InstanceInfo[]): string {
  const rows = [
    ["role", "pid", "gRPC", "metrics", "http"],
    ...instances.map((i) => [
      i.role === "expert-host" ? `expert-host ${i.index} (shard ${i.shard ?? i.index})` : `${i.role} ${i.index}`,
      String(i.pid),
      i.grpc,
      i.metrics,
      i.http ?? "",
    ]),
  ];
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
  return rows
    .map((r) =>
      r
        .map((cell, c) => cell.padEnd(widths[c]!))
        .join("  ")
        .trimEnd(),
    )
    .join("\n");
}
