/** Argument parsers shared by the `moela` subcommands, and their option tables. */
import { InvalidArgumentError as CommanderArgError, Option, type Command } from "commander";

export function intArg(name: string) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n)) throw new CommanderArgError(`${name} must be an integer`);
    return n;
  };
}

export function floatArg(name: string) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isFinite(n)) throw new CommanderArgError(`${name} must be a number`);
    return n;
  };
}

export function idListArg(v: string): number[] {
  const ids = v
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s.length > 0)
    .map(Number);
  if (ids.length === 0 || ids.some((n) => !Number.isInteger(n) || n < 0)) {
    throw new CommanderArgError("must be a comma-separated list of non-negative integers");
  }
  return ids;
}

/** A repeatable option's values, in order. */
export function collect(v: string, prev: string[]): string[] {
  return [...prev, v];
}

type Parser = (value: string, previous: never) => unknown;

/**
 * One option, as commander's `.option()` takes it: flags and description, then a default, or a parser
 * and its default. An Option object stands for itself (choices, mandatory, ...).
 */
export type OptionRow =
  | Option
  | readonly [flags: string, description: string]
  | readonly [flags: string, description: string, defaultValue: string | boolean | string[]]
  | readonly [flags: string, description: string, parse: Parser, defaultValue?: unknown];

/** Adds the options of `rows` to `cmd`, in order (what a chain of `.option()` calls does). */
export function withOptions(cmd: Command, rows: readonly OptionRow[]): Command {
  for (const row of rows) {
    if (row instanceof Option) {
      cmd.addOption(row);
      continue;
    }
    const [flags, description, third, fourth] = row as readonly [string, string, unknown?, unknown?];
    if (typeof third === "function") cmd.option(flags, description, third as (value: string, previous: unknown) => unknown, fourth);
    else cmd.option(flags, description, third as string | boolean | string[] | undefined);
  }
  return cmd;
}
