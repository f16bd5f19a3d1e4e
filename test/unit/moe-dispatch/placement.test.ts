import { describe, expect, it } from "vitest";
import { InvalidArgumentError } from "@moela/core";
import { hostsReached, placeExperts, splitByHost, type ExpertPlacement } from "@moela/moe-dispatch";
import { rng } from "./random.js";

function sizes(p: ExpertPlacement): number[] {
  return p.expertsOfHost.map((e) => e.length);
}

/** Hosts that group g's experts live on. */
function hostsOfGroup(p: ExpertPlacement, g: number): number[] {
  const size = p.nRoutedExperts / p.nGroup;
  return [...new Set(Array.from(p.hostOfExpert.subarray(g * size, (g + 1) * size)))];
}

describe("placeExperts", () => {
  it.each<[string, number, number, number, number[], boolean]>([
    ["V3 over 8 hosts: one group per host", 256, 8, 8, [32, 32, 32, 32, 32, 32, 32, 32], true],
    ["V3 over 4 hosts: two groups per host", 256, 8, 4, [64, 64, 64, 64], true],
    ["V3 over 3 hosts: groups round-robin", 256, 8, 3, [96, 96, 64], true],
    ["V3 over 16 hosts: more hosts than groups, even split", 256, 8, 16, Array(16).fill(16), false],
    ["V2 (160 experts, one group) over 2 hosts", 160, 1, 2, [80, 80], false],
    ["V2 (160 experts, one group) over 3 hosts", 160, 1, 3, [54, 53, 53], false],
    ["V2-Lite (64 experts, one group) over 3 hosts", 64, 1, 3, [22, 21, 21], false],
  ])("%s", (_, nRoutedExperts, nGroup, hosts, wantSizes, aligned) => {
    const p = placeExperts({ nRoutedExperts, nGroup, hosts });
    expect(sizes(p)).toEqual(wantSizes);
    expect(p.groupAligned).toBe(aligned);
    // Both tables describe the same map, and every expert is placed exactly once.
    expect(p.expertsOfHost.flat().sort((a, b) => a - b)).toEqual(Array.from({ length: nRoutedExperts }, (_, i) => i));
    p.expertsOfHost.forEach((experts, h) => experts.forEach((e) => expect(p.hostOfExpert[e]).toBe(h)));
    if (aligned) {
      for (let g = 0; g < nGroup; g++) expect(hostsOfGroup(p, g)).toEqual([g % hosts]);
    } else {
      // Contiguous ranges whose sizes differ by at most one.
      for (let e = 1; e < nRoutedExperts; e++) expect(p.hostOfExpert[e]! - p.hostOfExpert[e - 1]!).toBeGreaterThanOrEqual(0);
      expect(Math.max(...sizes(p)) - Math.min(...sizes(p))).toBeLessThanOrEqual(1);
    }
  });

  it("V3 over 3 hosts puts groups 0,3,6 / 1,4,7 / 2,5 together", () => {
    const p = placeExperts({ nRoutedExperts: 256, nGroup: 8, hosts: 3 });
    expect([0, 1, 2, 3, 4, 5, 6, 7].map((g) => hostsOfGroup(p, g)[0])).toEqual([0, 1, 2, 0, 1, 2, 0, 1]);
  });

  it.each<[string, number, number, number]>([
    ["experts not a multiple of groups", 250, 8, 4],
    ["more hosts than experts", 4, 1, 5],
    ["zero hosts", 256, 8, 0],
    ["fractional groups", 256, 2.5, 2],
  ])("rejects %s", (_, nRoutedExperts, nGroup, hosts) => {
    expect(() => placeExperts({ nRoutedExperts, nGroup, hosts })).toThrow(InvalidArgumentError);
  });
});

/** A random group-limited top-k: pick topkGroup groups, then k distinct experts among them. */
function groupLimitedTopK(rand: () => number, nExperts: number, nGroup: number, topkGroup: number, k: number): number[] {
  const groupSize = nExperts / nGroup;
  const groups = Array.from({ length: nGroup }, (_, g) => g);
  for (let i = groups.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [groups[i], groups[j]] = [groups[j]!, groups[i]!];
  }
  const eligible = groups.slice(0, topkGroup).flatMap((g) => Array.from({ length: groupSize }, (_, i) => g * groupSize + i));
  const picked: number[] = [];
  while (picked.length < k) {
    const e = eligible[Math.floor(rand() * eligible.length)]!;
    if (!picked.includes(e)) picked.push(e);
  }
  return picked;
}

