// `moela cluster --role all` (what makes `npm start -- --role all` work): which cluster options carry over to
// `moela serve --role all`, how the API key travels, and that a cluster-only option is refused by name.
import { describe, expect, it } from "vitest";
import { MoelaError } from "@moela/core";
import { oneProcessFromCluster } from "../../../services/cli/src/serve.js";

const DEFAULTS = {
  prefill: 1,
  decode: 1,
  expertHosts: 2,
  precision: "exact",
  host: "127.0.0.1",
  port: 8000,
  queuePrefix: "moela",
  stateDir: ".moela",
  logLevel: "info",
  startupTimeout: 180,
  serviceArg: [],
};

describe("oneProcessFromCluster", () => {
  it.each([
    ["defaults only", {}, ["--precision", "exact", "--host", "127.0.0.1", "--port", "8000", "--log-level", "info"]],
    [
      "model, port, precision, name",
      { model: "models/tiny-v3", port: 0, precision: "paper", servedModelName: "m" },
      ["--precision", "paper", "--host", "127.0.0.1", "--port", "0", "--log-level", "info", "--model", "models/tiny-v3", "--served-model-name", "m"],
    ],
  ])("%s", (_name, given, argv) => {
    const opts: Record<string, unknown> = { ...DEFAULTS, ...given, role: "all" };
    const r = oneProcessFromCluster(opts, (k) => k in given, {});
    expect(r.argv).toEqual(argv);
    expect(r.env["MOELA_ALL_API_KEY"]).toBeUndefined();
  });

  it("passes the API key in the environment, never in argv (the flag, else the router's env twin)", () => {
    const flag = oneProcessFromCluster({ ...DEFAULTS, apiKey: "sk-flag" }, (k) => k === "apiKey", { MOELA_ROUTER_API_KEY: "sk-env" });
    expect(flag.env["MOELA_ALL_API_KEY"]).toBe("sk-flag");
    expect(flag.argv.join(" ")).not.toContain("sk-");
    const env = oneProcessFromCluster({ ...DEFAULTS }, () => false, { MOELA_ROUTER_API_KEY: "sk-env" });
    expect(env.env["MOELA_ALL_API_KEY"]).toBe("sk-env");
  });

  it.each([
    ["decode", "--decode"],
    ["expertHosts", "--expert-hosts"],
    ["redisUrl", "--redis-url"],
    ["serviceArg", "--service-arg"],
  ])("refuses the cluster-only %s by its flag name", (key, flag) => {
    let err: unknown;
    try {
      oneProcessFromCluster({ ...DEFAULTS, [key]: key === "redisUrl" ? "redis://x:1" : 2 }, (k) => k === key, {});
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(MoelaError);
    expect((err as Error).message).toBe(`${flag} applies to the cluster only, not to --role all (see moela serve --role all --help)`);
  });
});
