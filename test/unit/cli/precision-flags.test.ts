// Every `--precision` in the platform takes paper-logfmt8: each service's config (flag and env twin),
// its --help, `moela cluster` and `moela generate`; a wrong value is refused with all three profiles named.
import { describe, expect, it } from "vitest";
import { PRECISION_NAMES } from "@moela/moe-dispatch";
import { runCluster } from "../../../services/cli/src/cluster.js";
import { serviceArgs, type ServiceArgsInput } from "../../../services/cli/src/launcher.js";
import { buildProgram } from "../../../services/cli/src/main.js";
import { parseClusterArgs } from "../../helpers/cli-args.js";
import { parseConfig as parseDecodeConfig, USAGE as DECODE_USAGE } from "../../../services/decode/src/config.js";
import { parseConfig as parseExpertHostConfig, USAGE as EXPERT_HOST_USAGE } from "../../../services/expert-host/src/config.js";
import { parsePrefillConfig, USAGE as PREFILL_USAGE } from "../../../services/prefill/src/config.js";
import { parseRouterConfig, USAGE as ROUTER_USAGE } from "../../../services/router/src/config.js";
import { parseOneProcessArgs, USAGE as ONE_PROCESS_USAGE } from "../../../services/router/src/one-process.js";

const MODEL = new URL("../../../models/tiny-v3", import.meta.url).pathname;

interface Service {
  readonly name: string;
  readonly env: string;
  readonly usage: string;
  parse(argv: string[], env: NodeJS.ProcessEnv): { readonly precision: string } | null;
}

const SERVICES: Service[] = [
  { name: "router", env: "MOELA_ROUTER_PRECISION", usage: ROUTER_USAGE, parse: (a, e) => parseRouterConfig(["--model", MODEL, ...a], e) },
  { name: "prefill", env: "MOELA_PREFILL_PRECISION", usage: PREFILL_USAGE, parse: (a, e) => parsePrefillConfig(["--model", MODEL, ...a], e) },
  { name: "decode", env: "MOELA_DECODE_PRECISION", usage: DECODE_USAGE, parse: (a, e) => parseDecodeConfig(["--model", MODEL, ...a], e) },
  {
    name: "expert-host",
    env: "MOELA_EXPERT_HOST_PRECISION",
    usage: EXPERT_HOST_USAGE,
    parse: (a, e) => parseExpertHostConfig(["--model", MODEL, "--shard-index", "0", "--shard-count", "2", ...a], e),
  },
  { name: "serve --role all", env: "MOELA_ALL_PRECISION", usage: ONE_PROCESS_USAGE, parse: (a, e) => parseOneProcessArgs(["--model", MODEL, ...a], e) },
];

describe.each(SERVICES)("$name --precision", (s) => {
  it("defaults to exact", () => {
    expect(s.parse([], {})?.precision).toBe("exact");
  });

  it.each([...PRECISION_NAMES])("takes %s as the flag and as the env twin", (p) => {
    expect(s.parse(["--precision", p], {})?.precision).toBe(p);
    expect(s.parse([], { [s.env]: p })?.precision).toBe(p);
  });

  it("--help lists paper-logfmt8 on the --precision line", () => {
    const line = s.usage.split("\n").find((l) => l.includes("--precision"));
    expect(line).toBeDefined();
    expect(line).toContain("paper-logfmt8");
  });

  it("refuses another profile, naming the flag, its env twin and every profile", () => {
    let err: unknown;
    try {
      s.parse(["--precision", "logfmt8"], {});
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(Error);
    const message = (err as Error).message;
    expect(message).toContain("--precision");
    expect(message).toContain(s.env);
    expect(message).toContain("exact, paper, paper-logfmt8");
  });
});

describe("moela cluster --precision", () => {
  const parseCluster = parseClusterArgs;

  it("takes paper-logfmt8 and passes it to every role", async () => {
    expect((await parseCluster(["--precision", "paper-logfmt8"])).precision).toBe("paper-logfmt8");
    const input: ServiceArgsInput = {
      model: "/m",
      precision: "paper-logfmt8",
      logLevel: "warn",
      host: "127.0.0.1",
      redisUrl: "redis://127.0.0.1:6379",
      queuePrefix: "q1",
      expertHostAddresses: ["127.0.0.1:1"],
      decodeAddresses: ["127.0.0.1:3"],
      httpAddress: "127.0.0.1:8000",
      servedModelName: undefined,
      shardIndex: 0,
      shardCount: 1,
    };
    for (const role of ["router", "prefill", "decode", "expert-host"] as const) {
      const args = serviceArgs(role, input);
      expect(args[args.indexOf("--precision") + 1], role).toBe("paper-logfmt8");
    }
  });

  it("refuses an unknown profile before starting anything, listing paper-logfmt8", async () => {
    const o = { ...(await parseCluster([])), precision: "logfmt8" };
    await expect(runCluster(o)).rejects.toThrow("--precision must be one of exact, paper, paper-logfmt8, got logfmt8");
  });
});

describe("moela generate --precision", () => {
  it("takes paper-logfmt8, and its help names it", async () => {
    const program = buildProgram();
    const generate = program.commands.find((c) => c.name() === "generate")!;
    let got: string | undefined;
    generate.action((opts: { precision: string }) => {
      got = opts.precision;
    });
    await program.parseAsync(["generate", "--model", "/m", "--precision", "paper-logfmt8"], { from: "user" });
    expect(got).toBe("paper-logfmt8");
    expect(generate.helpInformation().replace(/\s+/g, " ")).toContain("| paper-logfmt8 (as paper, LogFMT-8 dispatch)");
  });
});
