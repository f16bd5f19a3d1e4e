/**
 * Router and prefill configuration: flags over env twins over defaults, and errors that name both the flag
 * and its env twin.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";
import { describe, expect, it } from "vitest";
import { ConfigError } from "@moela/core";
import { DEFAULT_POLICY } from "@moela/scheduler";
import { parseRouterConfig, resolveMaxPromptTokens } from "../../../services/router/src/config.js";
import { parsePrefillConfig } from "../../../services/prefill/src/config.js";

const MODEL = new URL("../../../models/tiny-v3", import.meta.url).pathname;

describe("router config", () => {
  it("--strict-api / MOELA_ROUTER_STRICT_API switch unknown request fields to a 400", () => {
    const model = new URL("../../../models/tiny-v3", import.meta.url).pathname;
    expect(parseRouterConfig(["--model", model, "--strict-api"], {}).strictApi).toBe(true);
    expect(parseRouterConfig(["--model", model], { MOELA_ROUTER_STRICT_API: "true" }).strictApi).toBe(true);
    expect(parseRouterConfig(["--model", model, "--no-strict-api"], { MOELA_ROUTER_STRICT_API: "true" }).strictApi).toBe(false);
    expect(parseRouterConfig(["--model", model], {}).strictApi).toBe(false);
  });

  it("defaults, with the served name from the model folder", () => {
    const c = parseRouterConfig(["--model", MODEL, "--decode", "127.0.0.1:7001, 127.0.0.1:7002"], {});
    expect(c).toEqual({
      model: MODEL.replace(/\/$/, ""),
      httpAddress: "127.0.0.1:8000",
      grpcAddress: "127.0.0.1:0",
      metricsAddress: "127.0.0.1:0",
      redisUrl: "redis://127.0.0.1:6379",
      queuePrefix: "moela",
      decode: ["127.0.0.1:7001", "127.0.0.1:7002"],
      policy: DEFAULT_POLICY,
      decisionTtlS: 3600,
      servedModelName: basename(MODEL),
      maxModelLen: undefined,
      precision: "exact",
      requestTimeoutMs: 600_000,
      maxInFlight: 1024,
      apiKeys: [],
      maxBodyBytes: 32 * 1024 * 1024,
      maxPromptChars: undefined,
      maxPromptTokens: undefined,
      tokenizerThreads: 1,
      strictApi: false,
      logLevel: "info",
      security: { secrets: [] },
    });
  });

  it("env twins fill in; a flag wins over its twin", () => {
    const c = parseRouterConfig(["--max-model-len", "512"], {
      MOELA_ROUTER_MODEL: MODEL,
      MOELA_ROUTER_DECODE: "d:1",
      MOELA_ROUTER_MAX_MODEL_LEN: "1024",
      MOELA_ROUTER_SERVED_MODEL_NAME: "tiny",
      MOELA_ROUTER_PRECISION: "paper",
      MOELA_ROUTER_HTTP_ADDRESS: "0.0.0.0:9000",
    });
    expect(c).toMatchObject({ decode: ["d:1"], maxModelLen: 512, servedModelName: "tiny", precision: "paper", httpAddress: "0.0.0.0:9000" });
  });

  it("--decode is optional (the registry supplies decode instances); --policy takes JSON or a file", () => {
    const dir = mkdtempSync(join(tmpdir(), "moela-policy-"));
    const file = join(dir, "policy.json");
    writeFileSync(file, '{"scorers":[{"type":"queue-depth"}],"picker":{"type":"weighted-random","parameters":{"seed":5}}}');
    try {
      const c = parseRouterConfig(["--model", MODEL, "--policy", file], {});
      expect(c.decode).toEqual([]);
      expect(c.policy).toMatchObject({
        filters: DEFAULT_POLICY.filters,
        scorers: [{ type: "queue-depth", weight: 1 }],
        picker: { type: "weighted-random", parameters: { seed: 5 } },
      });
      expect(parseRouterConfig(["--model", MODEL, "--policy", '{"scorers":[]}'], {}).policy?.scorers).toEqual([]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it.each([
    { argv: ["--decode", "d:1"], env: {}, message: /--model \(env MOELA_ROUTER_MODEL\) is required/ },
    { argv: ["--model", MODEL, "--policy", "{nope"], env: {}, message: /--policy \(env MOELA_ROUTER_POLICY\): not valid JSON/ },
    {
      argv: ["--model", MODEL, "--policy", "/nonexistent.json"],
      env: {},
      message: /--policy \(env MOELA_ROUTER_POLICY\): "\/nonexistent.json" is neither JSON nor an existing file/,
    },
    {
      argv: ["--model", MODEL],
      env: { MOELA_ROUTER_POLICY: '{"picker":{"type":"best"}}' },
      message: /--policy \(env MOELA_ROUTER_POLICY\): picker: unknown picker "best"/,
    },
    { argv: ["--model", MODEL, "--decision-ttl-s", "0"], env: {}, message: /--decision-ttl-s \(env MOELA_ROUTER_DECISION_TTL_S\) must be at least 1/ },
    { argv: ["--model", MODEL, "--decode", "nohost"], env: {}, message: /--decode .* must be host:port/ },
    {
      argv: ["--model", MODEL, "--decode", "d:1"],
      env: { MOELA_ROUTER_MAX_MODEL_LEN: "abc" },
      message: /--max-model-len \(env MOELA_ROUTER_MAX_MODEL_LEN\).*got "abc"/,
    },
    { argv: ["--model", MODEL, "--decode", "d:1", "--precision", "fp8"], env: {}, message: /--precision \(env MOELA_ROUTER_PRECISION\)/ },
    {
      argv: ["--model", MODEL, "--decode", "d:1", "--redis-url", "localhost:6379"],
      env: {},
      message: /--redis-url .* must be a redis:\/\/ or rediss:\/\/ URL/,
    },
    { argv: ["--model", "/nonexistent", "--decode", "d:1"], env: {}, message: /--model \(env MOELA_ROUTER_MODEL\) "\/nonexistent" has no config.json/ },
    { argv: ["--model", MODEL, "--decode", "d:1", "--bogus", "1"], env: {}, message: /Unknown option '--bogus'/ },
    { argv: ["--model", MODEL, "--max-body-bytes", "10"], env: {}, message: /--max-body-bytes \(env MOELA_ROUTER_MAX_BODY_BYTES\) must be at least 1024/ },
    { argv: ["--model", MODEL, "--tokenizer-threads=-1"], env: {}, message: /--tokenizer-threads \(env MOELA_ROUTER_TOKENIZER_THREADS\) must be at least 0/ },
    { argv: ["--model", MODEL, "--max-prompt-chars", "0"], env: {}, message: /--max-prompt-chars \(env MOELA_ROUTER_MAX_PROMPT_CHARS\) must be at least 1/ },
  ])("refuses $argv", ({ argv, env, message }) => {
    expect(() => parseRouterConfig(argv, env)).toThrow(ConfigError);
    expect(() => parseRouterConfig(argv, env)).toThrow(message);
  });

  it("--api-key: one or more keys (comma-separated), flag or MOELA_ROUTER_API_KEY; the bounds as flags", () => {
    expect(parseRouterConfig(["--model", MODEL, "--api-key", "sk-one"], {}).apiKeys).toEqual(["sk-one"]);
    expect(parseRouterConfig(["--model", MODEL], { MOELA_ROUTER_API_KEY: "sk-new, sk-old" }).apiKeys).toEqual(["sk-new", "sk-old"]);
    const c = parseRouterConfig(
      ["--model", MODEL, "--max-body-bytes", "4096", "--max-prompt-chars", "100", "--max-prompt-tokens", "50", "--tokenizer-threads", "0"],
      {},
    );
    expect(c).toMatchObject({ maxBodyBytes: 4096, maxPromptChars: 100, maxPromptTokens: 50, tokenizerThreads: 0 });
    expect(resolveMaxPromptTokens({}, 2048)).toBe(2047);
    expect(resolveMaxPromptTokens({}, 163_840)).toBe(32_768);
    expect(resolveMaxPromptTokens({ maxPromptTokens: 65_536 }, 163_840)).toBe(65_536);
  });

  it.each([
    { value: "sk-a,,sk-b", message: /key 2 of 3 is empty/ },
    { value: "sk-secret-\u00e9", message: /key 1 of 1 holds a character other than printable ASCII/ },
    { value: "x".repeat(513), message: /longer than 512 characters/ },
  ])("refuses the API key $message without repeating it", ({ value, message }) => {
    let err: unknown;
    try {
      parseRouterConfig(["--model", MODEL], { MOELA_ROUTER_API_KEY: value });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as Error).message).toMatch(message);
    expect((err as Error).message).toMatch(/--api-key \(env MOELA_ROUTER_API_KEY\)/);
    expect((err as Error).message).not.toContain("sk-");
    expect((err as Error).message).not.toContain("xxxx");
  });
});

describe("prefill config", () => {
  it("defaults and env twins", () => {
    const c = parsePrefillConfig([], { MOELA_PREFILL_MODEL: MODEL, MOELA_PREFILL_EXPERT_HOSTS: "h:1,h:2", MOELA_PREFILL_CONCURRENCY: "3" });
    expect(c).toMatchObject({
      expertHosts: ["h:1", "h:2"],
      concurrency: 3,
      precision: "exact",
      prefillChunk: 256,
      maxBatchTokens: undefined,
      redisUrl: "redis://127.0.0.1:6379",
      queuePrefix: "moela",
      grpcAddress: "127.0.0.1:0",
      metricsAddress: "127.0.0.1:0",
    });
    expect(parsePrefillConfig(["--model", MODEL], {}).expertHosts).toEqual([]);
  });

  it.each([
    { argv: [], message: /--model \(env MOELA_PREFILL_MODEL\) is required/ },
    { argv: ["--model", MODEL, "--prefill-chunk", "0"], message: /--prefill-chunk \(env MOELA_PREFILL_PREFILL_CHUNK\) must be at least 1/ },
    { argv: ["--model", MODEL, "--max-batch-tokens", "1.5"], message: /--max-batch-tokens \(env MOELA_PREFILL_MAX_BATCH_TOKENS\) must be an integer/ },
    { argv: ["--model", MODEL, "--expert-hosts", "a:1,b"], message: /--expert-hosts .* must be host:port/ },
    { argv: ["--model", MODEL, "--precision", "fast"], message: /--precision \(env MOELA_PREFILL_PRECISION\)/ },
  ])("refuses $argv", ({ argv, message }) => {
    expect(() => parsePrefillConfig(argv, {})).toThrow(ConfigError);
    expect(() => parsePrefillConfig(argv, {})).toThrow(message);
  });
});
