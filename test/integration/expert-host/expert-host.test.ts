/**
 * The expert-host service over real gRPC on 127.0.0.1:0, on a tiny-v3 checkpoint: Info, Dispatch
 * equal to the in-process transport bit for bit under both profiles (also through a whole model's
 * greedy generation), INVALID_ARGUMENT for bad requests with the server still serving, and shards
 * that hold only their own experts.
 */
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { Code, createLogger, InvalidArgumentError, MoelaError } from "@moela/core";
import { DeepseekModel, Engine, mlpForwardGroup, readModelConfig, weightBytes, Workspace, type ModelConfig } from "@moela/engine";
import {
  checkHostInfo,
  checkpointModelId,
  connectExpertHosts,
  createInProcessExperts,
  fromDispatchRequest,
  getDispatchCodec,
  HostedExpertExecutor,
  placementFor,
  toDispatchRequest,
  type ExpertDispatchRequest,
  type GrpcExpertHostTransport,
  type PrecisionName,
} from "@moela/moe-dispatch";
import { ExpertHostClient, type DispatchRequest, type DispatchResponse, type DispatchStreamResponse } from "@moela/proto-gen";
import { checkHealth, connect, unaryCall } from "@moela/rpc";
import { parseConfig, startExpertHost, type RunningExpertHost } from "@moela/expert-host";
import { makeCheckpoint, removeCheckpoints } from "../../helpers/checkpoints.js";
import { routedBatch } from "../../helpers/random.js";

const REPO_ROOT = fileURLToPath(new URL("../../../", import.meta.url));
const silent = createLogger("expert-host-test", "silent");
let dir: string;
let config: ModelConfig;
const running: RunningExpertHost[] = [];
const clients: GrpcExpertHostTransport[] = [];

async function startHost(shardIndex: number, shardCount: number, precision: PrecisionName, ...extra: string[]): Promise<RunningExpertHost> {
  const cfg = parseConfig(["--model", dir, "--shard-index", String(shardIndex), "--shard-count", String(shardCount), "--precision", precision, ...extra], {})!;
  const host = await startExpertHost(cfg, silent);
  running.push(host);
  return host;
}

async function startCluster(H: number, precision: PrecisionName): Promise<GrpcExpertHostTransport[]> {
  const hosts = await Promise.all(Array.from({ length: H }, (_, h) => startHost(h, H, precision)));
  const transports = connectExpertHosts(hosts.map((h) => h.grpcAddress));
  clients.push(...transports);
  return transports;
}

/** Seeded activations and top-k routing for T tokens of the tiny model. */
function batch(T: number, seed: number) {
  return routedBatch(config, T, seed);
}

/** Runs `moela` (services/cli/bin/moela.js) and resolves with its stdout; rejects on a non-zero exit. */
function runCli(args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["services/cli/bin/moela.js", ...args], { cwd: REPO_ROOT, stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let err = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    child.stderr.on("data", (d: Buffer) => (err += d.toString()));
    child.once("exit", (code) => (code === 0 ? resolve(out) : reject(new Error(`moela exited with ${code}: ${err}`))));
  });
}

/** A copy of f32 wire bytes with value `i` set to NaN. */
function withNaN(data: Uint8Array, i: number): Buffer {
  const copy = Buffer.from(data); // a copy (Buffer#slice would be a view of the original)
  new DataView(copy.buffer, copy.byteOffset, copy.byteLength).setFloat32(4 * i, Number.NaN, true);
  return copy;
}

function bits(x: Float32Array): Uint32Array {
  return new Uint32Array(x.buffer, x.byteOffset, x.length);
}

beforeAll(() => {
  dir = makeCheckpoint("tiny-v3");
  config = readModelConfig(dir);
});

afterAll(async () => {
  for (const c of clients.splice(0)) c.close();
  await Promise.all(running.splice(0).map((h) => h.close(0)));
  removeCheckpoints();
});

