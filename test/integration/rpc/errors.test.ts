/**
 * Errors cross the wire as statuses: a MoelaError thrown in a handler arrives with its own code
 * and message and maps back to its class on the client; anything else arrives as INTERNAL with a
 * fixed message and no stack text, while the server logs the real error.
 */
import { Writable } from "node:stream";
import { status as GrpcStatus, Metadata, type ServiceError } from "@grpc/grpc-js";
import {
  CancelledError,
  Code,
  ConfigError,
  DataLossError,
  FailedPreconditionError,
  FailureReason,
  InvalidArgumentError,
  MoelaError,
  ResourceExhaustedError,
  UnavailableError,
  UnimplementedError,
} from "@moela/core";
import {
  DecodeService,
  DecodeClient,
  DType,
  ExpertHostClient,
  ExpertHostService,
  KvBegin,
  KvTransferClient,
  KvTransferService,
  type InfoResponse,
  type PushRequest,
  type StreamRequest,
  type StreamResponse,
  Tensor,
} from "@moela/proto-gen";
import { clientStreamCall, connect, FAILURE_REASON_METADATA, fromStatus, INTERNAL_DETAILS, serverStreamCall, toStatus, unaryCall } from "@moela/rpc";
import { pino } from "pino";
import { describe, expect, it } from "vitest";
import { startServer } from "./harness.js";

/** A server whose ExpertHost.Info throws `error` (Dispatch is never called here). */
async function expertHostThrowing(error: unknown, logLines?: string[]) {
  const logger =
    logLines === undefined
      ? undefined
      : pino(
          { level: "error" },
          new Writable({
            write(chunk: Buffer, _enc, done) {
              logLines.push(chunk.toString());
              done();
            },
          }),
        );
  const { address } = await startServer(
    (server) =>
      server.addService(ExpertHostService, {
        async dispatch() {
          throw new MoelaError("not used", Code.UNIMPLEMENTED);
        },
        async *dispatchStream() {
          throw new MoelaError("not used", Code.UNIMPLEMENTED);
        },
        async *attachSharedMemory() {
          throw new MoelaError("not used", Code.UNIMPLEMENTED);
        },
        async info(): Promise<InfoResponse> {
          throw error;
        },
      }),
    { logger },
  );
  return connect(ExpertHostClient, address);
}

/** The raw grpc-js error of one Info call: what is actually on the wire. */
function rawInfoError(client: ExpertHostClient): Promise<ServiceError> {
  return new Promise((resolve, reject) => {
    client.info({}, new Metadata(), {}, (err) => (err === null ? reject(new Error("call succeeded")) : resolve(err)));
  });
}

describe("a MoelaError thrown in a handler", () => {
  const cases: { name: string; error: MoelaError; code: Code; cls: abstract new (...args: never[]) => MoelaError }[] = [
    { name: "InvalidArgumentError", error: new InvalidArgumentError("layer 99 is out of range"), code: Code.INVALID_ARGUMENT, cls: InvalidArgumentError },
    { name: "ResourceExhaustedError", error: new ResourceExhaustedError("no free KV blocks"), code: Code.RESOURCE_EXHAUSTED, cls: ResourceExhaustedError },
    { name: "UnavailableError", error: new UnavailableError("expert host draining"), code: Code.UNAVAILABLE, cls: UnavailableError },
    { name: "DataLossError", error: new DataLossError("layer 3 checksum mismatch"), code: Code.DATA_LOSS, cls: DataLossError },
    { name: "CancelledError", error: new CancelledError("request cancelled upstream"), code: Code.CANCELLED, cls: CancelledError },
    // FAILED_PRECONDITION has several classes (ConfigError, CheckpointError): it comes back as the code's class, their base.
    { name: "ConfigError", error: new ConfigError("hidden_size missing"), code: Code.FAILED_PRECONDITION, cls: FailedPreconditionError },
    { name: "MoelaError(NOT_FOUND)", error: new MoelaError("no such request", Code.NOT_FOUND), code: Code.NOT_FOUND, cls: MoelaError },
  ];

  it.each(cases)("$name arrives as its code and message and maps back to its class", async ({ error, code, cls }) => {
    const client = await expertHostThrowing(error);
    try {
      const raw = await rawInfoError(client);
      expect(raw.code).toBe(code);
      expect(raw.details).toBe(error.message);

      const mapped = await unaryCall<InfoResponse>((md, o, cb) => client.info({}, md, o, cb)).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(mapped).toBeInstanceOf(cls);
      expect((mapped as MoelaError).code).toBe(code);
      expect((mapped as MoelaError).message).toBe(error.message);
    } finally {
      client.close();
    }
  });
});

