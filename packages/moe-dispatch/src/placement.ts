/**
 * Where the routed experts of every MoE layer live (the same map for all layers), and the split
 * of a batch's top-k choices into one request per expert-host.
 *
 * With n_group >= hosts, whole groups are placed round-robin: group g on host g mod H. The gate
 * only picks experts from its topk_group best groups, so a token then reaches at most topk_group
 * hosts (DeepSeek-V3's node-limited routing: 8 groups on 8 nodes, topk_group 4, so <= 4 nodes).
 * With fewer groups than hosts (V2/V2-Lite have n_group 1) there is no such bound to keep, and the
 * experts are spread in contiguous ranges whose sizes differ by at most one.
 */
import { InvalidArgumentError } from "@moela/core";

export interface PlacementSpec {
  /** n_routed_experts of the config. */
  nRoutedExperts: number;
  /** n_group of the config (1 where the config has none). */
  nGroup: number;
  /** Expert-host count H. */
  hosts: number;
}

export interface ExpertPlacement {
  readonly nRoutedExperts: number;
  readonly nGroup: number;
  readonly hosts: number;
  /** True when whole groups sit on hosts (n_group >= hosts), so node-limited routing bounds hosts per token. */
  readonly groupAligned: boolean;
  /** [nRoutedExperts] host of each expert. */
  readonly hostOfExpert: Int32Array;
  /** [hosts][...] expert ids of each host, ascending. */
  readonly expertsOfHost: number[][];
}

function positiveInt(name: string, v: number): void {
  if (!Number.isSafeInteger(v) || v < 1) throw new InvalidArgumentError(`placement: ${name} must be an integer >= 1, got ${v}`);
}

export function placeExperts(spec: PlacementSpec): ExpertPlacement {
  const { nRoutedExperts: e, nGroup: g, hosts: h } = spec;
  positiveInt("nRoutedExperts", e);
  positiveInt("nGroup", g);
  positiveInt("hosts", h);
  if (e % g !== 0) throw new InvalidArgumentError(`placement: nRoutedExperts ${e} is not a multiple of nGroup ${g}`);
  if (h > e) throw new InvalidArgumentError(`placement: ${h} hosts for ${e} experts would leave hosts empty`);
  const hostOfExpert = new Int32Array(e);
  const groupAligned = g >= h;
  if (groupAligned) {
    const groupSize = e / g;
    for (let x = 0; x < e; x++) hostOfExpert[x] = Math.floor(x / groupSize) % h;
  } else {
    // Contiguous ranges: the first e mod h hosts take one extra expert.
    const base = Math.floor(e / h);
    const extra = e % h;
    let x = 0;
    for (let host = 0; host < h; host++) {
      const size = base + (host < extra ? 1 : 0);
      for (let i = 0; i < size; i++) hostOfExpert[x++] = host;
    }
  }
  const expertsOfHost: number[][] = Array.from({ length: h }, () => []);
  for (let x = 0; x < e; x++) expertsOfHost[hostOfExpert[x]!]!.push(x);
  return { nRoutedExperts: e, nGroup: g, hosts: h, groupAligned, hostOfExpert, expertsOfHost };
}

function hostOf(placement: ExpertPlacement, id: number, where: string): number {
  if (!Number.isInteger(id) || id < 0 || id >= placement.nRoutedExperts) {
    throw new InvalidArgumentError(`placement: expert id ${id} ${where} is outside [0, ${placement.nRoutedExperts})`);
  }
  return placement.hostOfExpert[id]!;
}

/** Distinct hosts that hold at least one of `expertIds` (one token's top-k). */
export function hostsReached(expertIds: ArrayLike<number>, placement: ExpertPlacement): number {
  // k is small (8 in V3): a linear scan over the hosts seen so far beats a Set.
  const seen: number[] = [];
  for (let i = 0; i < expertIds.length; i++) {
    const host = hostOf(placement, expertIds[i]!, `at slot ${i}`);
    if (!seen.includes(host)) seen.push(host);
  }
  return seen.length;
}

/** The part of a batch one expert-host receives: each token once, with its experts on that host. */
export interface HostBatch {
  readonly host: number;
  /** [nTok] source rows (token indices into the batch), ascending. */
  readonly tokenIndex: Int32Array;
  /** [nTok] how many of the token's experts live on this host (1..k). */
  readonly counts: Int32Array;
  /** [nTok + 1] prefix sums of counts: the token j's experts are expertIds[offsets[j] .. offsets[j+1]). */
  readonly offsets: Int32Array;
  /** [sum(counts)] global expert ids, each token's in its top-k order. */
  readonly expertIds: Int32Array;
  /** [sum(counts)] gate weights aligned with expertIds. */
  readonly weights: Float32Array;
}

/**
 * Splits a batch's top-k routing ([T, k] ids and weights, row-major) by host, so the dispatch
 * sends a token's activation to a host once however many of its experts live there. Returns one
 * entry per host (empty ones included, so result[h].host === h).
 */
export function splitByHost(topkIds: Int32Array, topkWeights: Float32Array, T: number, k: number, placement: ExpertPlacement): HostBatch[] {
  if (!Number.isSafeInteger(T) || T < 0) throw new InvalidArgumentError(`splitByHost: T must be an integer >= 0, got ${T}`);
  if (!Number.isSafeInteger(k) || k < 1) throw new InvalidArgumentError(`splitByHost: k must be an integer >= 1, got ${k}`);
  if (topkIds.length !== T * k || topkWeights.length !== T * k) {
    throw new InvalidArgumentError(`splitByHost: topkIds has ${topkIds.length} and topkWeights ${topkWeights.length} entries, [${T}, ${k}] needs ${T * k}`);
  }
  const h = placement.hosts;
  // Pass 1: per host, tokens reached and (token, expert) entries.
  const tokens = new Int32Array(h);
  const entries = new Int32Array(h);
  const lastToken = new Int32Array(h).fill(-1);
  for (let t = 0; t < T; t++) {
    for (let j = 0; j < k; j++) {
      const host = hostOf(placement, topkIds[t * k + j]!, `at token ${t}, slot ${j}`);
      entries[host]!++;
      if (lastToken[host] !== t) {
        lastToken[host] = t;
        tokens[host]!++;
      }
    }
  }
  const out = Array.from({ length: h }, (_, host) => ({
    host,
    tokenIndex: new Int32Array(tokens[host]!),
    counts: new Int32Array(tokens[host]!),
    offsets: new Int32Array(tokens[host]! + 1),
    expertIds: new Int32Array(entries[host]!),
    weights: new Float32Array(entries[host]!),
  }));
  // Pass 2: fill, tokens in order, experts in top-k order.
  const tokFill = new Int32Array(h);
  const entFill = new Int32Array(h);
  lastToken.fill(-1);
  for (let t = 0; t < T; t++) {
    for (let j = 0; j < k; j++) {
      const id = topkIds[t * k + j]!;
      const host = placement.hostOfExpert[id]!;
      const b = out[host]!;
      if (lastToken[host] !== t) {
        lastToken[host] = t;
        b.tokenIndex[tokFill[host]!] = t;
        b.offsets[tokFill[host]!] = entFill[host]!;
        tokFill[host]!++;
      }
      b.counts[tokFill[host]! - 1]!++;
      b.expertIds[entFill[host]!] = id;
      b.weights[entFill[host]!] = topkWeights[t * k + j]!;
      entFill[host]!++;
    }
  }
  for (const b of out) b.offsets[b.tokenIndex.length] = b.expertIds.length;
  return out;
}
