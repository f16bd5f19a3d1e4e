/**
 * KV hand-off helpers for the kv-transfer and decode tests: the single-process reference run, a
 * prefill that streams through a KvSender, and decode steps of a restored sequence.
 */
import type { EmittedToken, Engine, GenerationParams, Sequence } from "@moela/engine";
import { KvSender, kvTransferMeta, type KvConnector, type KvOutcome, type KvSenderOptions } from "@moela/kv-transfer";

export const MODEL_ID = "tiny-v3-test";

export const GREEDY: GenerationParams = { temperature: 0, topP: 1, topK: -1, maxTokens: 12, ignoreEos: true, topLogprobs: 2 };
export const SAMPLED: GenerationParams = { temperature: 0.8, topP: 0.95, topK: 50, seed: 7, maxTokens: 12, ignoreEos: true, topLogprobs: 2 };

/** Every token of an uninterrupted single-engine run. */
export async function referenceRun(engine: Engine, prompt: readonly number[], params: GenerationParams): Promise<EmittedToken[]> {
  const seq = engine.newSequence("ref", prompt, params);
  const out: EmittedToken[] = [];
  for await (const t of engine.generate(seq)) out.push(t);
  return out;
}

export interface PrefillResult {
  readonly outcome: KvOutcome;
  readonly sender: KvSender;
  readonly seq: Sequence;
}

/** Prefill `prompt` on `engine`, streaming the KV through a new sender on `connector`; releases the prefill blocks. */
export async function prefillAndSend(
  engine: Engine,
  connector: KvConnector,
  prompt: readonly number[],
  params: GenerationParams,
  ids: { transferId: string; requestId: string; modelId?: string; deadlineUnixMs?: number },
  senderOptions: KvSenderOptions = {},
): Promise<PrefillResult> {
  const seq = engine.newSequence(ids.requestId, prompt, params);
  const sender = new KvSender(connector, senderOptions);
  try {
    await sender.begin(
      kvTransferMeta(engine, seq, {
        transferId: ids.transferId,
        requestId: ids.requestId,
        modelId: ids.modelId ?? MODEL_ID,
        logprobs: (params.topLogprobs ?? 0) > 0,
        ...(ids.deadlineUnixMs !== undefined ? { deadlineUnixMs: ids.deadlineUnixMs } : {}),
      }),
    );
    await engine.prefill([seq], { kvSink: sender });
    const outcome = await sender.end(seq.snapshot());
    return { outcome, sender, seq };
  } finally {
    engine.release(seq);
  }
}

/** Step a restored sequence alone until it finishes; returns its whole output (the first token included). */
export async function decodeToEnd(engine: Engine, seq: Sequence): Promise<EmittedToken[]> {
  while (!seq.finished) await engine.step([seq]);
  const out = [...seq.output];
  engine.release(seq);
  return out;
}