describe("an unknown error thrown in a handler", () => {
  it("arrives as INTERNAL with a fixed message and no stack text, and the server logs it", async () => {
    const secret = new TypeError("cannot read properties of undefined (reading 'weights') at /srv/moela/secret.ts");
    const logLines: string[] = [];
    const client = await expertHostThrowing(secret, logLines);
    try {
      const raw = await rawInfoError(client);
      expect(raw.code).toBe(GrpcStatus.INTERNAL);
      expect(raw.details).toBe(INTERNAL_DETAILS);
      expect(raw.details).not.toMatch(/TypeError|secret|\bat /);
      expect(JSON.stringify(raw.metadata.getMap())).not.toMatch(/TypeError|secret\.ts/);

      const mapped = await unaryCall((md, o, cb) => client.info({}, md, o, cb)).catch((e: unknown) => e);
      expect(mapped).toBeInstanceOf(MoelaError);
      expect((mapped as MoelaError).code).toBe(Code.INTERNAL);

      const logged = logLines.join("");
      expect(logged).toContain("secret.ts");
      expect(logged).toContain("/moela.v1.ExpertHost/Info");
    } finally {
      client.close();
    }
  });

  it("a non-Error thrown value is also INTERNAL", async () => {
    const client = await expertHostThrowing("a string, not an Error");
    try {
      const raw = await rawInfoError(client);
      expect(raw.code).toBe(GrpcStatus.INTERNAL);
      expect(raw.details).toBe(INTERNAL_DETAILS);
    } finally {
      client.close();
    }
  });
});

/** A Decode server whose Stream sends token 42, then throws what `fail` makes of the request (Cancel and Status are not used). */
function decodeFailingAfterOneToken(fail: (request: StreamRequest) => Error) {
  return startServer((server) =>
    server.addService(DecodeService, {
      async *stream(request) {
        yield { tokens: [{ index: 0, tokenId: 42 }], finishReason: 0 } satisfies StreamResponse;
        throw fail(request);
      },
      async cancel() {
        return { found: false };
      },
      async status() {
        throw new UnimplementedError("not used");
      },
    }),
  );
}

describe("errors on streams", () => {
  it("a server stream that fails after sending delivers its messages, then the error's status", async () => {
    const { address } = await decodeFailingAfterOneToken((request) => new UnavailableError(`decode lost the KV of ${request.requestId}`));
    const client = connect(DecodeClient, address);
    try {
      const received: number[] = [];
      const error = await (async () => {
        for await (const message of serverStreamCall<StreamResponse>((md, o) => client.stream({ requestId: "req-1", startIndex: 0 }, md, o))) {
          for (const token of message.tokens) received.push(token.tokenId);
        }
      })().catch((e: unknown) => e);
      expect(received).toEqual([42]);
      expect(error).toBeInstanceOf(UnavailableError);
      expect((error as Error).message).toBe("decode lost the KV of req-1");
    } finally {
      client.close();
    }
  });

  it("a failure reason thrown with the error arrives as trailing metadata and back on the error", async () => {
    const { address } = await decodeFailingAfterOneToken(
      (request) => new UnavailableError(`decode step failed: ${request.requestId}`, { reason: FailureReason.DECODE_STEP_FAILED }),
    );
    const client = connect(DecodeClient, address);
    try {
      const raw = await new Promise<ServiceError>((resolve) => {
        const call = client.stream({ requestId: "req-1", startIndex: 0 });
        call.on("data", () => {});
        call.on("error", resolve);
      });
      expect(raw.code).toBe(GrpcStatus.UNAVAILABLE);
      expect(raw.metadata.get(FAILURE_REASON_METADATA)).toEqual([FailureReason.DECODE_STEP_FAILED]);

      const error = await (async () => {
        for await (const _ of serverStreamCall<StreamResponse>((md, o) => client.stream({ requestId: "req-2", startIndex: 0 }, md, o))) void _;
      })().catch((e: unknown) => e);
      expect(error).toBeInstanceOf(UnavailableError);
      expect((error as MoelaError).reason).toBe(FailureReason.DECODE_STEP_FAILED);
      expect((error as Error).message).toBe("decode step failed: req-2");
    } finally {
      client.close();
    }
  });

  it("an error without a reason sends no failure-reason metadata, and an unknown value is dropped", () => {
    expect(toStatus(new UnavailableError("gone")).metadata.get(FAILURE_REASON_METADATA)).toEqual([]);
    const md = new Metadata();
    md.set(FAILURE_REASON_METADATA, "something else");
    expect(fromStatus({ code: GrpcStatus.UNAVAILABLE, details: "gone", metadata: md }).reason).toBeUndefined();
  });

  it("a client stream rejected mid-transfer (corrupt KV) arrives as DataLossError", async () => {
    const seen: string[] = [];
    const { address } = await startServer((server) =>
      server.addService(KvTransferService, {
        async push(requests) {
          for await (const request of requests) {
            seen.push(request.chunk?.$case ?? "none");
            if (request.chunk?.$case === "layer") throw new DataLossError(`layer ${request.chunk.value.layer}: sha256 mismatch`);
          }
          throw new InvalidArgumentError("stream ended without KvEnd");
        },
      }),
    );
    const client = connect(KvTransferClient, address);
    const chunks: PushRequest[] = [
      { chunk: { $case: "begin", value: beginOf("t-1") } },
      {
        chunk: {
          $case: "layer",
          value: {
            layer: 0,
            tokenStart: 0,
            tokenCount: 1,
            latent: Tensor.fromPartial({ dtype: DType.DTYPE_F32, shape: [1, 4], data: Buffer.alloc(16) }),
            sha256: Buffer.alloc(32),
          },
        },
      },
    ];
    try {
      const error = await clientStreamCall((md, o, cb) => client.push(md, o, cb), chunks).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(DataLossError);
      expect((error as Error).message).toBe("layer 0: sha256 mismatch");
      expect(seen).toEqual(["begin", "layer"]);
    } finally {
      client.close();
    }
  });
});

