/**
 * DispatchStream's message codec (a script, not a test): the hand-written encoder and decoder of
 * packages/moe-dispatch/src/transports/stream-codec.ts against the generated ones (ts-proto over
 * @bufbuild/protobuf), microseconds per message in one run, for the shapes decode and prefill send:
 * a batch-1 decode layer, a 16-row micro-batch and a 512-token prefill chunk, in each profile's codecs.
 *
 *   npx tsx scripts/bench/stream-codec.ts [--hidden 7168] [--rounds 5]
 */
import { Command } from "commander";
import { nsPerCallRounds } from "../lib/bench-report.js";
import { DispatchStreamRequest, DispatchStreamResponse } from "@moela/proto-gen";
import {
  decodeDispatchStreamRequest,
  decodeDispatchStreamResponse,
  encodeDispatchStreamRequest,
  encodeDispatchStreamResponse,
  getDispatchCodec,
  toDispatchRequest,
  toTensor,
  type DispatchCodecName,
} from "@moela/moe-dispatch";

const opts = new Command("bench-stream-codec")
  .option("--hidden <n>", "hidden size (DeepSeek-V3: 7168)", (v) => Number(v), 7168)
  .option("--rounds <n>", "timed rounds per case; the best is reported", (v) => Number(v), 5)
  .parse()
  .opts<{ hidden: number; rounds: number }>();

/** Best-of-rounds microseconds per call of `fn`. */
const time = (fn: () => unknown): number => Math.min(...nsPerCallRounds(fn, opts.rounds)) / 1000;

const H = opts.hidden;
const rowsList = [1, 16, 512];
const profiles: Array<[string, DispatchCodecName, DispatchCodecName]> = [
  ["exact", "f32", "f32"],
  ["paper", "fp8-tile", "bf16"],
];
console.log(`DispatchStream messages, hidden ${H}: microseconds per message, generated code / hand-written (ratio = generated / hand)`);
console.log(["profile", "rows", "bytes out", "req encode", "req decode", "res encode", "res decode"].join("\t"));
for (const [name, dispatch, combine] of profiles) {
  for (const rows of rowsList) {
    const x = Float32Array.from({ length: rows * H }, (_, i) => Math.sin(i * 0.01));
    const k = 8;
    const req = {
      layer: 3,
      rows,
      cols: H,
      activations: getDispatchCodec(dispatch).encode(x, rows, H),
      tokenExpertCounts: Array(rows).fill(k),
      expertIds: Array.from({ length: rows * k }, (_, i) => (i * 37) % 256),
      weights: Array.from({ length: rows * k }, (_, i) => 1 / (1 + i)),
      requestId: "batch-4f2a",
    };
    const reqMsg: DispatchStreamRequest = { callId: 12345, request: toDispatchRequest(req) };
    const resMsg: DispatchStreamResponse = {
      callId: 12345,
      response: { output: toTensor(getDispatchCodec(combine).encode(x, rows, H)) },
      errorCode: 0,
      errorMessage: "",
    };
    const reqBytes = encodeDispatchStreamRequest(reqMsg);
    const resBytes = encodeDispatchStreamResponse(resMsg);
    const cell = (gen: number, hand: number) => `${gen.toFixed(1)} / ${hand.toFixed(1)} (${(gen / hand).toFixed(2)}x)`;
    console.log(
      [
        name,
        rows,
        reqBytes.length,
        cell(
          time(() => DispatchStreamRequest.encode(reqMsg).finish()),
          time(() => encodeDispatchStreamRequest(reqMsg)),
        ),
        cell(
          time(() => DispatchStreamRequest.decode(reqBytes)),
          time(() => decodeDispatchStreamRequest(reqBytes)),
        ),
        cell(
          time(() => DispatchStreamResponse.encode(resMsg).finish()),
          time(() => encodeDispatchStreamResponse(resMsg)),
        ),
        cell(
          time(() => DispatchStreamResponse.decode(resBytes)),
          time(() => decodeDispatchStreamResponse(resBytes)),
        ),
      ].join("\t"),
    );
  }
}
