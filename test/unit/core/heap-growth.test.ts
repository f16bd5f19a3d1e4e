import { describe, expect, it } from "vitest";
import { DEFAULT_HEAP_GROWING_PERCENT, HEAP_GROWING_PERCENT_ENV, heapGrowthFlag } from "@moela/core";

describe("heapGrowthFlag", () => {
  it("sets the default factor when nothing says otherwise", () => {
    expect(heapGrowthFlag({}, [])).toBe(`--heap-growing-percent=${DEFAULT_HEAP_GROWING_PERCENT}`);
    expect(heapGrowthFlag({ [HEAP_GROWING_PERCENT_ENV]: " " }, [])).toBe(`--heap-growing-percent=${DEFAULT_HEAP_GROWING_PERCENT}`);
  });

  it("takes the environment's figure, and 0 leaves V8's own factor", () => {
    expect(heapGrowthFlag({ [HEAP_GROWING_PERCENT_ENV]: "350" }, [])).toBe("--heap-growing-percent=350");
    expect(heapGrowthFlag({ [HEAP_GROWING_PERCENT_ENV]: "0" }, [])).toBeNull();
  });

  it("leaves a factor node was started with, in its arguments or NODE_OPTIONS, in either spelling", () => {
    expect(heapGrowthFlag({}, ["--heap-growing-percent=50"])).toBeNull();
    expect(heapGrowthFlag({}, ["--heap_growing_percent=50"])).toBeNull();
    expect(heapGrowthFlag({ NODE_OPTIONS: "--max-old-space-size=4096 --heap-growing-percent=80" }, [])).toBeNull();
    // Other flags are not mistaken for it.
    expect(heapGrowthFlag({ NODE_OPTIONS: "--max-old-space-size=4096" }, ["--enable-source-maps"])).toBe(
      `--heap-growing-percent=${DEFAULT_HEAP_GROWING_PERCENT}`,
    );
  });

  it("refuses a figure that is not an integer from 0 to 1000, naming the variable", () => {
    for (const bad of ["-1", "1001", "2.5", "lots", "1e9"]) {
      expect(() => heapGrowthFlag({ [HEAP_GROWING_PERCENT_ENV]: bad }, [])).toThrow(new RegExp(`${HEAP_GROWING_PERCENT_ENV} must be an integer from 0`));
    }
  });
});
