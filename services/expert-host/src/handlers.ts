/**
 * ExpertHost gRPC handlers: wire <-> library glue around the shard's ExpertHostCore.
 *
 * Every Dispatch request is validated before any compute: the tensor (present, a dispatch dtype,
 * [tokens, hidden], tile size, exact byte lengths: fromDispatchRequest) and then everything that
 * needs the model (an MoE layer, this host's dispatch codec, counts that sum to the ids, only
 * experts this shard holds, finite weights: ExpertHostCore.validate). A bad request is answered
 * INVALID_ARGUMENT with a message naming the field; the server keeps serving.
 *
 * DispatchStream serves the same requests over one long-lived stream per caller: each goes to the core
 * when it arrives (requests that wait together are computed as one group: ExpertHostCore.dispatchAsync)
 * and is answered in arrival order. A failed request is answered with its status inside the stream,
 * which stays open; the stream itself ends only when the caller closes it or the server drains.
 *
 * AttachSharedMemory lets a caller on this machine send DispatchStream's messages through shared memory
 * (ShmDispatchServer); each is answered by the same code as on the stream.
 */
import { once } from "node:events";
import { Code, InvalidArgumentError, type Logger } from "@moela/core";
import type { MetricsOf } from "@moela/metrics";
import {
  encodedSize,
  fromDispatchRequest,
  toInfoResponse,
  toTensor,
  type EncodedActivations,
  type ExpertDispatchRequest,
  type ExpertHostCore,
  ShmDispatchServer,
} from "@moela/moe-dispatch";
import type { DispatchRequest, DispatchResponse, DispatchStreamRequest, DispatchStreamResponse, ExpertHostService } from "@moela/proto-gen";
import { toStatus, type AsyncServiceImplementation } from "@moela/rpc";

export interface HandlerDeps {
  readonly core: ExpertHostCore;
  readonly logger: Logger;
  readonly metrics: MetricsOf<"expert-host">;
}

export function expertHostHandlers({ core, logger, metrics: m }: HandlerDeps): AsyncServiceImplementation<typeof ExpertHostService> {
  const dispatchCodec = core.profile.dispatch;
  const combineCodec = core.profile.combine;

  async function serve(msg: DispatchRequest, signal: AbortSignal): Promise<DispatchResponse> {
    const arrived = performance.now();
    const rejected = (err: unknown): unknown => {
      if (err instanceof InvalidArgumentError) logger.warn({ requestId: msg.requestId, layer: msg.layer, reason: err.message }, "dispatch rejected");
      return err;
    };
    let req: ExpertDispatchRequest;
    try {
      req = fromDispatchRequest(msg);
    } catch (err) {
      throw rejected(err);
    }
    signal.throwIfAborted();
    const layer = String(req.layer);
    const started = performance.now();
    let out: EncodedActivations;
    try {
      // dispatchAsync validates the request (once) before any compute.
      out = await core.dispatchAsync(req);
    } catch (err) {
      throw rejected(err);
    }
    const seconds = (performance.now() - started) / 1000;
    m.expertHostReceivedBytes.inc({ codec: dispatchCodec }, encodedSize(req.activations));
    m.expertHostCompute.observe(seconds);
    m.expertHostBatchTokens.observe(req.rows);
    m.expertHostLayerTokens.inc({ layer }, req.expertIds.length);
    if (m.expertHostExpertTokens) {
      const perExpert = new Map<number, number>();
      for (let i = 0; i < req.expertIds.length; i++) perExpert.set(req.expertIds[i]!, (perExpert.get(req.expertIds[i]!) ?? 0) + 1);
      for (const [expert, n] of perExpert) m.expertHostExpertTokens.inc({ layer, expert: String(expert) }, n);
    }
    m.expertHostSentBytes.inc({ codec: combineCodec }, encodedSize(out));
    logger.debug({ requestId: req.requestId, layer: req.layer, tokens: req.rows, pairs: req.expertIds.length, ms: seconds * 1000 }, "dispatch");
    const reply = { output: toTensor(out) };
    m.expertHostDispatch.observe((performance.now() - arrived) / 1000);
    return reply;
  }

  /** One DispatchStream request's answer (the gRPC stream's and shared memory's). */
  async function answerStreamed(msg: DispatchStreamRequest, signal: AbortSignal): Promise<DispatchStreamResponse> {
    try {
      if (msg.request === undefined) throw new InvalidArgumentError("request is missing");
      return { callId: msg.callId, response: await serve(msg.request, signal), errorCode: 0, errorMessage: "" };
    } catch (err) {
      // The stream's own end (drain, cancel) ends the whole stream; anything else answers this call only.
      if (signal.aborted) throw signal.reason;
      const status = toStatus(err);
      if (status.code === Code.INTERNAL) logger.error({ err, requestId: msg.request?.requestId }, "dispatch failed");
      return { callId: msg.callId, errorCode: status.code, errorMessage: status.details };
    }
  }

  const shm = sharedMemoryServer(answerStreamed, logger, m);

  return {
    async dispatch(msg, ctx) {
      return await serve(msg, ctx.signal);
    },
    async *dispatchStream(requests, ctx) {
      // Every request goes to the core as soon as it arrives (so the core can group it with others that wait),
      // and the answers are sent in arrival order as they complete.
      const answers: Promise<DispatchStreamResponse>[] = [];
      let ended = false;
      let readFailure: unknown;
      let wake: (() => void) | undefined;
      const answer = (msg: DispatchStreamRequest): Promise<DispatchStreamResponse> => answerStreamed(msg, ctx.signal);
      const reading = (async () => {
        try {
          for await (const msg of requests) {
            const a = answer(msg);
            a.catch(() => {}); // awaited below in order; an abort is reported by the stream
            answers.push(a);
            wake?.();
          }
        } catch (err) {
          readFailure = err;
        } finally {
          ended = true;
          wake?.();
        }
      })();
      for (;;) {
        const next = answers.shift();
        if (next !== undefined) {
          yield await next;
          continue;
        }
        if (ended) break;
        await new Promise<void>((resolve) => (wake = resolve));
        wake = undefined;
      }
      await reading;
      if (readFailure !== undefined) throw readFailure;
    },
    async *attachSharedMemory(req, ctx) {
      const attached = shm.attach(req, ctx.signal);
      logger.info({ peer: ctx.peer }, "a caller attached shared memory");
      try {
        yield { bellPath: attached.bellPath };
        // Open as long as the channel lives: the caller's cancel or this server's drain ends it.
        if (!ctx.signal.aborted) await once(ctx.signal, "abort");
      } finally {
        attached.detach();
      }
    },
    async info() {
      return toInfoResponse(core.info());
    },
  };
}

/** Dispatches through shared memory, answered by the stream's own code; counted, and timed from publication to reading. */
function sharedMemoryServer(
  answer: (msg: DispatchStreamRequest, signal: AbortSignal) => Promise<DispatchStreamResponse>,
  logger: Logger,
  m: MetricsOf<"expert-host">,
): ShmDispatchServer {
  return new ShmDispatchServer({
    serve: (msg, signal) => {
      m.expertHostSharedMemoryDispatches.inc();
      return answer(msg, signal);
    },
    logger,
    onRequestWait: (seconds) => m.expertHostSharedMemoryRequestWait.observe(seconds),
  });
}
