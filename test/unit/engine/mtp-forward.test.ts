/**
 * forwardMtp with logits on the last rows only (decoding's drafts) writes the earlier rows' latents into the MTP
 * layer's cache and runs the whole layer on the last rows alone. Against the same call with logits on every row
 * (which runs the whole layer on every row): the same last-row logits and the same cache rows, bit for bit.
 */
import { afterAll, describe, expect, it } from "vitest";
import { DeepseekModel, PagedLatentCache } from "@moela/engine";
import { makeCheckpoint, removeCheckpoints, SMALL_V3 } from "../../helpers/checkpoints.js";

const PROMPTS = [
  [3, 17, 44, 9, 120, 7, 66],
  [5, 81, 2, 190],
];
/** Tokens each sequence gives the MTP call (as after a verifying step that accepted its draft, and a plain one). */
const NEW = [[31, 12, 77], [140]];

afterAll(removeCheckpoints);

/** Prefill both prompts with the main model, then one MTP call over the tokens after them. */
async function mtpAfterPrefill(model: DeepseekModel, logits: "last" | "all", attention: "absorbed" | "decompressed") {
  const cache = new PagedLatentCache({ numLayers: model.cacheLayers, latentDim: model.config.latentDim, blockSize: 4, numBlocks: 32 });
  const tables = PROMPTS.map((p, i) => {
    const t: number[] = [];
    cache.ensureCapacity(t, p.length + NEW[i]!.length + 1);
    return t;
  });
  // The main model's rows for the prompt and the new tokens, so the MTP call has hidden rows for every position.
  const full = PROMPTS.map((p, i) => [...p, ...NEW[i]!]);
  const main = await model.forward(
    cache,
    full.map((tokens, i) => ({ blockTable: tables[i]!, start: 0, tokens, logits: "none" as const })),
    { attention: "decompressed" },
  );
  const hidden = Float32Array.from(main.hidden);
  const hd = model.config.hiddenSize;
  // The MTP rows of the prompt first (as prefill writes them), then the call under test over the new tokens.
  await model.forwardMtp(
    cache,
    PROMPTS.map((p, i) => ({
      blockTable: tables[i]!,
      start: 0,
      tokens: [...p.slice(1), NEW[i]![0]!],
      logits: "all" as const,
      hidden,
      hiddenOff: main.tokenRow[i]! * hd,
    })),
    { attention: "decompressed" },
  );
  const r = await model.forwardMtp(
    cache,
    PROMPTS.map((p, i) => ({
      blockTable: tables[i]!,
      start: p.length,
      tokens: [...NEW[i]!.slice(1), 9],
      logits,
      hidden,
      hiddenOff: (main.tokenRow[i]! + p.length) * hd,
    })),
    { attention },
  );
  const V = model.config.vocabSize;
  const lastLogits = PROMPTS.map((_, i) => {
    const row = r.logitRow[i]! + (logits === "all" ? NEW[i]!.length - 1 : 0);
    return Array.from(r.logits.subarray(row * V, (row + 1) * V));
  });
  const D = model.config.latentDim;
  const mtpLayer = model.cacheLayers - 1;
  const rows = full.map((tokens, i) => {
    const out = new Float32Array(tokens.length * D);
    cache.read(mtpLayer, tables[i]!, 0, tokens.length, out);
    return Array.from(out);
  });
  return { lastLogits, rows };
}

describe("forwardMtp on the last rows only", () => {
  for (const attention of ["absorbed", "decompressed"] as const) {
    it(`gives the last rows' logits and the cache rows of the whole-layer call, bit for bit (${attention})`, async () => {
      const model = DeepseekModel.load(makeCheckpoint(SMALL_V3));
      const last = await mtpAfterPrefill(model, "last", attention);
      const all = await mtpAfterPrefill(model, "all", attention);
      expect(last.lastLogits).toEqual(all.lastLogits);
      expect(last.rows).toEqual(all.rows);
      // The rows were really written (not left at zero by both).
      expect(last.rows[0]!.some((v) => v !== 0)).toBe(true);
    });
  }
});
