/**
 * Load for the end-to-end tests of a running cluster: distinct prompts, and one streaming
 * /v1/completions call read to its end with everything a failure test looks at (status, Retry-After,
 * token ids, finish reason, an in-band or HTTP error, whether the connection broke before [DONE]),
 * and the undisturbed answers those calls are checked against.
 */
import { DeepseekModel, Engine, type GenerationParams } from "@moela/engine";
import { createInProcessExperts } from "@moela/moe-dispatch";
import { TINY_MODEL } from "../../services/cli/src/launcher.js";
import { moelaGenerate } from "./cluster.js";

/** Distinct prompts of distinct lengths over the tiny vocabulary (no id 1 = EOS, no BOS games). */
export function clusterPrompt(i: number): number[] {
  return Array.from({ length: 3 + (i % 5) }, (_, j) => 2 + ((i * 131 + j * 37 + 11) % 1000));
}

export interface StreamResult {
  /** The HTTP status; 0 when the request could not be sent. */
  readonly status: number;
  readonly retryAfter: string | null;
  readonly ids: number[];
  readonly finish: string | null;
  /** An in-band SSE error event, an HTTP error body, or why the request could not be sent. */
  readonly error: { message: string; code: string | null } | null;
  /** The connection broke before [DONE]. */
  readonly broken: boolean;
}

/** One streaming /v1/completions call (token ids as text), read to its end; `onToken` sees the running count. */
export async function streamCompletion(baseUrl: string, p: readonly number[], maxTokens: number, onToken?: (n: number) => void): Promise<StreamResult> {
  let res: Response;
  try {
    res = await fetch(`${baseUrl}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        model: "tiny-v3",
        prompt: p,
        max_tokens: maxTokens,
        temperature: 0,
        ignore_eos: true,
        logprobs: 1,
        return_tokens_as_token_ids: true,
        stream: true,
      }),
    });
  } catch (err) {
    return {
      status: 0,
      retryAfter: null,
      ids: [],
      finish: null,
      error: { message: err instanceof Error ? err.message : String(err), code: null },
      broken: true,
    };
  }
  if (res.status !== 200) {
    const body = (await res.json().catch(() => ({}))) as { error?: { message: string; code: string | null } };
    return { status: res.status, retryAfter: res.headers.get("retry-after"), ids: [], finish: null, error: body.error ?? null, broken: false };
  }
  const ids: number[] = [];
  let finish: string | null = null;
  let error: StreamResult["error"] = null;
  let done = false;
  let buffer = "";
  const decoder = new TextDecoder();
  try {
    for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
      buffer += decoder.decode(chunk, { stream: true });
      let nl: number;
      while ((nl = buffer.indexOf("\n\n")) >= 0) {
        const data = buffer.slice(0, nl).replace(/^data: /, "");
        buffer = buffer.slice(nl + 2);
        if (data === "[DONE]") {
          done = true;
          continue;
        }
        const o = JSON.parse(data) as {
          error?: { message: string; code: string | null };
          choices?: Array<{ logprobs?: { tokens?: string[] }; finish_reason?: string | null }>;
        };
        if (o.error !== undefined) error = o.error;
        const c = o.choices?.[0];
        for (const t of c?.logprobs?.tokens ?? []) ids.push(Number(t.replace("token_id:", "")));
        if (c?.finish_reason) finish = c.finish_reason;
        if ((c?.logprobs?.tokens?.length ?? 0) > 0) onToken?.(ids.length);
      }
    }
  } catch {
    return { status: 200, retryAfter: null, ids, finish, error, broken: true };
  }
  return { status: 200, retryAfter: null, ids, finish, error, broken: !done };
}

/**
 * The greedy tokens (EOS ignored) of clusterPrompt(0 .. n-1): the engine with the routed experts over 2
 * in-process hosts, as `moela generate --expert-hosts 2` runs it; throws unless `moela generate` (a
 * process) gives the same for prompt 3.
 */
export async function undisturbedAnswers(n: number, maxTokens: number): Promise<number[][]> {
  const model = DeepseekModel.load(TINY_MODEL, { kvDtype: "f32" });
  model.setExpertExecutor(createInProcessExperts(model, 2, "exact").executor);
  const engine = new Engine(model, { blockSize: 16, numBlocks: 64 });
  const params: GenerationParams = { temperature: 0, topP: 1, topK: -1, maxTokens, ignoreEos: true, topLogprobs: 1 };
  const refs: number[][] = [];
  for (let i = 0; i < n; i++) {
    const out: number[] = [];
    for await (const t of engine.generate(engine.newSequence(`ref-${i}`, clusterPrompt(i), params))) out.push(t.id);
    refs.push(out);
  }
  const single = await moelaGenerate({ promptIds: clusterPrompt(3), maxTokens, precision: "exact", expertHosts: 2, extraArgs: ["--ignore-eos"] });
  if (JSON.stringify(single.tokenIds) !== JSON.stringify(refs[3])) {
    throw new Error(`the in-process reference is not what \`moela generate\` gives: ${JSON.stringify(single.tokenIds)} vs ${JSON.stringify(refs[3])}`);
  }
  return refs;
}