describe("expert-host over gRPC", () => {
  it("reports its shard, layers, experts, model and precision in Info", async () => {
    const [, second] = await startCluster(2, "paper");
    const info = await second!.info();
    const placement = placementFor(config, 2);
    // tiny-v3: layer 0 dense, layers 1..3 MoE, and the MTP block (layer 4) is MoE too.
    expect(info.layers.map((l) => l.layer)).toEqual([1, 2, 3, 4]);
    for (const l of info.layers) expect(l.expertIds).toEqual(placement.expertsOfHost[1]);
    expect(info).toMatchObject({ shardIndex: 1, shardCount: 2, precision: "paper", hiddenSize: 256, modelId: checkpointModelId(dir) });
    expect(() =>
      checkHostInfo(info, { shard: 1, placement, profile: "paper", hidden: 256, layers: [1, 2, 3, 4], modelId: checkpointModelId(dir) }),
    ).not.toThrow();
  });

  it.each<[PrecisionName, number]>([
    ["exact", 2],
    ["paper", 2],
    ["paper", 3],
  ])("Dispatch under %s over %i hosts equals the in-process transport bit for bit", async (precision, H) => {
    const transports = await startCluster(H, precision);
    const local = createInProcessExperts(dir, H, precision);
    const remote = new HostedExpertExecutor({ placement: local.placement, profile: precision, hosts: transports, hidden: config.hiddenSize });
    for (const layer of [1, 3, 4]) {
      const { x, ids, weights, T, hidden } = batch(13, layer * 7 + H);
      const a = new Float32Array(T * hidden);
      const b = new Float32Array(T * hidden);
      await local.executor.runRouted(layer, x, T, ids, weights, a);
      await remote.runRouted(layer, x, T, ids, weights, b);
      expect(bits(b)).toEqual(bits(a));
      expect(a.some((v) => v !== 0)).toBe(true);
    }
    // Host by host: the wire reply has exactly the in-process bytes.
    const { x, ids, weights, T, hidden } = batch(5, 99);
    const enc = getDispatchCodec(local.profile.dispatch).encode(x, T, hidden);
    const k = config.numExpertsPerTok;
    const mine = ids.filter((e) => local.placement.hostOfExpert[e] === 0);
    const counts = Array.from({ length: T }, (_, t) => ids.subarray(t * k, (t + 1) * k).filter((e) => local.placement.hostOfExpert[e] === 0).length);
    const rows = counts.map((c, t) => (c > 0 ? t : -1)).filter((t) => t >= 0);
    const req: ExpertDispatchRequest = {
      layer: 2,
      rows: rows.length,
      cols: hidden,
      activations: getDispatchCodec(local.profile.dispatch).encode(
        Float32Array.from(rows.flatMap((t) => Array.from(x.subarray(t * hidden, (t + 1) * hidden)))),
        rows.length,
        hidden,
      ),
      tokenExpertCounts: counts.filter((c) => c > 0),
      expertIds: mine,
      weights: weights.filter((_, i) => local.placement.hostOfExpert[ids[i]!] === 0),
    };
    expect(enc.rows).toBe(T);
    const viaGrpc = await transports[0]!.dispatch(req);
    const inProcess = await local.hosts[0]!.dispatch(req);
    expect(viaGrpc.codec).toBe(local.profile.combine);
    expect(Buffer.compare(Buffer.from(viaGrpc.data), Buffer.from(inProcess.data))).toBe(0);
  });

  it.each<PrecisionName>(["exact", "paper"])(
    "a whole model generates the same greedy tokens and logprobs through gRPC hosts as in process (%s)",
    async (precision) => {
      const H = 2;
      const kvDtype = precision === "paper" ? "bf16" : "f32";
      const transports = await startCluster(H, precision);
      const inProc = DeepseekModel.load(dir, { kvDtype });
      inProc.setExpertExecutor(createInProcessExperts(inProc, H, precision).executor);
      // The attention side holds no routed experts at all.
      const attnSide = DeepseekModel.load(dir, { kvDtype, routedExperts: () => false });
      attnSide.setExpertExecutor(
        new HostedExpertExecutor({ placement: placementFor(config, H), profile: precision, hosts: transports, hidden: config.hiddenSize }),
      );
      const run = async (model: DeepseekModel) => {
        const engine = new Engine(model, { blockSize: 16, numBlocks: 8, prefillChunk: 4 });
        const seq = engine.newSequence("t", [0, 399, 332, 17, 5], { temperature: 0, topP: 1, topK: -1, maxTokens: 8, topLogprobs: 3 });
        const out = [];
        for await (const t of engine.generate(seq)) out.push(t);
        return out;
      };
      const a = await run(inProc);
      const b = await run(attnSide);
      expect(b.map((t) => t.id)).toEqual(a.map((t) => t.id));
      expect(b.map((t) => t.logprob)).toEqual(a.map((t) => t.logprob));
      expect(attnSide.weightBytes).toBeLessThan(inProc.weightBytes);
      // `moela generate` with the same profile and H agrees with the gRPC-hosted model exactly.
      const cli = await runCli([
        "generate",
        "--model",
        dir,
        "--prompt-ids",
        "0,399,332,17,5",
        "--max-tokens",
        "8",
        "--temperature",
        "0",
        "--json",
        "--precision",
        precision,
        "--expert-hosts",
        String(H),
      ]);
      const printed = JSON.parse(cli) as { token_ids: number[]; logprobs: number[] };
      expect(printed.token_ids).toEqual(b.map((t) => t.id));
      expect(printed.logprobs).toEqual(b.map((t) => t.logprob));
    },
  );

  describe("bad requests get INVALID_ARGUMENT and the server keeps serving", () => {
    let host: RunningExpertHost;
    let client: ExpertHostClient;
    let good: DispatchRequest;
    let theirs: number;

    beforeAll(async () => {
      host = await startHost(0, 2, "exact");
      client = connect(ExpertHostClient, host.grpcAddress);
      const placement = placementFor(config, 2);
      const mine = placement.expertsOfHost[0]!;
      theirs = placement.expertsOfHost[1]![0]!;
      const hidden = config.hiddenSize;
      good = toDispatchRequest({
        layer: 2,
        rows: 2,
        cols: hidden,
        activations: getDispatchCodec("f32").encode(batch(2, 3).x, 2, hidden),
        tokenExpertCounts: [2, 1],
        expertIds: [mine[0]!, mine[3]!, mine[1]!],
        weights: [0.5, 1.5, 1],
        requestId: "req-test",
      });
    });

    afterAll(() => client.close());

    const call = (req: DispatchRequest) => unaryCall<DispatchResponse>((md, o, cb) => client.dispatch(req, md, o, cb), { timeoutMs: 10_000 });

    it.each<[string, (g: DispatchRequest) => DispatchRequest, RegExp]>([
      ["an unknown layer", (g) => ({ ...g, layer: 99 }), /layer 99 is not an MoE layer/],
      ["a dense layer", (g) => ({ ...g, layer: 0 }), /layer 0 is not an MoE layer/],
      ["an expert this shard does not hold", (g) => ({ ...g, expertIds: [g.expertIds[0]!, theirs, g.expertIds[2]!] }), /is not held by shard 0 of 2/],
      [
        "activations shorter than their shape",
        (g) => ({ ...g, activations: { ...g.activations!, data: g.activations!.data.subarray(0, 100) } }),
        /activations\.data has 100 bytes/,
      ],
      [
        "a shape that is not [tokens, hidden]",
        (g) => ({ ...g, activations: { ...g.activations!, shape: [512] } }),
        /activations\.shape must be \[tokens, hidden\]/,
      ],
      ["the wrong hidden size", (g) => ({ ...g, activations: { ...g.activations!, shape: [4, 128] } }), /128 columns, the model's hidden_size is 256/],
      ["missing activations", (g) => ({ ...g, activations: undefined }), /activations is missing/],
      ["a dtype other than the profile's", (g) => ({ ...g, activations: { ...g.activations!, dtype: 2, shape: [4, 256] } }), /encoded as bf16, expected f32/],
      ["counts that do not sum to the ids", (g) => ({ ...g, tokenExpertCounts: [1, 1] }), /token_expert_counts sum to 2/],
      ["a NaN weight", (g) => ({ ...g, weights: [0.5, Number.NaN, 1] }), /weights\[1\] is NaN/],
      [
        "a NaN activation",
        (g) => ({ ...g, activations: { ...g.activations!, data: withNaN(g.activations!.data, 261) } }),
        /value NaN at row 1, column 5; activations must be finite/,
      ],
    ])("%s", async (_, mutate, message) => {
      const err = await call(mutate(good)).then(
        () => null,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(InvalidArgumentError);
      expect((err as MoelaError).code).toBe(Code.INVALID_ARGUMENT);
      expect((err as Error).message).toMatch(message);
      // Still serving, and still answering good requests.
      expect(await checkHealth(host.grpcAddress)).toBe("SERVING");
      const ok = await call(good);
      expect(ok.output?.shape).toEqual([2, 256]);
    });

    it("over one DispatchStream, each bad request is answered with its status by call id and the stream keeps serving", async () => {
      const stream = client.dispatchStream();
      const answers = new Map<number, DispatchStreamResponse>();
      stream.on("data", (r: DispatchStreamResponse) => answers.set(r.callId, r));
      const sent: Array<[number, DispatchRequest, RegExp | null]> = [
        [1, good, null],
        [2, { ...good, layer: 99 }, /layer 99 is not an MoE layer/],
        [3, { ...good, weights: [0.5, Number.NaN, 1] }, /weights\[1\] is NaN/],
        [4, good, null],
        [5, { ...good, activations: undefined }, /activations is missing/],
        [6, good, null],
      ];
      for (const [callId, request] of sent) stream.write({ callId, request });
      stream.write({ callId: 7 }); // no request at all
      await vi.waitFor(() => expect(answers.size).toBeGreaterThanOrEqual(sent.length + 1), { timeout: 10_000, interval: 10 });
      const ended = new Promise((resolve) => stream.on("status", resolve));
      stream.end();
      expect(await ended).toMatchObject({ code: Code.OK });
      const unary = await call(good);
      for (const [callId, , error] of sent) {
        const a = answers.get(callId)!;
        if (error === null) {
          expect(a.errorCode).toBe(0);
          // The same bytes as the unary Dispatch of the same request.
          expect(Buffer.compare(Buffer.from(a.response!.output!.data), Buffer.from(unary.output!.data))).toBe(0);
        } else {
          expect(a.errorCode).toBe(Code.INVALID_ARGUMENT);
          expect(a.errorMessage).toMatch(error);
          expect(a.response).toBeUndefined();
        }
      }
      expect(answers.get(7)).toMatchObject({ errorCode: Code.INVALID_ARGUMENT, errorMessage: "request is missing" });
    });

    it("the stream and the unary transport give the same bits", async () => {
      const [stream] = connectExpertHosts([host.grpcAddress]);
      const [unary] = connectExpertHosts([host.grpcAddress], { dispatchMode: "unary" });
      clients.push(stream!, unary!);
      expect(stream!.dispatchMode).toBe("stream");
      const req = fromDispatchRequest(good);
      const [a, b] = await Promise.all([stream!.dispatch(req), unary!.dispatch(req)]);
      expect(Buffer.compare(Buffer.from(a.data), Buffer.from(b.data))).toBe(0);
      // Concurrent calls on one stream are matched to their own answers.
      const many = await Promise.all([1, 2, 3, 4].map((w) => stream!.dispatch({ ...req, weights: Array.from(req.weights, (x) => x * w) })));
      const ones = await Promise.all([1, 2, 3, 4].map((w) => unary!.dispatch({ ...req, weights: Array.from(req.weights, (x) => x * w) })));
      many.forEach((m, i) => expect(Buffer.compare(Buffer.from(m.data), Buffer.from(ones[i]!.data))).toBe(0));
    });

    it("the gRPC transport surfaces a rejection as InvalidArgumentError naming the host", async () => {
      const [t] = connectExpertHosts([host.grpcAddress]);
      clients.push(t!);
      const req: ExpertDispatchRequest = {
        layer: 99,
        rows: 1,
        cols: 256,
        activations: getDispatchCodec("f32").encode(new Float32Array(256), 1, 256),
        tokenExpertCounts: [1],
        expertIds: [0],
        weights: [1],
      };
      await expect(t!.dispatch(req)).rejects.toThrow(new RegExp(`expert-host 0 \\(${host.grpcAddress}\\) Dispatch rejected the request: layer 99`));
    });
  });

  it("an unreachable host is an UnavailableError naming it", async () => {
    // A port nothing listens on: start a host, note its address, close it.
    const h = await startHost(0, 2, "exact");
    const address = h.grpcAddress;
    await h.close(0);
    running.splice(running.indexOf(h), 1);
    const [t] = connectExpertHosts([address], { dispatchTimeoutMs: 5_000 });
    clients.push(t!);
    const err = await t!.info().then(
      () => null,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(MoelaError);
    expect((err as MoelaError).code).toBe(Code.UNAVAILABLE);
    expect((err as Error).message).toContain(`expert-host 0 (${address}) is unavailable`);
  });

  it("with --shared-expert, computes the shared expert with the engine's bits and holds one more copy of it", async () => {
    const H = 2;
    const hosts = await Promise.all([0, 1].map((h) => startHost(h, H, "exact", "--shared-expert")));
    const plain = await startHost(0, H, "exact");
    const transports = connectExpertHosts(hosts.map((h) => h.grpcAddress));
    clients.push(...transports);
    const placement = placementFor(config, H);
    for (const t of transports) {
      const info = await t.info();
      expect(info.sharedExpert).toBe(true);
      checkHostInfo(info, {
        shard: info.shardIndex,
        placement,
        profile: "exact",
        hidden: config.hiddenSize,
        layers: hosts[0]!.core.layers,
        sharedExpert: true,
      });
    }
    expect((await plain.core.info()).sharedExpert).toBe(false);
    // The shared expert's weights are the only difference in what a shard holds.
    const model = DeepseekModel.load(dir, { kernels: "fast" });
    const layer = hosts[0]!.core.layers[0]!;
    const shared = model.moeLayers().get(layer)!.shared!;
    const sharedBytes = [shared.gate, shared.up, shared.down].reduce((a, w) => a + weightBytes(w), 0);
    expect(hosts[0]!.residentBytes - plain.residentBytes).toBe(sharedBytes * hosts[0]!.core.layers.length);

    const { x, ids, weights, T, hidden } = batch(9, 42);
    const onHosts = new HostedExpertExecutor({ placement, profile: "exact", hosts: transports, hidden, sharedExpert: "hosts" });
    const local = createInProcessExperts(model, H, "exact").executor;
    const routed = new Float32Array(T * hidden);
    const sharedOut = new Float32Array(T * hidden);
    await onHosts.runRouted(layer, x, T, ids, weights, routed, sharedOut);
    const wantRouted = new Float32Array(T * hidden);
    await local.runRouted(layer, x, T, ids, weights, wantRouted);
    const wantShared = new Float32Array(T * hidden);
    mlpForwardGroup([shared], [T], x, wantShared, new Workspace());
    expect(routed).toEqual(wantRouted);
    expect(sharedOut).toEqual(wantShared);
    // A host started without it refuses shared rows, naming the field.
    const bare = connectExpertHosts([plain.grpcAddress])[0]!;
    clients.push(bare);
    const req = {
      layer,
      rows: 1,
      cols: hidden,
      activations: getDispatchCodec("f32").encode(x.subarray(0, hidden), 1, hidden),
      tokenExpertCounts: [1],
      expertIds: [placement.expertsOfHost[0]![0]!],
      weights: [1],
      sharedExpertRows: [0],
    };
    await expect(bare.dispatch(req)).rejects.toThrow(/shared_expert_rows: this host holds no shared expert/);
  });

  it("a shard loads only its own experts: resident bytes are 1/H of all experts", async () => {
    const all = await startHost(0, 1, "exact");
    const halves = await Promise.all([startHost(0, 2, "exact"), startHost(1, 2, "exact")]);
    const quarter = await startHost(3, 4, "exact");
    expect(all.residentBytes).toBeGreaterThan(0);
    // Every expert has the same shapes and dtypes, so the split is exact.
    expect(halves[0]!.residentBytes).toBe(all.residentBytes / 2);
    expect(halves[1]!.residentBytes).toBe(all.residentBytes / 2);
    expect(quarter.residentBytes).toBe(all.residentBytes / 4);
    const placement = placementFor(config, 4);
    for (const layer of quarter.core.layers) expect(quarter.core.ownedExperts(layer)).toEqual(placement.expertsOfHost[3]);
  });

  it("as a process: prints one JSON ready line, serves health, and exits 0 on SIGTERM after draining", async () => {
    const child = spawn(
      process.execPath,
      ["--import", "tsx", "services/expert-host/src/main.ts", "--shard-index", "1", "--precision", "paper", "--log-level", "warn"],
      { cwd: REPO_ROOT, env: { ...process.env, MOELA_EXPERT_HOST_MODEL: dir, MOELA_EXPERT_HOST_SHARD_COUNT: "2" }, stdio: ["ignore", "pipe", "inherit"] },
    );
    const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
    const lines = createInterface({ input: child.stdout! });
    const stdout: string[] = [];
    const ready = await new Promise<Record<string, unknown>>((resolve, reject) => {
      lines.on("line", (line) => {
        stdout.push(line);
        if (stdout.length === 1) resolve(JSON.parse(line) as Record<string, unknown>);
      });
      void exited.then((code) => reject(new Error(`expert-host exited with ${code} before it was ready`)));
    });
    expect(ready).toEqual({
      event: "ready",
      role: "expert-host",
      pid: child.pid,
      grpc: expect.stringMatching(/^127\.0\.0\.1:\d+$/),
      metrics: expect.stringMatching(/^http:\/\/127\.0\.0\.1:\d+\/metrics$/),
      shard: 1,
    });
    expect(await checkHealth(ready.grpc as string)).toBe("SERVING");
    const [t] = connectExpertHosts([ready.grpc as string]);
    const info = await t!.info();
    t!.close();
    expect(info).toMatchObject({ shardIndex: 1, shardCount: 2, precision: "paper" });
    const scrape = await (await fetch(ready.metrics as string)).text();
    expect(scrape).toContain("moela_expert_host_compute_seconds");
    child.kill("SIGTERM");
    expect(await exited).toBe(0);
    expect(stdout).toHaveLength(1);
  });
});
