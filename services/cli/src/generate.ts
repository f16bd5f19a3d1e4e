/** `moela generate`: load a checkpoint, run one request in this process, stream text or print JSON. */
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { errorMessage, InvalidArgumentError, withWeightLoadBar } from "@moela/core";
import { DeepseekModel, Engine, isSpeculationMode, parseKernelsName, setDefaultKernels, type GenerationParams, type SpeculationMode } from "@moela/engine";
import { createInProcessExperts, precisionProfile } from "@moela/moe-dispatch";
import { IncrementalDecoder, StopStringMatcher, Tokenizer, type ChatMessage } from "@moela/tokenizer";

export interface GenerateCliOptions {
  model: string;
  prompt?: string;
  promptIds?: number[];
  chat?: string;
  messages?: string;
  maxTokens: number;
  temperature?: number;
  topP?: number;
  topK?: number;
  seed?: number;
  stop: string[];
  stopTokenIds?: number[];
  ignoreEos?: boolean;
  topLogprobs?: number;
  logits?: boolean;
  mtpLogits?: boolean;
  /** auto | on | off (default auto); false is --no-speculative, the same as off. */
  speculative?: SpeculationMode | false;
  /** Drafts choose among the first n token ids (EngineOptions.draftVocab; default all). */
  draftVocab?: number;
  /** Tokens drafted per step with speculation on (EngineOptions.speculativeTokens; default 1). */
  speculativeTokens?: number;
  prefillChunk: number;
  /** Threads sharing each large matmul of the model (default 1 here; the CLI defaults to the CPU count). */
  threads?: number;
  json?: boolean;
  /** Kernel backend: fast (default) | portable | reference. */
  kernels?: string;
  /** Precision profile (exact | paper | paper-logfmt8): the cluster's KV dtype and dispatch/combine roundings. */
  precision?: string;
  /** Expert-hosts the routed experts are split over, in process (the cluster's H). */
  expertHosts?: number;
}

function speculationMode(v: GenerateCliOptions["speculative"]): SpeculationMode {
  if (v === undefined) return "auto";
  if (v === false) return "off";
  if (!isSpeculationMode(v)) throw new InvalidArgumentError(`--speculative must be auto, on or off, got ${String(v)}`);
  return v;
}

/** Sampling defaults from generation_config.json (as vLLM does), else temperature 1, top_p 1. */
function generationDefaults(dir: string): { temperature: number; topP: number; topK: number } {
  const file = join(dir, "generation_config.json");
  let g: Record<string, unknown> = {};
  if (existsSync(file)) {
    try {
      g = JSON.parse(readFileSync(file, "utf8")) as Record<string, unknown>;
    } catch {
      g = {};
    }
  }
  const num = (k: string, d: number) => (typeof g[k] === "number" ? (g[k] as number) : d);
  return { temperature: num("temperature", 1), topP: num("top_p", 1), topK: num("top_k", -1) };
}

function parseMessages(text: string): ChatMessage[] {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (err) {
    throw new InvalidArgumentError(`--messages is not valid JSON: ${errorMessage(err)}`);
  }
  if (!Array.isArray(v) || v.some((m) => typeof m !== "object" || m === null || typeof (m as ChatMessage).role !== "string")) {
    throw new InvalidArgumentError('--messages must be a JSON array of {"role": ..., "content": ...} objects');
  }
  return v as ChatMessage[];
}

export async function runGenerate(o: GenerateCliOptions): Promise<number> {
  const inputs = [o.prompt, o.promptIds, o.chat, o.messages].filter((x) => x !== undefined).length;
  if (inputs !== 1) throw new InvalidArgumentError("give exactly one of --prompt, --prompt-ids, --chat, --messages");
  if ((o.logits || o.mtpLogits) && !o.json) throw new InvalidArgumentError("--logits and --mtp-logits need --json");
  const defaults = generationDefaults(o.model);
  const profile = precisionProfile(o.precision ?? "exact");
  const threads = o.threads ?? 1;
  if (!(Number.isInteger(threads) && threads >= 1)) throw new InvalidArgumentError(`--threads must be a positive integer, got ${threads}`);
  // Process-wide, so the in-process expert-hosts compute with the model's kernels.
  setDefaultKernels(parseKernelsName(o.kernels ?? "fast"));
  const model = withWeightLoadBar("loading weights", (onProgress) => DeepseekModel.load(o.model, { kvDtype: profile.kvDtype, threads, onProgress }));
  try {
    return await generateWith(model, o, defaults, profile);
  } finally {
    // Stops the matmul workers (they are unref'd, so this is tidiness rather than what lets the process exit).
    await model.close();
  }
}

