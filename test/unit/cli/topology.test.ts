// The cluster's shape (services/cli/src/topology.ts): counts, shard assignment, cluster.json's order.
import { describe, expect, it } from "vitest";
import { byRoleThenIndex, clusterCounts, processCount, shardAddresses, shardOfExpertHost, STOP_TIERS, type Role } from "../../../services/cli/src/topology.js";
import type { ReadyLine } from "@moela/core";

describe("clusterCounts", () => {
  it("defaults to 1 prefill, 1 decode, 2 expert shards of 1 replica", () => {
    const c = clusterCounts({});
    expect(c).toEqual({ prefill: 1, decode: 1, expertHosts: 2, expertReplicas: 1 });
    expect(processCount(c)).toBe(5);
  });

  it.each([
    [{ prefill: 0 }, "--prefill must be an integer >= 1, got 0"],
    [{ decode: 1.5 }, "--decode must be an integer >= 1, got 1.5"],
    [{ expertHosts: -1 }, "--expert-hosts must be an integer >= 1, got -1"],
    [{ expertReplicas: 0 }, "--expert-replicas must be an integer >= 1, got 0"],
  ])("refuses %j, naming the flag", (o, message) => {
    expect(() => clusterCounts(o)).toThrow(message);
  });
});

describe("expert-host shards", () => {
  it("process k serves shard k mod H; each shard lists its replicas in process order", () => {
    expect([0, 1, 2, 3, 4, 5].map((k) => shardOfExpertHost(k, 2))).toEqual([0, 1, 0, 1, 0, 1]);
    const ready = ["a:1", "b:1", "c:1", "d:1"].map((grpc) => ({ grpc }) as ReadyLine);
    expect(shardAddresses(ready, 2)).toEqual(["a:1|c:1", "b:1|d:1"]);
    expect(shardAddresses(ready, 4)).toEqual(["a:1", "b:1", "c:1", "d:1"]);
  });
});

describe("order", () => {
  it("cluster.json lists router, prefill, decode, expert-host, each by index; stopping goes the same way", () => {
    const list: Array<{ role: Role; index: number }> = [
      { role: "expert-host", index: 1 },
      { role: "decode", index: 0 },
      { role: "router", index: 0 },
      { role: "expert-host", index: 0 },
      { role: "prefill", index: 1 },
      { role: "prefill", index: 0 },
    ];
    expect(list.sort(byRoleThenIndex).map((i) => `${i.role} ${i.index}`)).toEqual([
      "router 0",
      "prefill 0",
      "prefill 1",
      "decode 0",
      "expert-host 0",
      "expert-host 1",
    ]);
    expect(STOP_TIERS).toEqual([["router"], ["prefill", "decode"], ["expert-host"]]);
  });
});
