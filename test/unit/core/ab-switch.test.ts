import { afterEach, describe, expect, it, vi } from "vitest";
import { AB_DEFAULT_WINDOW_MS, AB_SWITCHES, abSwitchOn, abSwitchSetting, abWindowOn, InvalidArgumentError } from "@moela/core";

describe("A/B switches (@moela/core ab-switch.ts)", () => {
  it("reads the switch and its window from the environment; none unless named", () => {
    expect(abSwitchSetting({})).toEqual({ name: undefined, windowMs: AB_DEFAULT_WINDOW_MS });
    expect(abSwitchSetting({ MOELA_AB_SWITCH: " decode-keep-cores ", MOELA_AB_WINDOW_MS: "40" })).toEqual({ name: "decode-keep-cores", windowMs: 40 });
    for (const name of Object.keys(AB_SWITCHES)) expect(abSwitchSetting({ MOELA_AB_SWITCH: name }).name).toBe(name);
  });

  it("refuses an unknown switch, naming the known ones, and a window too short or not a whole number", () => {
    expect(() => abSwitchSetting({ MOELA_AB_SWITCH: "decode-go-faster" })).toThrow(InvalidArgumentError);
    expect(() => abSwitchSetting({ MOELA_AB_SWITCH: "decode-go-faster" })).toThrow(/not a switch; the switches are: decode-keep-cores, /);
    for (const w of ["5", "12.5", "abc", "-100"])
      expect(() => abSwitchSetting({ MOELA_AB_WINDOW_MS: w })).toThrow(/MOELA_AB_WINDOW_MS must be an integer >= 10/);
  });

  it("is on in odd windows of the wall clock and off in even ones", () => {
    expect([0, 99, 100, 199, 200, 350].map((t) => abWindowOn(t, 100))).toEqual([false, false, true, true, false, true]);
  });

  describe("abSwitchOn", () => {
    afterEach(() => {
      vi.useRealTimers();
      delete process.env["MOELA_AB_SWITCH"];
      delete process.env["MOELA_AB_WINDOW_MS"];
    });

    it("flips the named switch with the clock and leaves the others off", () => {
      process.env["MOELA_AB_SWITCH"] = "expert-host-one-thread";
      process.env["MOELA_AB_WINDOW_MS"] = "20";
      vi.useFakeTimers();
      const seen = [1_000, 1_019, 1_020, 1_039, 1_040].map((t) => {
        vi.setSystemTime(t);
        return [abSwitchOn("expert-host-one-thread"), abSwitchOn("decode-keep-cores")];
      });
      expect(seen).toEqual([
        [false, false],
        [false, false],
        [true, false],
        [true, false],
        [false, false],
      ]);
    });

    it("follows a change of the environment, and leaves every switch off, with a warning, for one it cannot parse", () => {
      vi.useFakeTimers();
      vi.setSystemTime(150);
      process.env["MOELA_AB_SWITCH"] = "decode-keep-cores";
      expect(abSwitchOn("decode-keep-cores")).toBe(true);
      const warn = vi.spyOn(process, "emitWarning").mockImplementation(() => {});
      process.env["MOELA_AB_SWITCH"] = "decode-go-faster";
      expect(abSwitchOn("decode-keep-cores")).toBe(false);
      expect(warn).toHaveBeenCalledWith(expect.stringMatching(/"decode-go-faster" is not a switch.*every A\/B switch stays off/));
      warn.mockRestore();
      delete process.env["MOELA_AB_SWITCH"];
      expect(abSwitchOn("decode-keep-cores")).toBe(false);
    });
  });
});