async function generateWith(
  model: DeepseekModel,
  o: GenerateCliOptions,
  defaults: ReturnType<typeof generationDefaults>,
  profile: ReturnType<typeof precisionProfile>,
): Promise<number> {
  // Routed experts go through the same dispatcher as the cluster, over H in-process expert-hosts,
  // so this process rounds and sums exactly as a cluster with H expert-hosts and this profile does. One host
  // under the exact profile (float32 both ways, one partial sum) computes what the model's own experts do, so
  // the model keeps them and skips the dispatcher's encode/copy/combine (about 8% of a large-v3 decode step).
  const hosts = o.expertHosts ?? 1;
  if (hosts > 1 || profile.dispatch !== "f32" || profile.combine !== "f32") {
    model.setExpertExecutor(createInProcessExperts(model, hosts, profile).executor);
  }
  if (o.mtpLogits && !model.hasMtp) throw new InvalidArgumentError(`${o.model} has no MTP layer; --mtp-logits is not available`);
  const needsTokenizer = o.promptIds === undefined || !o.json || o.stop.length > 0;
  const tokenizer = needsTokenizer ? Tokenizer.fromDir(o.model) : null;

  let prompt: number[];
  if (o.promptIds !== undefined) prompt = o.promptIds;
  else if (o.prompt !== undefined) prompt = tokenizer!.encode(o.prompt);
  else prompt = tokenizer!.encodeChat(o.chat !== undefined ? [{ role: "user", content: o.chat }] : parseMessages(o.messages!));

  const params: GenerationParams = {
    temperature: o.temperature ?? defaults.temperature,
    topP: o.topP ?? defaults.topP,
    topK: o.topK ?? defaults.topK,
    ...(o.seed !== undefined ? { seed: o.seed } : {}),
    maxTokens: o.maxTokens,
    stopTokenIds: o.stopTokenIds ?? [],
    ignoreEos: o.ignoreEos ?? false,
    topLogprobs: o.topLogprobs ?? (o.json ? 5 : 0),
  };
  const blockSize = 16;
  const engine = new Engine(model, {
    blockSize,
    numBlocks: Math.ceil((prompt.length + o.maxTokens + 2) / blockSize) + 1,
    prefillChunk: o.prefillChunk,
    speculation: speculationMode(o.speculative),
    ...(o.draftVocab !== undefined ? { draftVocab: o.draftVocab } : {}),
    ...(o.speculativeTokens !== undefined ? { speculativeTokens: o.speculativeTokens } : {}),
  });
  const seq = engine.newSequence("cli", prompt, params);
  const decoder = tokenizer ? new IncrementalDecoder(tokenizer) : null;
  const stops = o.stop.length > 0 ? new StopStringMatcher(o.stop) : null;
  let text = "";
  const started = performance.now();
  let firstAt = 0;
  for await (const t of engine.generate(seq, { keepLogits: o.logits === true || o.mtpLogits === true })) {
    if (firstAt === 0) firstAt = performance.now();
    if (decoder === null) continue;
    let delta = decoder.push(t.id);
    if (stops) {
      const m = stops.push(delta);
      delta = m.text;
      if (m.stopped) seq.finishReason = "stop";
    }
    text += delta;
    if (!o.json) process.stdout.write(delta);
    if (seq.finishReason === "stop" && stops?.stopped) break;
  }
  if (decoder && !stops?.stopped) {
    let tail = decoder.flush();
    if (stops) tail = stops.push(tail).text + (stops.stopped ? "" : stops.flush());
    text += tail;
    if (!o.json) process.stdout.write(tail);
  }
  const elapsed = (performance.now() - started) / 1000;
  const tokens = seq.output.map((t) => t.id);
  if (o.json) {
    const out: Record<string, unknown> = {
      token_ids: tokens,
      top_logprobs: seq.output.map((t) => (t.top ?? []).map(([id, lp]) => [id, lp])),
      logprobs: seq.output.map((t) => t.logprob),
      finish_reason: seq.finishReason,
      usage: { prompt_tokens: prompt.length, completion_tokens: tokens.length },
      mtp: { mode: engine.speculation, drafted: seq.drafted, accepted: seq.accepted, drafts_skipped: seq.draftsSkipped },
    };
    if (tokenizer) out.text = text;
    if (o.logits) out.logits = Array.from(seq.promptLogits!);
    if (o.mtpLogits) out.mtp_logits = Array.from(seq.promptMtpLogits!);
    process.stdout.write(`${JSON.stringify(out)}\n`);
  } else {
    process.stdout.write("\n");
    const rate = tokens.length / Math.max(elapsed, 1e-9);
    // Prefill (prompt until the first token) and decode (the tokens after it) rates apart, as benchmarks report them.
    const firstS = (firstAt - started) / 1000;
    const decodeRate = tokens.length > 1 ? `, decode ${((tokens.length - 1) / Math.max(elapsed - firstS, 1e-9)).toFixed(1)} tok/s` : "";
    const prefillRate = `prefill ${(prompt.length / Math.max(firstS, 1e-9)).toFixed(1)} tok/s`;
    const skipped = seq.draftsSkipped > 0 ? ` (${seq.draftsSkipped} steps without: drafting did not pay)` : "";
    // Chained drafts: the engine's counts by position (the engine ran this one sequence).
    const chained =
      engine.draftedAt[1]! > 0 ? ` (by position ${engine.draftedAt.flatMap((n, p) => (n > 0 ? [`${engine.acceptedAt[p]}/${n}`] : [])).join(", ")})` : "";
    const acc = seq.drafted > 0 ? `, MTP accepted ${seq.accepted}/${seq.drafted}${chained}${skipped}` : "";
    process.stderr.write(
      `[${tokens.length} tokens in ${elapsed.toFixed(2)} s (${rate.toFixed(1)} tok/s), first after ${firstS.toFixed(2)} s (${prefillRate}${decodeRate}), ` +
        `finish: ${seq.finishReason}${acc}; ${model.kernels.name} kernels (${model.kernels.isa}), ${model.threads} threads]\n`,
    );
  }
  return 0;
}
