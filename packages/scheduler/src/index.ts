/**
 * @moela/scheduler: the prefill queue's names, job schema and options (queues.ts), the decode-choice
 * policy (policy.ts) over polled Decode.Status reports (decode-pool.ts), and admission basics.
 */
export * from "./queues.js";
export * from "./policy.js";
export * from "./decode-pool.js";
export * from "./admission.js";
