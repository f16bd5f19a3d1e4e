/**
 * has-free-kv: keeps the instances whose free KV blocks (minus what this router sent since their last
 * report) cover the request now. Instances whose whole cache is too small for it are dropped as unfit.
 * When nobody has room now, `waitForRoom` (default) keeps every instance that could ever hold it (the
 * request then waits for blocks there, as decode and prefill's retries allow); otherwise they are
 * dropped as busy and the request is refused with 429.
 */
import { z } from "zod";
import { blocksNeeded, freeBlocksNow, parseParameters } from "../../params.js";
import type { Filter, FilterFactory, Rejection } from "../../types.js";

const parameters = z.strictObject({
  waitForRoom: z.boolean().default(true),
});

export const hasFreeKvFilter = {
  type: "has-free-kv",
  description: "keeps instances with enough free KV blocks for the request now (or, with waitForRoom, ever)",
  create(raw, name, path): Filter {
    const p = parseParameters(parameters, raw, path);
    return {
      type: "has-free-kv",
      name,
      filter: (request, candidates) => {
        const verdicts: (Rejection | undefined)[] = [];
        const roomNow: boolean[] = [];
        for (const c of candidates) {
          if (c.load === undefined) {
            verdicts.push({ kind: "unavailable", reason: "no load report" });
            roomNow.push(false);
            continue;
          }
          const need = blocksNeeded(request, c.load.blockSize);
          if (need > c.load.totalKvBlocks) {
            verdicts.push({ kind: "unfit", reason: `needs ${need} KV blocks, holds ${c.load.totalKvBlocks} in all` });
            roomNow.push(false);
            continue;
          }
          const free = freeBlocksNow(c);
          roomNow.push(free >= need);
          verdicts.push(free >= need ? undefined : { kind: "busy", reason: `needs ${need} KV blocks, ${free} free now` });
        }
        if (roomNow.some((r) => r)) return { verdicts };
        const fits = verdicts.filter((v) => v?.kind === "busy").length;
        if (!p.waitForRoom || fits === 0) return { verdicts };
        return {
          verdicts: verdicts.map((v) => (v?.kind === "busy" ? undefined : v)),
          note: `${name}: no instance has room now; kept the ${fits} whose cache can hold the request (it waits for blocks there)`,
        };
      },
    };
  },
} satisfies FilterFactory;
