/**
 * The frame the engine and kernel benchmarks share: the machine and its yardsticks, measured once before the
 * measurements; then the report's first lines, its charts' yardstick lines and its JSON's first fields, which say
 * where and how the run was made.
 */
import { commandLine, describeMachine, fmt, log, machineInfo, writeReport, type BarChart, type MachineInfo } from "./bench-report.js";
import { describeYardsticks, yardsticksFor, type Yardsticks } from "./yardsticks.js";

export interface BenchSetting {
  /** The command that reproduces the run. */
  readonly cmd: string;
  readonly machine: MachineInfo;
  /** null with --no-yardsticks. */
  readonly yard: Yardsticks | null;
  /** Single-thread read bandwidth, GB/s; null where not measured. */
  readonly readGBs: number | null;
  /** numpy's float32 GEMM, GFLOP/s; null where not measured. */
  readonly gemmGFlops: number | null;
}

/** The machine, and its yardsticks when `yardsticks` (the --no-yardsticks option's value). */
export function measureSetting(yardsticks: boolean): BenchSetting {
  const machine = machineInfo();
  const { yard, readGBs, gemmGFlops } = yardsticksFor(yardsticks, log);
  return { cmd: commandLine(), machine, yard, readGBs, gemmGFlops };
}

/** The report's first lines: the command, the machine and the yardsticks. */
export function settingLines(s: BenchSetting): string[] {
  return [`$ ${s.cmd}`, describeMachine(s.machine), s.yard === null ? "yardsticks: skipped (--no-yardsticks)" : describeYardsticks(s.yard)];
}

/** A chart's dashed line at the read-bandwidth yardstick (GB/s charts), when measured. */
export function readBandwidthRef(s: BenchSetting): Pick<BarChart, "refs"> {
  return s.readGBs === null ? {} : { refs: [{ value: s.readGBs, label: `read bw ${fmt(s.readGBs)} GB/s` }] };
}

/** A chart's dashed line at the GEMM yardstick (GFLOP/s charts), when measured. */
export function gemmRef(s: BenchSetting): Pick<BarChart, "refs"> {
  return s.gemmGFlops === null ? {} : { refs: [{ value: s.gemmGFlops, label: `GEMM ${fmt(s.gemmGFlops)} GFLOP/s` }] };
}

/** writeReport, the JSON starting with its version, the time, the command, the machine and the yardsticks. */
export function writeBenchReport(
  s: BenchSetting,
  out: string,
  name: string,
  title: string,
  lines: readonly string[],
  charts: readonly BarChart[],
  version: number,
  fields: Readonly<Record<string, unknown>>,
): [string, string] {
  return writeReport(out, name, title, lines, charts, {
    version,
    at: new Date().toISOString(),
    command: s.cmd,
    machine: s.machine,
    yardsticks: s.yard,
    ...fields,
  });
}
