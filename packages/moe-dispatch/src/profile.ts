/**
 * Precision profiles: which formats cross the network, fixed per deployment. The same table drives
 * the services and `moela generate --precision`, so one process rounds at exactly the points the
 * cluster does.
 *
 * | profile       | latent KV | dispatch (to expert-hosts)           | combine (back) |
 * | exact         | f32       | f32                                  | f32            |
 * | paper         | bf16      | fp8-tile (e4m3, 1x128 f32 scale)     | bf16           |
 * | paper-logfmt8 | bf16      | logfmt8 (LogFMT-8, 1x128 f32 lo, hi) | bf16           |
 *
 * `PRECISION_NAMES` is the one list every service's `--precision` and the CLI accept.
 */
import { InvalidArgumentError } from "@moela/core";
import type { KvDtype } from "@moela/engine";
import type { DispatchCodecName } from "./codec/index.js";

export const PRECISION_NAMES = ["exact", "paper", "paper-logfmt8"] as const;

export type PrecisionName = (typeof PRECISION_NAMES)[number];

export interface PrecisionProfile {
  readonly name: PrecisionName;
  /** Element type of cached and transferred latent KV rows. */
  readonly kvDtype: KvDtype;
  /** Codec of the activations sent to the expert-hosts. */
  readonly dispatch: DispatchCodecName;
  /** Codec of the partial sums the expert-hosts send back. */
  readonly combine: DispatchCodecName;
}

export const PRECISION_PROFILES: Readonly<Record<PrecisionName, PrecisionProfile>> = Object.freeze({
  exact: Object.freeze({ name: "exact", kvDtype: "f32", dispatch: "f32", combine: "f32" }),
  paper: Object.freeze({ name: "paper", kvDtype: "bf16", dispatch: "fp8-tile", combine: "bf16" }),
  "paper-logfmt8": Object.freeze({ name: "paper-logfmt8", kvDtype: "bf16", dispatch: "logfmt8", combine: "bf16" }),
});

export function isPrecisionName(s: string): s is PrecisionName {
  return Object.hasOwn(PRECISION_PROFILES, s);
}

/** The profile called `name` (a config value); unknown names get an error listing the known ones. */
export function precisionProfile(name: string): PrecisionProfile {
  if (!isPrecisionName(name)) {
    throw new InvalidArgumentError(`unknown precision profile "${name}"; known: ${PRECISION_NAMES.join(", ")}`);
  }
  return PRECISION_PROFILES[name];
}

/** A profile or its name, as the constructors of this package accept it. */
export type ProfileLike = PrecisionProfile | PrecisionName;

export function resolveProfile(p: ProfileLike): PrecisionProfile {
  return typeof p === "string" ? precisionProfile(p) : p;
}
