import { describe, expect, it } from "vitest";
import { InvalidArgumentError } from "@moela/core";
import { StopStringMatcher } from "@moela/tokenizer";

interface Run {
  /** What each push returned. */
  emitted: string[];
  /** Everything the caller would send: pushes, plus flush when no stop matched. */
  output: string;
  stopped: boolean;
  stop: string | undefined;
}

function run(stops: string[], deltas: string[], includeStopString = false): Run {
  const matcher = new StopStringMatcher(stops, { includeStopString });
  const emitted: string[] = [];
  let stop: string | undefined;
  for (const delta of deltas) {
    const r = matcher.push(delta);
    emitted.push(r.text);
    if (r.stop !== undefined) stop = r.stop;
  }
  const output = emitted.join("") + matcher.flush();
  return { emitted, output, stopped: matcher.stopped, stop };
}

type Row = [name: string, stops: string[], deltas: string[], emitted: string[], output: string, stop: string | undefined];

const table: Row[] = [
  ["no stop", ["xyz"], ["abc", "def"], ["abc", "def"], "abcdef", undefined],
  ["stop inside one delta", ["END"], ["hello END world"], ["hello "], "hello ", "END"],
  ["stop at the very start", ["STOP"], ["STOP and more"], [""], "", "STOP"],
  ["stop alone as first delta", ["\n"], ["\n", "ignored"], ["", ""], "", "\n"],
  ["stop across delta boundaries", ["\n\nUser:"], ["Hello", "\n", "\nUs", "er: more"], ["Hello", "", "", ""], "Hello", "\n\nUser:"],
  ["partial stop that diverges is released", ["</s>"], ["a<", "/x", "y"], ["a", "</x", "y"], "a</xy", undefined],
  ["held suffix released by flush", ["\n\n"], ["end of tex", "t\n"], ["end of tex", "t"], "end of text\n", undefined],
  ["text after the stop in the same delta is dropped", ["."], ["one", " two. three"], ["one", " two"], "one two", "."],
  ["first of several stops to complete wins", ["abcd", "bc"], ["xabcd"], ["xa"], "xa", "bc"],
  ["on a tie the earlier start wins", ["abc", "bc"], ["xabc"], ["x"], "x", "abc"],
  ["pushes after a stop give nothing", ["!"], ["hi!", "more", "text"], ["hi", "", ""], "hi", "!"],
  ["overlapping prefix of a stop", ["aab"], ["a", "a", "a", "b"], ["", "", "a", ""], "a", "aab"],
  ["multi-character emoji stop", ["👋🏽"], ["bye 👋", "🏽 later"], ["bye ", ""], "bye ", "👋🏽"],
];

describe("StopStringMatcher", () => {
  it.each(table)("%s", (_name, stops, deltas, emitted, output, stop) => {
    const r = run(stops, deltas);
    expect(r.emitted).toEqual(emitted);
    expect(r.output).toBe(output);
    expect(r.stop).toBe(stop);
    expect(r.stopped).toBe(stop !== undefined);
  });

  it("keeps the stop string when includeStopString is set", () => {
    expect(run(["\n\nUser:"], ["Hello", "\n", "\nUs", "er: more"], true).output).toBe("Hello\n\nUser:");
  });

  it("gives the same result however the text is cut into deltas", () => {
    const text = "The answer is 42.\n\nUser: thanks</s> trailing";
    const stops = ["</s>", "\n\nUser:", "42!"];
    const whole = run(stops, [text]);
    expect(whole.output).toBe("The answer is 42.");
    expect(whole.stop).toBe("\n\nUser:");
    for (let i = 0; i <= text.length; i++) {
      for (let j = i; j <= text.length; j += 3) {
        const r = run(stops, [text.slice(0, i), text.slice(i, j), text.slice(j)]);
        expect([r.output, r.stop]).toEqual([whole.output, whole.stop]);
      }
    }
    const byChar = run(stops, [...text]);
    expect([byChar.output, byChar.stop]).toEqual([whole.output, whole.stop]);
  });

  it("never emits text that later turns out to be part of a stop", () => {
    const r = run(["<|end|>"], [..."ok <|end|> after"]);
    expect(r.emitted.join("")).toBe("ok ");
  });

  it.each([[[""]], [["ok", ""]]])("rejects empty stop strings %j", (stops) => {
    expect(() => new StopStringMatcher(stops)).toThrow(InvalidArgumentError);
  });
});