describe("onCallEnd", () => {
  it("reports each finished call's method and status code", async () => {
    const events: { method: string; code: number }[] = [];
    const { address } = await startServer(
      (server) =>
        server.addService(ExpertHostService, {
          async dispatch() {
            throw new ResourceExhaustedError("busy");
          },
          async *dispatchStream() {
            throw new MoelaError("not used", Code.UNIMPLEMENTED);
          },
          async *attachSharedMemory() {
            throw new MoelaError("not used", Code.UNIMPLEMENTED);
          },
          async info() {
            return { shardIndex: 0, shardCount: 1, layers: [], modelId: "tiny", precision: 1, hiddenSize: 8, sharedExpert: false };
          },
        }),
      { onCallEnd: (e) => events.push({ method: e.method, code: e.code }) },
    );
    const client = connect(ExpertHostClient, address);
    try {
      await unaryCall((md, o, cb) => client.info({}, md, o, cb));
      await unaryCall((md, o, cb) =>
        client.dispatch({ layer: 1, expertIds: [], tokenExpertCounts: [], weights: [], requestId: "r", sharedExpertRows: [] }, md, o, cb),
      ).catch(() => {});
      expect(events).toEqual([
        { method: "/moela.v1.ExpertHost/Info", code: Code.OK },
        { method: "/moela.v1.ExpertHost/Dispatch", code: Code.RESOURCE_EXHAUSTED },
      ]);
    } finally {
      client.close();
    }
  });
});

describe("toStatus and fromStatus", () => {
  it("a MoelaError carrying OK is not sent as a success", () => {
    expect(toStatus(new MoelaError("bug", Code.OK)).code).toBe(GrpcStatus.INTERNAL);
  });
  it("RESOURCE_EXHAUSTED tells the client when to come back (retry-after: 1 trailing metadata); other codes do not", () => {
    expect(toStatus(new ResourceExhaustedError("queue full")).metadata.get("retry-after")).toEqual(["1"]);
    expect(toStatus(new MoelaError("gone", Code.UNAVAILABLE)).metadata.get("retry-after")).toEqual([]);
  });
  it("a failed call with a non-error code maps to UNKNOWN", () => {
    expect(fromStatus({ code: GrpcStatus.OK, details: "odd" }).code).toBe(Code.UNKNOWN);
    expect(fromStatus({ code: 99 as GrpcStatus, details: "odd" }).code).toBe(Code.UNKNOWN);
  });
});

function beginOf(transferId: string): KvBegin {
  return KvBegin.fromPartial({ transferId, requestId: "req-1", modelId: "tiny", promptTokenIds: [1], numLayers: 1, numTokens: 1 });
}