describe("node-limited routing bound (property)", () => {
  it.each<[string, number, number, number, number, number]>([
    // name, experts, n_group, topk_group, k, hosts
    ["V3 over 8 hosts", 256, 8, 4, 8, 8],
    ["V3 over 4 hosts", 256, 8, 4, 8, 4],
    ["V3 over 3 hosts", 256, 8, 4, 8, 3],
    ["V3 over 5 hosts", 256, 8, 4, 8, 5],
    ["small: 64 experts, 8 groups, topk_group 3, k 6, over 7 hosts", 64, 8, 3, 6, 7],
    ["small: 64 experts, 16 groups, topk_group 2, k 4, over 16 hosts", 64, 16, 2, 4, 16],
  ])("%s: a token reaches at most topk_group hosts", (_, nExperts, nGroup, topkGroup, k, hosts) => {
    const p = placeExperts({ nRoutedExperts: nExperts, nGroup, hosts });
    expect(p.groupAligned).toBe(true);
    const rand = rng(nExperts * 31 + hosts);
    let most = 0;
    for (let trial = 0; trial < 2000; trial++) {
      const reached = hostsReached(groupLimitedTopK(rand, nExperts, nGroup, topkGroup, k), p);
      expect(reached).toBeLessThanOrEqual(topkGroup);
      most = Math.max(most, reached);
    }
    // The bound is reached, so the check above is not vacuous.
    expect(most).toBe(Math.min(topkGroup, hosts));
  });

  it("with more hosts than groups (V3 over 16) a group spans two hosts, so a token may reach 2 x topk_group", () => {
    const p = placeExperts({ nRoutedExperts: 256, nGroup: 8, hosts: 16 });
    const rand = rng(16);
    let most = 0;
    for (let trial = 0; trial < 2000; trial++) {
      const reached = hostsReached(groupLimitedTopK(rand, 256, 8, 4, 8), p);
      expect(reached).toBeLessThanOrEqual(8);
      most = Math.max(most, reached);
    }
    expect(most).toBeGreaterThan(4);
  });
});

describe("hostsReached", () => {
  it("counts distinct hosts and rejects ids outside the expert range", () => {
    const p = placeExperts({ nRoutedExperts: 256, nGroup: 8, hosts: 4 });
    expect(hostsReached([0, 1, 31, 32, 64, 255], p)).toBe(4);
    expect(hostsReached([0, 128], p)).toBe(1);
    expect(hostsReached([], p)).toBe(0);
    expect(() => hostsReached([256], p)).toThrow(InvalidArgumentError);
    expect(() => hostsReached([-1], p)).toThrow(/-1 at slot 0/);
  });
});

describe("splitByHost", () => {
  it("sends each token to a host once, with all of its experts there in top-k order", () => {
    // 64 experts, 8 groups of 8, over 4 hosts: host = floor(e / 8) mod 4.
    const p = placeExperts({ nRoutedExperts: 64, nGroup: 8, hosts: 4 });
    const k = 3;
    const ids = Int32Array.of(
      0,
      40,
      9, // token 0: hosts 0, 1, 1
      17,
      25,
      57, // token 1: hosts 2, 3, 3
      1,
      2,
      33, // token 2: hosts 0, 0, 0
    );
    const w = Float32Array.of(0.5, 0.3, 0.2, 0.6, 0.25, 0.15, 0.7, 0.2, 0.1);
    const out = splitByHost(ids, w, 3, k, p);
    expect(out.map((b) => b.host)).toEqual([0, 1, 2, 3]);
    const view = out.map((b) => ({
      tokens: [...b.tokenIndex],
      counts: [...b.counts],
      offsets: [...b.offsets],
      ids: [...b.expertIds],
      w: [...b.weights],
    }));
    expect(view[0]).toEqual({ tokens: [0, 2], counts: [1, 3], offsets: [0, 1, 4], ids: [0, 1, 2, 33], w: [0.5, 0.7, 0.2, 0.1].map(Math.fround) });
    expect(view[1]).toEqual({ tokens: [0], counts: [2], offsets: [0, 2], ids: [40, 9], w: [0.3, 0.2].map(Math.fround) });
    expect(view[2]).toEqual({ tokens: [1], counts: [1], offsets: [0, 1], ids: [17], w: [0.6].map(Math.fround) });
    expect(view[3]).toEqual({ tokens: [1], counts: [2], offsets: [0, 2], ids: [25, 57], w: [0.25, 0.15].map(Math.fround) });
  });

  it("on random group-limited routing: rows sent = sum of hosts reached, every (token, expert) appears once", () => {
    const p = placeExperts({ nRoutedExperts: 256, nGroup: 8, hosts: 8 });
    const rand = rng(5);
    const T = 200;
    const k = 8;
    const ids = new Int32Array(T * k);
    const w = new Float32Array(T * k);
    let reachedSum = 0;
    for (let t = 0; t < T; t++) {
      const pick = groupLimitedTopK(rand, 256, 8, 4, k);
      ids.set(pick, t * k);
      for (let j = 0; j < k; j++) w[t * k + j] = rand();
      reachedSum += hostsReached(pick, p);
    }
    const out = splitByHost(ids, w, T, k, p);
    expect(out.reduce((s, b) => s + b.tokenIndex.length, 0)).toBe(reachedSum);
    const seen = new Map<string, number>();
    for (const b of out) {
      for (let j = 0; j < b.tokenIndex.length; j++) {
        for (let e = b.offsets[j]!; e < b.offsets[j + 1]!; e++) {
          expect(p.hostOfExpert[b.expertIds[e]!]).toBe(b.host);
          seen.set(`${b.tokenIndex[j]}:${b.expertIds[e]}`, b.weights[e]!);
        }
      }
    }
    expect(seen.size).toBe(T * k);
    for (let i = 0; i < T * k; i++) expect(seen.get(`${Math.floor(i / k)}:${ids[i]}`)).toBe(w[i]);
  });

  it("rejects mismatched lengths and out-of-range ids, naming the token and slot", () => {
    const p = placeExperts({ nRoutedExperts: 8, nGroup: 1, hosts: 2 });
    expect(() => splitByHost(new Int32Array(5), new Float32Array(6), 3, 2, p)).toThrow(InvalidArgumentError);
    expect(() => splitByHost(Int32Array.of(0, 1, 2, 9), new Float32Array(4), 2, 2, p)).toThrow(/token 1, slot 1/);
  });
});
