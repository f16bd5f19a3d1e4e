/** The prefill service's prefix-cache settings: flags, --no- switch, env twins, defaults and errors. */
import { describe, expect, it } from "vitest";
import { ConfigError } from "@moela/core";
import { DEFAULT_PREFIX_CACHE_BLOCKS, parsePrefillConfig } from "../../../services/prefill/src/config.js";

const MODEL = new URL("../../../models/tiny-v3", import.meta.url).pathname;

describe("prefill config: prefix cache", () => {
  it("is on by default, keeps 1024 blocks, and names the instance prefill-<host>-<pid>-<hex>", () => {
    const c = parsePrefillConfig(["--model", MODEL], {});
    expect(c.prefixCache).toBe(true);
    expect(c.prefixCacheBlocks).toBe(DEFAULT_PREFIX_CACHE_BLOCKS);
    expect(DEFAULT_PREFIX_CACHE_BLOCKS).toBe(1024);
    expect(c.instanceId).toMatch(new RegExp(`^prefill-[A-Za-z0-9.-]+-${process.pid}-[0-9a-f]{6}$`));
  });

  it.each([
    { name: "--no-prefix-cache", argv: ["--no-prefix-cache"], env: {}, want: false },
    { name: "--prefix-cache", argv: ["--prefix-cache"], env: {}, want: true },
    { name: "env false", argv: [], env: { MOELA_PREFILL_PREFIX_CACHE: "false" }, want: false },
    { name: "env 0", argv: [], env: { MOELA_PREFILL_PREFIX_CACHE: "0" }, want: false },
    { name: "env on", argv: [], env: { MOELA_PREFILL_PREFIX_CACHE: "on" }, want: true },
    { name: "the flag over the env twin", argv: ["--prefix-cache"], env: { MOELA_PREFILL_PREFIX_CACHE: "false" }, want: true },
    { name: "--no- over the env twin", argv: ["--no-prefix-cache"], env: { MOELA_PREFILL_PREFIX_CACHE: "true" }, want: false },
  ])("$name", ({ argv, env, want }) => {
    expect(parsePrefillConfig(["--model", MODEL, ...argv], env).prefixCache).toBe(want);
  });

  it("takes the capacity and the instance id from flags or env twins", () => {
    const c = parsePrefillConfig(["--model", MODEL, "--prefix-cache-blocks", "64"], { MOELA_PREFILL_INSTANCE_ID: "prefill-a.1" });
    expect([c.prefixCacheBlocks, c.instanceId]).toEqual([64, "prefill-a.1"]);
  });

  it.each([
    { name: "both switches", argv: ["--prefix-cache", "--no-prefix-cache"], env: {}, message: /--prefix-cache and --no-prefix-cache both given/ },
    {
      name: "a value for the switch",
      argv: [],
      env: { MOELA_PREFILL_PREFIX_CACHE: "maybe" },
      message: /--prefix-cache \(env MOELA_PREFILL_PREFIX_CACHE\) must be true or false, got "maybe"/,
    },
    {
      name: "a negative capacity",
      argv: ["--prefix-cache-blocks=-1"],
      env: {},
      message: /--prefix-cache-blocks \(env MOELA_PREFILL_PREFIX_CACHE_BLOCKS\) must be at least 0/,
    },
    {
      name: "an instance id with ':'",
      argv: ["--instance-id", "a:b"],
      env: {},
      message: /--instance-id \(env MOELA_PREFILL_INSTANCE_ID\) must be 1-128 letters/,
    },
  ])("refuses $name, naming the flag", ({ argv, env, message }) => {
    expect(() => parsePrefillConfig(["--model", MODEL, ...argv], env)).toThrow(ConfigError);
    expect(() => parsePrefillConfig(["--model", MODEL, ...argv], env)).toThrow(message);
  });
});

describe("prefill config: kernels", () => {
  it("runs the fast kernels on one thread unless told otherwise", () => {
    expect(parsePrefillConfig(["--model", MODEL], {})).toMatchObject({ kernels: "fast", threads: 1 });
    expect(parsePrefillConfig(["--model", MODEL, "--threads", "2"], { MOELA_PREFILL_KERNELS: "portable" })).toMatchObject({ kernels: "portable", threads: 2 });
  });

  it.each([
    { argv: ["--kernels", "gpu"], message: /--kernels \(env MOELA_PREFILL_KERNELS\)/ },
    { argv: ["--threads", "0"], message: /--threads \(env MOELA_PREFILL_THREADS\) must be at least 1/ },
  ])("refuses $argv", ({ argv, message }) => {
    expect(() => parsePrefillConfig(["--model", MODEL, ...argv], {})).toThrow(message);
  });
});

describe("prefill config: shared memory", () => {
  it.each([
    { name: "off by default", argv: [], env: {}, want: false },
    { name: "--shared-memory", argv: ["--shared-memory"], env: {}, want: true },
    { name: "env true", argv: [], env: { MOELA_PREFILL_SHARED_MEMORY: "true" }, want: true },
    { name: "--no- over the env twin", argv: ["--no-shared-memory"], env: { MOELA_PREFILL_SHARED_MEMORY: "true" }, want: false },
  ])("$name", ({ argv, env, want }) => {
    expect(parsePrefillConfig(["--model", MODEL, ...argv], env).sharedMemory).toBe(want);
  });

  it("refuses a value that is not a switch", () => {
    expect(() => parsePrefillConfig(["--model", MODEL], { MOELA_PREFILL_SHARED_MEMORY: "maybe" })).toThrow(
      /MOELA_PREFILL_SHARED_MEMORY.*must be true or false/,
    );
  });
});
