/**
 * A Policy: filters, then weighted scorers, then a picker, compiled once from a PolicyConfig and run
 * per request. decide() never throws for "nothing to choose": it returns the decision (every candidate
 * with its rejection or scores, the choice or why none) and, when nothing was chosen, the error the
 * request gets, classified by the filters' rejection kinds (types.ts RejectionKind).
 */
import { InternalError, InvalidArgumentError, MoelaError, ResourceExhaustedError, UnavailableError } from "@moela/core";
import { DEFAULT_POLICY, type PolicyConfig } from "./config.js";
import { freeBlocksNow, sequencesOn } from "./params.js";
import { filterFactory, pickerFactory, scorerFactory } from "./registry.js";
import type { Candidate, CandidateRecord, Decision, Filter, InstanceRole, Picker, Rejection, ScoredCandidate, Scorer, SchedulingRequest } from "./types.js";

export interface PolicyOutcome {
  readonly decision: Decision;
  /** The chosen candidate; undefined when none could be chosen (then `error` is set). */
  readonly chosen?: Candidate;
  readonly error?: MoelaError;
}

interface WeightedScorer {
  readonly scorer: Scorer;
  readonly weight: number;
}

export class Policy {
  readonly config: PolicyConfig;
  /** "filters: healthy, has-free-kv; scorers: free-kv x2, load x1; picker: max-score" */
  readonly summary: string;
  private readonly filters: readonly Filter[];
  private readonly scorers: readonly WeightedScorer[];
  private readonly picker: Picker;

  /** Builds every plugin now: a bad configuration fails here (ConfigError naming `source` and the entry). */
  constructor(config: PolicyConfig = DEFAULT_POLICY, source = "policy") {
    this.config = config;
    this.filters = config.filters.map((f, i) => {
      const path = `${source}: filters[${i}]`;
      return filterFactory(f.type, path).create(f.parameters, f.name ?? f.type, `${path}.parameters`);
    });
    const names = new Set<string>();
    this.scorers = config.scorers.map((s, i) => {
      const path = `${source}: scorers[${i}]`;
      const name = s.name ?? s.type;
      if (names.has(name)) throw new InvalidArgumentError(`${path}: a second scorer named "${name}" (give one a distinct "name")`);
      names.add(name);
      return { scorer: scorerFactory(s.type, path).create(s.parameters, name, `${path}.parameters`), weight: s.weight };
    });
    this.picker = pickerFactory(config.picker.type, `${source}: picker`).create(
      config.picker.parameters,
      config.picker.name ?? config.picker.type,
      `${source}: picker.parameters`,
    );
    const list = (xs: readonly string[]): string => (xs.length === 0 ? "none" : xs.join(", "));
    this.summary = `filters: ${list(this.filters.map((f) => f.name))}; scorers: ${list(this.scorers.map((s) => `${s.scorer.name} x${s.weight}`))}; picker: ${this.picker.name}`;
  }

  /** Choose among `candidates` (in tie-break order) for `request`. */
  decide(role: InstanceRole, request: SchedulingRequest, candidates: readonly Candidate[], now: number = Date.now()): PolicyOutcome {
    const rejections = new Map<number, { filter: string; rejection: Rejection }>();
    const notes: string[] = [];
    let alive = candidates.map((_, i) => i);
    for (const f of this.filters) {
      if (alive.length === 0) break;
      const result = f.filter(
        request,
        alive.map((i) => candidates[i]!),
      );
      if (result.verdicts.length !== alive.length) {
        throw new InternalError(`filter ${f.name} returned ${result.verdicts.length} verdicts for ${alive.length} candidates`);
      }
      if (result.note !== undefined) notes.push(result.note);
      alive = alive.filter((idx, k) => {
        const v = result.verdicts[k];
        if (v !== undefined) rejections.set(idx, { filter: f.name, rejection: v });
        return v === undefined;
      });
    }

    const scores = new Map<number, Record<string, number>>();
    for (const i of alive) scores.set(i, {});
    if (alive.length > 0) {
      const set = alive.map((i) => candidates[i]!);
      for (const { scorer } of this.scorers) {
        const s = scorer.score(request, set);
        if (s.length !== set.length || s.some((x) => !(Number.isFinite(x) && x >= 0 && x <= 1))) {
          throw new InternalError(`scorer ${scorer.name} returned [${s.join(", ")}] for ${set.length} candidates (want one score in [0, 1] each)`);
        }
        alive.forEach((idx, k) => (scores.get(idx)![scorer.name] = s[k]!));
      }
    }
    const scored: ScoredCandidate[] = alive.map((idx) => {
      const sc = scores.get(idx)!;
      const total = this.scorers.reduce((sum, { scorer, weight }) => sum + weight * sc[scorer.name]!, 0);
      return { candidate: candidates[idx]!, order: idx, scores: sc, total };
    });

    const records: CandidateRecord[] = candidates.map((c, i) => {
      const base = {
        id: c.id,
        address: c.address,
        ...(c.load === undefined ? {} : { freeKvBlocks: freeBlocksNow(c), load: sequencesOn(c) }),
      };
      const r = rejections.get(i);
      if (r !== undefined) return { ...base, rejected: `${r.filter}: ${r.rejection.reason}` };
      const s = scored.find((x) => x.order === i)!;
      return { ...base, scores: s.scores, total: round(s.total) };
    });
    const common = { requestId: request.requestId, role, atMs: now, policy: this.summary, candidates: records, ...(notes.length > 0 ? { notes } : {}) };

    if (scored.length === 0) {
      const error = noCandidateError(role, request, candidates, rejections);
      return { decision: { ...common, reason: error.message, error: error.message }, error };
    }
    const pick = this.picker.pick(request, scored);
    const c = pick.chosen.candidate;
    return { decision: { ...common, chosen: { id: c.id, address: c.address }, reason: `${this.picker.name}: ${pick.reason}` }, chosen: c };
  }
}

function round(x: number): number {
  return Math.round(x * 1e6) / 1e6;
}

/** The error of a request no candidate survived, from the kinds of the rejections. */
function noCandidateError(
  role: InstanceRole,
  request: SchedulingRequest,
  candidates: readonly Candidate[],
  rejections: ReadonlyMap<number, { filter: string; rejection: Rejection }>,
): MoelaError {
  if (candidates.length === 0) return new UnavailableError(`no ${role} instance is known (none configured, none registered)`);
  const detail = candidates.map((c, i) => {
    const r = rejections.get(i)!;
    return `${c.id}: ${r.filter}: ${r.rejection.reason}`;
  });
  const kinds = [...rejections.values()].map((r) => r.rejection.kind);
  const text = detail.join("; ");
  if (kinds.every((k) => k === "unfit")) {
    return new InvalidArgumentError(`the request (${request.promptTokens} prompt tokens + max_tokens ${request.maxTokens}) fits no ${role} instance (${text})`);
  }
  if (kinds.includes("busy")) return new ResourceExhaustedError(`no ${role} instance has room for the request now (${text}); retry later`);
  return new UnavailableError(`no ${role} instance is available (${text})`);
}
