/**
 * Interleaved A/B switches: how to measure an effect of a few percent on a machine whose speed drifts by more than
 * that from one run to the next (the 2-vCPU VMs the cluster is benchmarked on move by 20% within minutes).
 *
 * The switch that MOELA_AB_SWITCH names is on during every odd window of MOELA_AB_WINDOW_MS milliseconds of the wall
 * clock and off during every even one. Every process on the machine reads the same clock, so a whole cluster flips
 * together, and one run measures both ways side by side under the same noise: scripts/bench/cluster-ab.ts sorts each
 * token's interval by the window it fell in. Unset, every switch is off.
 *
 * A switch changes how work is scheduled, never what is computed: the kernels give the same bits on any number of
 * threads, so a run's tokens are the same with the switch on, off or flipping.
 */
import { InvalidArgumentError } from "./errors.js";

/** The switches, each with what it does when on (the default behaviour is its off side). */
export const AB_SWITCHES = {
  "decode-keep-cores":
    "decode's kernel threads keep the cores while expert-hosts on this machine compute, at any batch (off: they leave them from LEAVE_CORES_MIN_ROWS rows)",
  "decode-leave-cores":
    "decode computes on its calling thread alone while expert-hosts on this machine compute, at any batch (off: only from LEAVE_CORES_MIN_ROWS rows)",
  "decode-shared-expert-after":
    "decode computes the shared expert after the expert-hosts answer, on all its threads (off: on its calling thread while they compute)",
  "expert-host-one-thread": "an expert-host computes on its calling thread alone (off: on all its kernel threads)",
} as const;

export type AbSwitch = keyof typeof AB_SWITCHES;

/** Windows shorter than this would flip within one decode step of a large model. */
export const AB_MIN_WINDOW_MS = 10;
export const AB_DEFAULT_WINDOW_MS = 100;

export interface AbSwitchSetting {
  /** The switch that flips, or undefined when none does. */
  readonly name: AbSwitch | undefined;
  readonly windowMs: number;
}

export function isAbSwitch(name: string): name is AbSwitch {
  return Object.hasOwn(AB_SWITCHES, name);
}

/** The setting the environment asks for; throws naming the known switches for an unknown name or a bad window. */
export function abSwitchSetting(env: Readonly<Record<string, string | undefined>>): AbSwitchSetting {
  const raw = env["MOELA_AB_SWITCH"]?.trim() ?? "";
  const windowRaw = env["MOELA_AB_WINDOW_MS"]?.trim() ?? "";
  const windowMs = windowRaw === "" ? AB_DEFAULT_WINDOW_MS : Number(windowRaw);
  if (!(Number.isSafeInteger(windowMs) && windowMs >= AB_MIN_WINDOW_MS)) {
    throw new InvalidArgumentError(`MOELA_AB_WINDOW_MS must be an integer >= ${AB_MIN_WINDOW_MS} (milliseconds), got "${windowRaw}"`);
  }
  if (raw === "") return { name: undefined, windowMs };
  if (!isAbSwitch(raw)) throw new InvalidArgumentError(`MOELA_AB_SWITCH "${raw}" is not a switch; the switches are: ${Object.keys(AB_SWITCHES).join(", ")}`);
  return { name: raw, windowMs };
}

/** Whether the window that holds `epochMs` is an "on" (odd) one. */
export function abWindowOn(epochMs: number, windowMs: number): boolean {
  return Math.floor(epochMs / windowMs) % 2 === 1;
}

let parsed: { readonly raw: string; readonly setting: AbSwitchSetting } | undefined;

/**
 * Whether `name` is on right now. Read on hot paths (once per MoE layer): the environment is parsed again only when
 * it changed. A setting it cannot parse leaves every switch off, with a warning, rather than failing a service in
 * the middle of a step.
 */
export function abSwitchOn(name: AbSwitch): boolean {
  const raw = `${process.env["MOELA_AB_SWITCH"] ?? ""}\n${process.env["MOELA_AB_WINDOW_MS"] ?? ""}`;
  if (parsed?.raw !== raw) {
    let setting: AbSwitchSetting;
    try {
      setting = abSwitchSetting(process.env);
    } catch (err) {
      process.emitWarning(`${(err as Error).message}; every A/B switch stays off`);
      setting = { name: undefined, windowMs: AB_DEFAULT_WINDOW_MS };
    }
    parsed = { raw, setting };
  }
  return parsed.setting.name === name && abWindowOn(Date.now(), parsed.setting.windowMs);
}
