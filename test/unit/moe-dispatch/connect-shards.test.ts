import { describe, expect, it } from "vitest";
import { Code } from "@moela/core";
import { checkExpertShardsConfig } from "@moela/moe-dispatch";

describe("checkExpertShardsConfig", () => {
  const cases: { name: string; expertHosts: string[]; shardCount: number; discoverable: boolean; error?: string }[] = [
    { name: "static hosts, one per shard", expertHosts: ["a:1", "b:1|c:1"], shardCount: 2, discoverable: false },
    { name: "registry alone", expertHosts: [], shardCount: 3, discoverable: true },
    { name: "static hosts and the registry", expertHosts: ["a:1"], shardCount: 1, discoverable: true },
    {
      name: "a count the hosts contradict",
      expertHosts: ["a:1"],
      shardCount: 2,
      discoverable: true,
      error: "--expert-hosts lists 1 shards, --expert-shards says 2",
    },
    {
      name: "no hosts and no registry",
      expertHosts: [],
      shardCount: 2,
      discoverable: false,
      error: "--expert-shards without --expert-hosts needs --redis-url",
    },
  ];
  for (const c of cases) {
    it(c.name, () => {
      const run = (): void => checkExpertShardsConfig(c);
      if (c.error === undefined) expect(run).not.toThrow();
      else expect(run).toThrow(expect.objectContaining({ code: Code.INVALID_ARGUMENT, message: expect.stringContaining(c.error) }));
    });
  }
});
