// The whole platform as users run it: `moela cluster` starts router, prefill, decode and two
// expert-hosts as real processes (real Redis, real gRPC), and the official `openai` client talks to
// the router. Greedy output through the cluster must be exactly what `moela generate` gives in one
// process under the same precision profile and the same expert-host split; under `exact` it must
// also match the independent float64 reference on checkpoints the platform never saw.
// One cluster per describe block; few requests, short completions (the suite runs on 2 cores).
import { exec, execFile } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { availableParallelism, getPriority, tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { sharedMemoryAvailable } from "@moela/moe-dispatch";
import { EXPERT_HOST_NICE, LOCAL_DECODE_MICRO_BATCHES, REPO_ROOT, type Precision } from "../../services/cli/src/launcher.js";
import { isAlive, mapLimit, metricSum, moelaGenerate, scrapeMetrics, startTestCluster, type GenerateResult, type TestCluster } from "../helpers/cluster.js";
import { clusterPrompt } from "../helpers/completions.js";

const execAsync = promisify(exec);
const execFileAsync = promisify(execFile);
const PYTHON = process.env["PYTHON"] ?? "python3";
const EXPERT_HOSTS = 2;
const MAX_TOKENS = 8;
/** Logprobs cross the wire as float32: well inside this. */
const LOGPROB_TOL = 1e-4;
/** Against the float64 reference (as test/e2e/reference-contract.test.ts). */
const REFERENCE_TOL = 2e-4;

// vLLM's extension: the official client sends extra body fields as given.
type CompletionParams = OpenAI.Completions.CompletionCreateParamsNonStreaming & { return_tokens_as_token_ids?: boolean; ignore_eos?: boolean };
type CompletionStreamParams = OpenAI.Completions.CompletionCreateParamsStreaming & { return_tokens_as_token_ids?: boolean; ignore_eos?: boolean };

function clientFor(cluster: TestCluster): OpenAI {
  return new OpenAI({ baseURL: cluster.baseURL, apiKey: "unused", maxRetries: 0, timeout: 180_000 });
}

/** "token_id:123" -> 123 (return_tokens_as_token_ids). */
function idsOf(tokens: readonly string[]): number[] {
  return tokens.map((t) => {
    const m = /^token_id:(\d+)$/.exec(t);
    if (m === null) throw new Error(`expected "token_id:<id>", got ${JSON.stringify(t)}`);
    return Number(m[1]);
  });
}

function maxAbsDiff(a: readonly number[], b: readonly number[]): number {
  expect(a.length).toBe(b.length);
  return a.reduce((m, x, i) => Math.max(m, Math.abs(x - b[i]!)), 0);
}

interface ClusterAnswer {
  ids: number[];
  logprobs: number[];
  /** Per step: alternative id -> logprob (includes the sampled token). */
  top: Array<Map<number, number>>;
  finishReason: string | null;
}

function answerOf(lp: OpenAI.Completions.CompletionChoice.Logprobs | null | undefined, finish: string | null): ClusterAnswer {
  expect(lp, "the response carries logprobs").toBeTruthy();
  return {
    ids: idsOf(lp!.tokens ?? []),
    logprobs: (lp!.token_logprobs ?? []).map((x) => x ?? NaN),
    top: (lp!.top_logprobs ?? []).map((d) => new Map(Object.entries(d ?? {}).map(([k, v]) => [idsOf([k])[0]!, v]))),
    finishReason: finish,
  };
}

async function complete(client: OpenAI, model: string, prompt: number[], maxTokens: number, logprobs = 1): Promise<ClusterAnswer> {
  const body: CompletionParams = { model, prompt, max_tokens: maxTokens, temperature: 0, logprobs, return_tokens_as_token_ids: true };
  const res = await client.completions.create(body);
  expect(res.choices).toHaveLength(1);
  expect(res.usage).toMatchObject({ prompt_tokens: prompt.length, completion_tokens: res.choices[0]!.logprobs?.tokens?.length });
  return answerOf(res.choices[0]!.logprobs, res.choices[0]!.finish_reason);
}

async function completeStreamed(client: OpenAI, model: string, prompt: number[], maxTokens: number): Promise<ClusterAnswer> {
  const body: CompletionStreamParams = {
    model,
    prompt,
    max_tokens: maxTokens,
    temperature: 0,
    logprobs: 1,
    return_tokens_as_token_ids: true,
    stream: true,
  };
  const stream = await client.completions.create(body);
  const acc: ClusterAnswer = { ids: [], logprobs: [], top: [], finishReason: null };
  for await (const chunk of stream) {
    const choice = chunk.choices[0];
    if (choice === undefined) continue;
    if (choice.logprobs) {
      const part = answerOf(choice.logprobs, null);
      acc.ids.push(...part.ids);
      acc.logprobs.push(...part.logprobs);
      acc.top.push(...part.top);
    }
    if (choice.finish_reason) acc.finishReason = choice.finish_reason;
  }
  return acc;
}

function expectSameGreedy(cluster: ClusterAnswer, single: GenerateResult, what: string): void {
  expect(cluster.ids, `${what}: token ids`).toEqual(single.tokenIds);
  expect(maxAbsDiff(cluster.logprobs, single.logprobs), `${what}: largest logprob difference`).toBeLessThanOrEqual(LOGPROB_TOL);
  expect(cluster.finishReason, `${what}: finish_reason`).toBe(single.finishReason);
}

const prompt = clusterPrompt;

/**
 * A cluster of `precision` with EXPERT_HOSTS expert-hosts for the enclosing describe block: started before its
 * tests (`use` receives it and an OpenAI client for it), stopped after them, exiting 0 and leaving no process.
 */
function clusterForBlock(
  precision: Precision,
  use: (cluster: TestCluster, client: OpenAI) => void,
  serviceArgs?: Readonly<Record<string, readonly string[]>>,
): void {
  let cluster: TestCluster | undefined;
  beforeAll(async () => {
    cluster = await startTestCluster({ precision, expertHosts: EXPERT_HOSTS, ...(serviceArgs ? { serviceArgs } : {}) });
    use(cluster, clientFor(cluster));
  }, 300_000);
  afterAll(async () => {
    if (cluster === undefined) return;
    const pids = cluster.info.instances.map((i) => i.pid);
    expect(await cluster.stop(), "moela cluster exits 0 on SIGTERM").toBe(0);
    expect(pids.filter(isAlive)).toEqual([]);
  }, 120_000);
}

/**
 * The value a service's flag has in its command line, the last one winning as in its parser (`--flag v` or
 * `--flag=v`); undefined when absent.
 */
function flagOf(pid: number, flag: string): string | undefined {
  const argv = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0");
  let value: string | undefined;
  argv.forEach((a, i) => {
    if (a === flag) value = argv[i + 1];
    else if (a.startsWith(`${flag}=`)) value = a.slice(flag.length + 1);
  });
  return value;
}

// The exact cluster runs as `npm start` does (decode in one micro-batch); the paper one runs decode in two, as compose
// and Helm do, so the overlap of micro-batches through real processes stays covered.
describe.each(["exact", "paper"] as const)("local cluster, %s profile (tiny-v3, 2 expert-hosts)", (precision) => {
  let cluster: TestCluster;
  let client: OpenAI;
  const microBatches = precision === "exact" ? LOCAL_DECODE_MICRO_BATCHES : 2;

  clusterForBlock(
    precision,
    (c, o) => {
      cluster = c;
      client = o;
    },
    precision === "exact" ? undefined : { decode: [`--micro-batches=${microBatches}`] },
  );

  it("serves the topology it was asked for, writes cluster.json, and lists the model", async () => {
    expect(cluster.info.precision).toBe(precision);
    expect(cluster.instances("expert-host").map((i) => i.shard)).toEqual([0, 1]);
    expect(cluster.instances("decode")).toHaveLength(1);
    expect(cluster.instances("prefill")).toHaveLength(1);
    expect(cluster.instances("router")).toHaveLength(1);
    const file = JSON.parse(readFileSync(join(cluster.stateDir, "cluster.json"), "utf8"));
    expect(file).toEqual(cluster.info);
    for (const i of cluster.info.instances) {
      expect(isAlive(i.pid), `${i.role} ${i.index} alive`).toBe(true);
      expect(existsSync(i.log), `${i.role} ${i.index} log file`).toBe(true);
    }
    const models = await client.models.list();
    expect(models.data.map((m) => m.id)).toContain(cluster.model);
  });

  it("runs the expert-hosts at a lower priority than decode, which shares their cores", () => {
    // Each service starts at the launcher's niceness (this process's); the hosts add EXPERT_HOST_NICE to theirs.
    const ours = getPriority(0);
    for (const i of cluster.info.instances) {
      const want = i.role === "expert-host" ? Math.min(19, ours + EXPERT_HOST_NICE) : ours;
      expect(getPriority(i.pid), `${i.role} ${i.index}`).toBe(want);
    }
  });

  it("starts decode with its micro-batches and the expert-hosts with a kernel thread per core, which they share", () => {
    const [decode] = cluster.instances("decode");
    expect(flagOf(decode!.pid, "--micro-batches")).toBe(String(microBatches));
    expect(flagOf(decode!.pid, "--threads")).toBe(String(availableParallelism()));
    for (const host of cluster.instances("expert-host"))
      expect(flagOf(host.pid, "--threads"), `expert-host ${host.index}`).toBe(String(availableParallelism()));
  });

  it("completions (not streamed, streamed): greedy token ids and logprobs equal moela generate's", async () => {
    const p = prompt(0);
    const [single, plain, streamed] = await Promise.all([
      moelaGenerate({ promptIds: p, maxTokens: MAX_TOKENS, precision, expertHosts: EXPERT_HOSTS }),
      complete(client, cluster.model, p, MAX_TOKENS),
      completeStreamed(client, cluster.model, p, MAX_TOKENS),
    ]);
    expect(single.tokenIds).toHaveLength(MAX_TOKENS);
    expectSameGreedy(plain, single, "completion");
    expectSameGreedy(streamed, single, "streamed completion");
  });

  it("chat (not streamed, streamed): the greedy reply equals moela generate --chat", async () => {
    const message = "Say something about the sea.";
    const single = await moelaGenerate({ chat: message, maxTokens: MAX_TOKENS, precision, expertHosts: EXPERT_HOSTS });
    const res = await client.chat.completions.create({
      model: cluster.model,
      messages: [{ role: "user", content: message }],
      max_tokens: MAX_TOKENS,
      temperature: 0,
    });
    expect(res.choices[0]!.message.role).toBe("assistant");
    expect(res.choices[0]!.message.content).toBe(single.text);
    expect(res.choices[0]!.finish_reason).toBe(single.finishReason);
    expect(res.usage?.completion_tokens).toBe(single.tokenIds.length);

    const stream = await client.chat.completions.create({
      model: cluster.model,
      messages: [{ role: "user", content: message }],
      max_tokens: MAX_TOKENS,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = "";
    let finish: string | null = null;
    let usage: OpenAI.CompletionUsage | undefined;
    for await (const chunk of stream) {
      text += chunk.choices[0]?.delta.content ?? "";
      finish = chunk.choices[0]?.finish_reason ?? finish;
      if (chunk.usage) usage = chunk.usage;
    }
    expect(text).toBe(single.text);
    expect(finish).toBe(single.finishReason);
    expect(usage?.completion_tokens).toBe(single.tokenIds.length);
  });

  it("16 concurrent streams each come back equal to their single-process greedy answer", async () => {
    // 8 distinct prompts, each sent twice: the batch mixes different and identical sequences.
    const distinct = Array.from({ length: 8 }, (_, i) => prompt(i + 1));
    const streams = Array.from({ length: 16 }, (_, i) => i % distinct.length);
    // The cluster answers all 16 at once (decode batches them); the single-process answers are
    // computed one prompt per process, two at a time.
    const [answers, singles] = await Promise.all([
      Promise.all(streams.map((k) => completeStreamed(client, cluster.model, distinct[k]!, MAX_TOKENS))),
      mapLimit(distinct, 2, (p) => moelaGenerate({ promptIds: p, maxTokens: MAX_TOKENS, precision, expertHosts: EXPERT_HOSTS })),
    ]);
    answers.forEach((a, i) => expectSameGreedy(a, singles[streams[i]!]!, `stream ${i} (prompt ${streams[i]})`));
    expect(new Set(singles.map((s) => s.tokenIds.join(","))).size, "the 8 prompts give different answers").toBeGreaterThan(4);
    // On one machine decode's dispatches take shared memory (prefill's take gRPC by default): the bits above
    // came through it.
    if (sharedMemoryAvailable) {
      for (const host of cluster.instances("expert-host")) {
        const samples = await scrapeMetrics(host.metrics);
        const viaShm = metricSum(samples, "moela_expert_host_shared_memory_dispatches_total") ?? 0;
        const all = metricSum(samples, "moela_expert_host_dispatch_seconds_count") ?? 0;
        expect(viaShm, `expert-host ${host.shard}: dispatches through shared memory`).toBeGreaterThan(0);
        expect(all, `expert-host ${host.shard}: every dispatch`).toBeGreaterThan(viaShm);
        // Every request read from shared memory was timed from its publication to the host reading it.
        const waited = metricSum(samples, "moela_expert_host_shared_memory_request_wait_seconds_count");
        const waitedFor = metricSum(samples, "moela_expert_host_shared_memory_request_wait_seconds_sum") ?? Number.NaN;
        expect(waited, `expert-host ${host.shard}: requests timed in shared memory`).toBe(viaShm);
        expect(waitedFor / viaShm, `expert-host ${host.shard}: mean wait of a request, s`).toBeGreaterThan(0);
        expect(waitedFor / viaShm, `expert-host ${host.shard}: mean wait of a request, s`).toBeLessThan(1);
      }
      // ...and decode timed every answer it read there the same way.
      for (const decode of cluster.instances("decode")) {
        const samples = await scrapeMetrics(decode.metrics);
        const answers = metricSum(samples, "moela_moe_dispatch_shared_memory_answer_wait_seconds_count") ?? 0;
        const waitedFor = metricSum(samples, "moela_moe_dispatch_shared_memory_answer_wait_seconds_sum") ?? Number.NaN;
        expect(answers, "decode: answers read from shared memory").toBeGreaterThan(0);
        expect(waitedFor / answers, "decode: mean wait of an answer, s").toBeGreaterThan(0);
        expect(waitedFor / answers, "decode: mean wait of an answer, s").toBeLessThan(1);
      }
    }
  }, 240_000);

  it.runIf(precision === "exact")(
    "a client that disconnects mid-stream frees its KV blocks",
    async () => {
      const decode = cluster.instances("decode")[0]!;
      const used = async () => metricSum(await scrapeMetrics(decode.metrics), "moela_decode_kv_blocks_used");
      const generated = async () => metricSum(await scrapeMetrics(decode.metrics), "moela_decode_generated_tokens_total") ?? 0;
      expect(await used(), "moela_decode_kv_blocks_used is exported and idle").toBe(0);
      const before = await generated();
      const maxTokens = 1500;
      const ac = new AbortController();
      const body: CompletionStreamParams = {
        model: cluster.model,
        prompt: prompt(99),
        max_tokens: maxTokens,
        temperature: 0,
        ignore_eos: true,
        stream: true,
      };
      const stream = await client.completions.create(body, { signal: ac.signal });
      let received = 0;
      let usedWhileStreaming: number | undefined;
      try {
        for await (const chunk of stream) {
          if (chunk.choices[0] !== undefined) received++;
          if (received === 3) usedWhileStreaming = await used();
          if (received >= 5) break; // breaking out of the loop aborts the HTTP request
        }
      } catch (err) {
        if (!ac.signal.aborted) throw err;
      }
      ac.abort();
      expect(usedWhileStreaming, "the sequence held KV blocks while streaming").toBeGreaterThan(0);
      await vi.waitFor(async () => expect(await used(), "KV blocks in use after the client went away").toBe(0), { timeout: 30_000, interval: 200 });
      // freed by cancellation, not by finishing
      expect((await generated()) - before).toBeLessThan(maxTokens);
    },
    120_000,
  );

  it.runIf(precision === "exact")("the curl example the launcher prints answers", async () => {
    const { stdout } = await execAsync(cluster.info.curl, { timeout: 60_000 });
    const body = JSON.parse(stdout) as { object?: string; choices?: Array<{ text?: string }> };
    expect(body.object).toBe("text_completion");
    expect(typeof body.choices?.[0]?.text).toBe("string");
  });
});

// LogFMT-8 dispatch: the paper profile's formats but for the activations sent to the expert-hosts. A few
// requests only (the exact and paper blocks above cover batching, chat and cancellation); what this adds is
// that every service takes the profile, LogFMT-8 is what crosses the wire, and generate still agrees.
describe("local cluster, paper-logfmt8 profile (tiny-v3, 2 expert-hosts)", () => {
  const precision = "paper-logfmt8";
  let cluster: TestCluster;
  let client: OpenAI;

  clusterForBlock(precision, (c, o) => {
    cluster = c;
    client = o;
  });

  it("greedy completions (plain and streamed, 3 prompts at once) equal moela generate --precision paper-logfmt8, sent as LogFMT-8", async () => {
    expect(cluster.info.precision).toBe(precision);
    const prompts = [prompt(20), prompt(21), prompt(22)];
    const [answers, streamed, singles] = await Promise.all([
      Promise.all(prompts.map((p) => complete(client, cluster.model, p, MAX_TOKENS))),
      Promise.all(prompts.map((p) => completeStreamed(client, cluster.model, p, MAX_TOKENS))),
      mapLimit(prompts, 2, (p) => moelaGenerate({ promptIds: p, maxTokens: MAX_TOKENS, precision, expertHosts: EXPERT_HOSTS })),
    ]);
    prompts.forEach((_, i) => {
      expect(singles[i]!.tokenIds).toHaveLength(MAX_TOKENS);
      expectSameGreedy(answers[i]!, singles[i]!, `prompt ${i}`);
      expectSameGreedy(streamed[i]!, singles[i]!, `streamed prompt ${i}`);
    });
    // The profile is not paper under another name: one process under paper answers otherwise.
    const paper = await mapLimit(prompts, 2, (p) => moelaGenerate({ promptIds: p, maxTokens: MAX_TOKENS, precision: "paper", expertHosts: EXPERT_HOSTS }));
    expect(
      paper.map((s) => s.logprobs),
      "paper's logprobs differ from paper-logfmt8's",
    ).not.toEqual(singles.map((s) => s.logprobs));
    // Decode and prefill sent their activations to the expert-hosts as LogFMT-8, and nothing else.
    for (const role of ["decode", "prefill"] as const) {
      const samples = await scrapeMetrics(cluster.instances(role)[0]!.metrics);
      const sent = (codec: string) => metricSum(samples, "moela_moe_dispatch_sent_bytes_total", (l) => l.includes(`codec="${codec}"`)) ?? 0;
      expect(sent("logfmt8"), `${role}: LogFMT-8 dispatch bytes`).toBeGreaterThan(0);
      expect(sent("fp8-tile") + sent("f32") + sent("bf16"), `${role}: other dispatch bytes`).toBe(0);
    }
  }, 240_000);
});

describe("moela cluster when a service cannot start", () => {
  it("stops what it started and exits non-zero with that service's last log lines", async () => {
    const err = await startTestCluster({ serviceArgs: { decode: ["--kv-blocks=0"] } }).then(
      async (c) => {
        await c.stop();
        return undefined;
      },
      (e: unknown) => e as Error,
    );
    expect(err, "the cluster must not come up with a decode that refuses its flags").toBeInstanceOf(Error);
    const message = err!.message;
    expect(message).toMatch(/moela cluster exited with code 1/);
    expect(message).toMatch(/decode 0 exited with code \d+/);
    expect(message).toContain("--kv-blocks");
    expect(message).not.toMatch(/starting\s+router/);
    const pids = [...message.matchAll(/starting\s+\S+ \d+ \(pid (\d+)\)/g)].map((m) => Number(m[1]));
    expect(pids.length).toBeGreaterThanOrEqual(3);
    expect(pids.filter(isAlive)).toEqual([]);
  }, 120_000);
});

// ---- unseen checkpoints, against the float64 reference ------------------------------------------

interface RefCase {
  kind: "v3-fp8" | "v2-lite";
  seed: number;
  promptIds: number[];
}
// The seeds and prompts of test/e2e/reference-contract.test.ts, whose margins were checked there.
const REF_CASES: RefCase[] = [
  { kind: "v3-fp8", seed: 12, promptIds: [7, 956, 300, 41, 18, 250, 3] },
  { kind: "v2-lite", seed: 13, promptIds: [2, 730, 88, 415, 9] },
];
const REF_TOKENS = 16;
const REF_TOP = 5;

describe.each(REF_CASES)("cluster on an unseen $kind checkpoint (exact) matches the float64 reference", (c) => {
  let dir = "";
  let cluster: TestCluster | undefined;
  let reference: { token_ids: number[]; top_logprobs: Array<Array<[number, number]>> };

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), `moela-e2e-${c.kind}-`));
    await execFileAsync(PYTHON, ["test/reference/make_checkpoint.py", "--kind", c.kind, "--out", dir, "--seed", String(c.seed)], { cwd: REPO_ROOT });
    const [ref, started] = await Promise.all([
      execFileAsync(
        PYTHON,
        [
          "test/reference/deepseek_ref.py",
          "--model",
          dir,
          "--prompt-ids",
          c.promptIds.join(","),
          "--max-tokens",
          String(REF_TOKENS),
          "--top-logprobs",
          String(REF_TOP),
        ],
        { cwd: REPO_ROOT, maxBuffer: 64 * 1024 * 1024 },
      ),
      startTestCluster({ model: dir, precision: "exact", expertHosts: EXPERT_HOSTS }),
    ]);
    cluster = started;
    reference = JSON.parse(ref.stdout.trim().split("\n").at(-1)!);
  }, 300_000);

  afterAll(async () => {
    try {
      if (cluster !== undefined) expect(await cluster.stop()).toBe(0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 120_000);

  it("greedy token ids identical, logprobs within 2e-4 (token-id prompt, no tokenizer)", async () => {
    expect(existsSync(join(dir, "tokenizer.json")), "the checkpoint has no tokenizer").toBe(false);
    const a = await complete(clientFor(cluster!), cluster!.model, c.promptIds, REF_TOKENS, REF_TOP);
    expect(a.ids).toEqual(reference.token_ids);
    reference.top_logprobs.forEach((refStep, i) => {
      // the sampled token's logprob is the best alternative's under greedy
      expect(Math.abs(a.logprobs[i]! - refStep[0]![1]), `step ${i} logprob`).toBeLessThanOrEqual(REFERENCE_TOL);
      for (const [id, lp] of refStep) {
        const got = a.top[i]!.get(id);
        expect(got, `step ${i}: token ${id} among the top ${REF_TOP}`).toBeDefined();
        expect(Math.abs(got! - lp), `step ${i} token ${id} logprob`).toBeLessThanOrEqual(REFERENCE_TOL);
      }
    });
  });
});
