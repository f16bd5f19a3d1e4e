import { describe, expect, it } from "vitest";
import { clientDecodeRate, meanTpotMs, streamOverlap, type StreamTiming } from "../../../scripts/bench/cluster-streams.js";

/** A stream with one token per chunk at the given ms. */
const at = (...t: number[]): StreamTiming => ({ chunks: t.map((x) => ({ t: x, tokens: 1 })) });

describe("the cluster benchmark's stream readings (scripts/bench/cluster-streams.ts)", () => {
  it("counts the tokens after every stream's first one, over the window up to the last token", () => {
    // The window is 100..300 ms; tokens after 100: 200 and 300 of the first stream, 200 and 300 of the second.
    const r = clientDecodeRate([at(0, 100, 200, 300), at(100, 200, 300)]);
    expect(r.tokens).toBe(4);
    expect(r.rate).toBeCloseTo(4 / 0.2, 9);
  });

  it("takes the time per output token from each stream's first to last token, averaged over the streams", () => {
    expect(meanTpotMs([at(0, 10, 20), at(5, 35)])).toBeCloseTo((10 + 30) / 2, 9);
  });

  it("weighs the streams still decoding over the window, so a tail of early finishers shows", () => {
    // Window 100..300: A ends at 200 (half of it), B and C run to 300.
    const staggered = streamOverlap([at(0, 100, 200), at(100, 200, 300), at(50, 150, 300)]);
    expect(staggered.firstTokenSpreadMs).toBe(100);
    expect(staggered.meanDecoding).toBeCloseTo(2.5, 9);
    // Streams that start together and end together decode all the way.
    const together = streamOverlap([at(0, 100, 200), at(0, 100, 200)]);
    expect(together).toEqual({ firstTokenSpreadMs: 0, meanDecoding: 2 });
  });
});
