/**
 * The cluster benchmark's measurements of the wire alone (scripts/bench/cluster.ts): one-token dispatches to a running
 * cluster's expert-hosts over each transport, beside the floors of a bare echo, and the loopback's bandwidth.
 */
import { readFileSync } from "node:fs";
import { createServer, connect as connectTcp, type AddressInfo } from "node:net";
import type { ModelConfig } from "@moela/engine";
import { connectExpertHosts, encodedSize, getDispatchCodec, placementFor, type DispatchMode, type PrecisionProfile } from "@moela/moe-dispatch";
import { clientChannel, internalSecurity, type ClientChannel } from "@moela/rpc";
import type { ClusterInfo } from "../../services/cli/src/launcher.js";
import { delta, snapshot } from "./cluster-metrics.js";
import { measureTransportFloors, type TransportFloors } from "./transport-floors.js";

/** How the probe sends: DispatchStream over gRPC, the same messages through shared memory, or unary Dispatch. */
export type WireMode = "stream" | "shm" | "unary";

export interface WireRoundTrips {
  /** To every host at once: median round trip of the slowest, and a host's own handling per call (microseconds). */
  readonly all: Record<WireMode, { medianUs: number; hostUs: number | undefined }>;
  /** To the first host alone, DispatchStream over gRPC and through shared memory, and its own handling per call. */
  readonly oneHost: Record<"stream" | "shm", { medianUs: number; hostUs: number | undefined }>;
  /** A message of the dispatch's size echoed by another process over raw TCP and over a bare grpc-js stream. */
  readonly floors: TransportFloors;
}

/**
 * The wire alone: one-token dispatches to every expert-host of the cluster at once (the shape of a batch-1
 * decode layer), as one DispatchStream message per host (over gRPC, and through shared memory) and as one
 * unary Dispatch call per host; median
 * round trip of the slowest host, and the hosts' own handling time, which the wire is on top of. Then the same
 * DispatchStream message to one host alone, beside what a round trip of that size costs another process that
 * only echoes it (transport-floors.ts): the part of the wire moela's own layers and the host add.
 */
export async function wireRoundTrips(info: ClusterInfo, profile: PrecisionProfile, cfg: ModelConfig, shards: number): Promise<WireRoundTrips> {
  // One replica of each shard (the first), in shard order.
  const hosts = info.instances.filter((i) => i.role === "expert-host" && i.index < shards).sort((a, b) => (a.shard ?? 0) - (b.shard ?? 0));
  const placement = placementFor(cfg, shards);
  const layer = cfg.firstKDenseReplace;
  const x = Float32Array.from({ length: cfg.hiddenSize }, (_, i) => Math.sin(i));
  const reqs = hosts.map((_, h) => ({
    layer,
    rows: 1,
    cols: cfg.hiddenSize,
    activations: getDispatchCodec(profile.dispatch).encode(x, 1, cfg.hiddenSize),
    tokenExpertCounts: [1],
    expertIds: [placement.expertsOfHost[h]![0]!],
    weights: [1],
  }));
  const channel = wireProbeChannel(info);
  const timed = async (mode: WireMode, to: readonly number[]): Promise<{ medianUs: number; hostUs: number | undefined }> => {
    const dispatchMode: DispatchMode = mode === "unary" ? "unary" : "stream";
    const transports = connectExpertHosts(
      to.map((h) => hosts[h]!.grpc),
      { dispatchMode, sharedMemory: mode === "shm", credentials: channel.credentials, channelOptions: channel.options },
    );
    try {
      if (mode === "shm") {
        // The first dispatch starts the attach and takes gRPC; wait until every channel is up.
        for (let i = 0; i < 200 && !transports.every((t) => t.shm?.attached === true); i++) {
          await Promise.all(transports.map((t, k) => t.dispatch(reqs[to[k]!]!)));
          await new Promise((r) => setTimeout(r, 5));
        }
        if (!transports.every((t) => t.shm?.attached === true)) throw new Error("the expert-hosts did not attach shared memory");
      }
      const times: number[] = [];
      for (let i = 0; i < 50; i++) await Promise.all(transports.map((t, k) => t.dispatch(reqs[to[k]!]!)));
      const a = await snapshot(info);
      for (let i = 0; i < 400; i++) {
        const t0 = performance.now();
        await Promise.all(transports.map((t, k) => t.dispatch(reqs[to[k]!]!)));
        times.push(performance.now() - t0);
      }
      const b = await snapshot(info);
      times.sort((p, q) => p - q);
      const calls = delta(a, b, info, ["expert-host"], "moela_expert_host_dispatch_seconds_count");
      const handling = delta(a, b, info, ["expert-host"], "moela_expert_host_dispatch_seconds_sum");
      return { medianUs: 1000 * times[times.length >> 1]!, hostUs: calls && handling !== undefined ? (1e6 * handling) / calls : undefined };
    } finally {
      for (const t of transports) t.close();
    }
  };
  const every = hosts.map((_, h) => h);
  const all = { stream: await timed("stream", every), shm: await timed("shm", every), unary: await timed("unary", every) };
  const oneHost = { stream: await timed("stream", [0]), shm: await timed("shm", [0]) };
  const floors = await measureTransportFloors(encodedSize(reqs[0]!.activations));
  return { all, oneHost, floors };
}

/**
 * How the probe dials the cluster's expert-hosts: with the internal secret when the cluster has one (a running
 * `moela cluster` makes one by default and names its file in cluster.json). Hosts behind TLS are not supported.
 */
export function wireProbeChannel(info: Pick<ClusterInfo, "internal">): ClientChannel {
  const internal = info.internal;
  if (internal !== undefined && internal.tls !== "off")
    throw new Error(`the wire probe dials the expert-hosts in plaintext; this cluster's internal gRPC uses ${internal.tls}`);
  if (internal === undefined || !internal.secret) return clientChannel();
  if (internal.secret_file === undefined) throw new Error("the cluster has an internal secret, but cluster.json names no file that holds it");
  return clientChannel(internalSecurity({ secrets: [readFileSync(internal.secret_file, "utf8")] }));
}

/**
 * Loopback bandwidth, GB/s (10^9 B/s, the planner's unit): 256 MiB through one TCP connection on 127.0.0.1
 * in 1 MiB writes, sender and receiver in this process (as the planner's link bandwidth for the local cluster).
 */
export async function loopbackGBps(totalBytes = 256 * 1024 * 1024): Promise<number> {
  const server = createServer();
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const port = (server.address() as AddressInfo).port;
  try {
    const received = new Promise<number>((resolve, reject) => {
      server.once("connection", (sock) => {
        let got = 0;
        let t0 = 0;
        sock.on("data", (d: Buffer) => {
          if (got === 0) t0 = performance.now();
          got += d.length;
          if (got >= totalBytes) {
            resolve(totalBytes / ((performance.now() - t0) / 1000) / 1e9);
            sock.destroy();
          }
        });
        sock.on("error", reject);
      });
    });
    const client = connectTcp(port, "127.0.0.1");
    await new Promise<void>((r) => client.once("connect", () => r()));
    const chunk = Buffer.alloc(1024 * 1024, 7);
    for (let sent = 0; sent < totalBytes; sent += chunk.length) {
      if (!client.write(chunk)) await new Promise<void>((r) => client.once("drain", () => r()));
    }
    const gbps = await received;
    client.destroy();
    return gbps;
  } finally {
    server.close();
  }
}
