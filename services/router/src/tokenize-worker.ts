/**
 * A router tokenizer thread: loads the checkpoint's tokenizer once, then runs the EncodeOps the pool posts
 * (tokenize.ts), one at a time, with the same code the router's own thread uses (runEncodeOp). Token ids
 * come back as a transferred Uint32Array; a failure as its gRPC code and message.
 */
import { parentPort, workerData } from "node:worker_threads";
import { Code, errorMessage, MoelaError } from "@moela/core";
import { runEncodeOp, type EncodeOp } from "@moela/openai-api";
import { Tokenizer } from "@moela/tokenizer";

export interface TokenizeWorkerInit {
  /** This module's URL (the boot file imports it). */
  readonly moduleUrl: string;
  /** The checkpoint folder holding tokenizer.json and tokenizer_config.json. */
  readonly model: string;
}

export interface TokenizeRequest {
  readonly id: number;
  readonly op: EncodeOp;
}

export type TokenizeReply =
  | { readonly ready: true }
  | { readonly id: number; readonly ids: Uint32Array }
  | { readonly id: number; readonly text: string }
  | { readonly id: number; readonly error: { readonly code: number; readonly message: string } };

export function runTokenizeWorker(): void {
  const init = workerData as TokenizeWorkerInit;
  const port = parentPort!;
  const tokenizer = Tokenizer.fromDir(init.model);
  port.on("message", (m: TokenizeRequest) => {
    let reply: TokenizeReply;
    try {
      const r = runEncodeOp(tokenizer, m.op);
      if (typeof r === "string") reply = { id: m.id, text: r };
      else {
        const ids = Uint32Array.from(r);
        port.postMessage({ id: m.id, ids } satisfies TokenizeReply, [ids.buffer]);
        return;
      }
    } catch (err) {
      const code = err instanceof MoelaError ? err.code : Code.INTERNAL;
      reply = { id: m.id, error: { code, message: errorMessage(err) } };
    }
    port.postMessage(reply);
  });
  port.postMessage({ ready: true } satisfies TokenizeReply);
}
