/**
 * The decode service as a process (`tsx services/decode/src/main.ts`): one JSON ready line on stdout,
 * JSON logs with request ids on stderr, /metrics, and on SIGTERM: stop admitting, end the streams
 * still running with UNAVAILABLE, exit 0.
 */
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { afterAll, describe, expect, it } from "vitest";
import { Code } from "@moela/core";
import { DeepseekModel, Engine } from "@moela/engine";
import { grpcKvConnector } from "@moela/kv-transfer";
import { checkpointModelId, createInProcessExperts } from "@moela/moe-dispatch";
import { DecodeClient, type StreamResponse } from "@moela/proto-gen";
import { checkHealth, connect, serverStreamCall } from "@moela/rpc";
import { REPO_ROOT } from "../../../services/cli/src/launcher.js";
import { makeCheckpoint, removeCheckpoints } from "../../helpers/checkpoints.js";
import { GREEDY, prefillAndSend } from "../../helpers/kv.js";

const PROMPT = [0, 399, 332, 17, 256, 901, 44, 12, 730, 5, 66, 120, 7];

afterAll(removeCheckpoints);

describe("decode as a process", () => {
  it("prints its ready line, serves, and on SIGTERM ends running streams with UNAVAILABLE and exits 0", async () => {
    const dir = makeCheckpoint({ preset: "tiny-v3" });
    const child = spawn(
      process.execPath,
      ["--import", "tsx", "services/decode/src/main.ts", "--kv-blocks", "64", "--block-size", "4", "--drain-grace-ms", "0", "--log-level", "info"],
      { cwd: REPO_ROOT, env: { ...process.env, MOELA_DECODE_MODEL: dir }, stdio: ["ignore", "pipe", "pipe"] },
    );
    let stderr = "";
    child.stderr!.on("data", (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
    const stdout: string[] = [];
    try {
      const ready = await new Promise<Record<string, unknown>>((resolve, reject) => {
        createInterface({ input: child.stdout! }).on("line", (line) => {
          stdout.push(line);
          if (stdout.length === 1) resolve(JSON.parse(line) as Record<string, unknown>);
        });
        void exited.then((code) => reject(new Error(`decode exited with ${code} before it was ready: ${stderr}`)));
      });
      expect(ready).toEqual({
        event: "ready",
        role: "decode",
        pid: child.pid,
        grpc: expect.stringMatching(/^127\.0\.0\.1:\d+$/),
        metrics: expect.stringMatching(/^http:\/\/127\.0\.0\.1:\d+\/metrics$/),
      });
      const grpc = ready.grpc as string;
      expect(await checkHealth(grpc, { service: "moela.v1.Decode" })).toBe("SERVING");

      // A long request from a prefill engine here (same single in-process expert-host as the service).
      const model = DeepseekModel.load(dir);
      model.setExpertExecutor(createInProcessExperts(model, 1, "exact").executor);
      const prefill = new Engine(model, { blockSize: 4, numBlocks: 256 });
      const client = connect(DecodeClient, grpc);
      const connector = grpcKvConnector(grpc);
      const messages: StreamResponse[] = [];
      let firstMessage!: () => void;
      const gotFirst = new Promise<void>((resolve) => (firstMessage = resolve));
      const streamed = (async () => {
        try {
          for await (const m of serverStreamCall<StreamResponse>((md, o) => client.stream({ requestId: "req-proc", startIndex: 0 }, md, o))) {
            messages.push(m);
            firstMessage();
          }
          return null;
        } catch (err) {
          return err as Error & { code?: number };
        }
      })();
      const { outcome } = await prefillAndSend(
        prefill,
        connector,
        PROMPT,
        { ...GREEDY, maxTokens: 200 },
        { transferId: "t-proc", requestId: "req-proc", modelId: checkpointModelId(dir) },
      );
      expect(outcome.ok).toBe(true);
      await gotFirst;

      const scrape = await (await fetch(ready.metrics as string)).text();
      expect(scrape).toMatch(/^moela_decode_kv_blocks_capacity 64$/m);
      expect(scrape).toMatch(/^moela_decode_kv_received_bytes_total [1-9]\d*$/m);
      expect(scrape).toMatch(/^moela_decode_kv_transfer_seconds_count 1$/m);

      child.kill("SIGTERM");
      const err = await streamed;
      expect(err?.code).toBe(Code.UNAVAILABLE);
      expect(messages.length).toBeGreaterThan(0);
      expect(await exited).toBe(0);
      client.close();
      connector.close();

      // One ready line and nothing else on stdout; JSON logs on stderr, the request's with its id.
      expect(stdout).toHaveLength(1);
      const logs = stderr
        .split("\n")
        .filter((l) => l.length > 0)
        .map((l) => JSON.parse(l) as Record<string, unknown>);
      expect(logs.some((l) => l.requestId === "req-proc" && l.msg === "sequence admitted")).toBe(true);
      expect(logs.some((l) => l.msg === "draining")).toBe(true);
    } finally {
      if (child.exitCode === null) child.kill("SIGKILL");
    }
  });

  it("exits 2 naming the flag and its env twin when the configuration is invalid", async () => {
    const child = spawn(process.execPath, ["--import", "tsx", "services/decode/src/main.ts", "--model", "/nowhere", "--max-batch", "0"], {
      cwd: REPO_ROOT,
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stderr = "";
    child.stderr!.on("data", (d: Buffer) => (stderr += d.toString()));
    const code = await new Promise<number | null>((resolve) => child.once("exit", (c) => resolve(c)));
    expect(code).toBe(2);
    expect(stderr).toMatch(/--max-batch \/ MOELA_DECODE_MAX_BATCH: must be >= 1/);
  });
});
