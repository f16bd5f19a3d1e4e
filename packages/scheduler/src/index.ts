/**
 * @moela/scheduler: the prefill queue's names, job schema and options (queues.ts), the instance
 * registry in Redis (registry.ts), scheduling policies as filters, scorers and pickers (policy/), the
 * decode pool that applies them (decode-pool.ts), kept decisions (decisions.ts), and admission.
 */
export * from "./queues.js";
export * from "./policy/index.js";
export * from "./registry.js";
export * from "./decisions.js";
export * from "./decode-pool.js";
export * from "./admission.js";
export * from "./prefill-routing.js";
export * from "./expert-discovery.js";
