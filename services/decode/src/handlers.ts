/** Decode's gRPC handlers: proto <-> the batcher, the engine's cache and the KV inbox. */
import { checkPeerId, InvalidArgumentError, MAX_REASON_CHARS, type Logger } from "@moela/core";
import type { EmittedToken, Engine, FinishReason as EngineFinishReason } from "@moela/engine";
import type { KvInbox } from "@moela/kv-transfer";
import { toWirePrecision, type PrecisionName } from "@moela/moe-dispatch";
import {
  FinishReason,
  type DecodeCancelRequest,
  type DecodeCancelResponse,
  type DecodeService,
  type DecodeStatusResponse,
  type StreamRequest,
  type StreamResponse,
  type TokenLogprobs,
} from "@moela/proto-gen";
import type { AsyncServiceImplementation, CallContext } from "@moela/rpc";
import type { Batcher, StreamMessage } from "./batcher.js";

export interface DecodeHandlerDeps {
  readonly batcher: Batcher;
  readonly engine: Engine;
  readonly inbox: KvInbox;
  readonly modelId: string;
  readonly precision: PrecisionName;
  readonly logger: Logger;
}

function wireLogprobs(t: EmittedToken): TokenLogprobs {
  return { logprob: t.logprob, top: (t.top ?? []).map(([tokenId, logprob]) => ({ tokenId, logprob })) };
}

function wireFinish(reason: EngineFinishReason): FinishReason {
  return reason === "stop" ? FinishReason.FINISH_REASON_STOP : FinishReason.FINISH_REASON_LENGTH;
}

export function toStreamResponse(m: StreamMessage): StreamResponse {
  return {
    tokens: m.tokens.map(({ index, token }) => ({ index, tokenId: token.id, ...(m.logprobs ? { logprobs: wireLogprobs(token) } : {}) })),
    finishReason: m.finish === null ? FinishReason.FINISH_REASON_UNSPECIFIED : wireFinish(m.finish.reason),
    ...(m.finish === null ? {} : { usage: { ...m.finish.usage } }),
  };
}

export function decodeHandlers(deps: DecodeHandlerDeps): AsyncServiceImplementation<DecodeService> {
  const { batcher, engine, inbox, logger } = deps;
  return {
    async *stream(req: StreamRequest, ctx: CallContext): AsyncGenerator<StreamResponse> {
      checkPeerId("StreamRequest.request_id", req.requestId);
      logger.debug({ requestId: req.requestId, startIndex: req.startIndex, peer: ctx.peer }, "stream opened");
      for await (const m of batcher.stream(req.requestId, req.startIndex, ctx.signal)) yield toStreamResponse(m);
    },
    async cancel(req: DecodeCancelRequest): Promise<DecodeCancelResponse> {
      // Bounded: a cancelled id is remembered (a tombstone) with its reason.
      checkPeerId("DecodeCancelRequest.request_id", req.requestId);
      if (req.reason.length > MAX_REASON_CHARS) {
        throw new InvalidArgumentError(`DecodeCancelRequest.reason has ${req.reason.length} characters, at most ${MAX_REASON_CHARS}`);
      }
      return { found: await batcher.cancel(req.requestId, req.reason) };
    },
    async status(): Promise<DecodeStatusResponse> {
      const cache = engine.cache;
      return {
        freeKvBlocks: cache.freeBlocks,
        totalKvBlocks: cache.numBlocks,
        blockSize: cache.blockSize,
        runningSequences: batcher.running,
        waitingSequences: batcher.waiting,
        pendingTransfers: inbox.pending,
        modelId: deps.modelId,
        precision: toWirePrecision(deps.precision),
        accepting: batcher.accepting,
      };
    },
  };
}
