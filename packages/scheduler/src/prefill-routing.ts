/**
 * Routing prefill work to the instance that holds the longest cached prefix of the prompt.
 *
 * Keys (plain Redis, readable with redis-cli):
 *   <prefix>:prefix:<instanceId>      SET of the prefix keys (prefixBlockHashes in @moela/core) the prefill
 *                                     instance's cache holds; rewritten on change and every refresh,
 *                                     PEXPIRE ttl each time, so a dead instance's set goes with it.
 *   BullMQ queue "prefill.<instanceId>" (keys <prefix>:prefill.<instanceId>:*): jobs the router sent to
 *                                     that instance. Each prefill worker consumes its own queue and the
 *                                     shared "prefill" queue. (BullMQ refuses ':' in a queue name, and a
 *                                     name outside "prefill:" keeps these keys clear of the shared
 *                                     queue's job keys, whose ids callers choose.)
 *   <prefix>:prefill-queues           SET of instance ids that opened an own queue, so work left in the
 *                                     queue of an instance that died is found and moved to the shared
 *                                     queue (rescueOrphanedJobs).
 *
 * The router (PrefillRouter) gathers, per live prefill instance (registry role "prefill"), which of the
 * prompt's prefix keys it holds (one SMISMEMBER per instance, pipelined), runs the prefill policy
 * (default: healthy, same-precision; prefix-affinity x2 + load x1; max-score) and adds the job to
 * the chosen instance's queue. With no instance registered, no decision possible or Redis slow, the job
 * goes to the shared queue as before: routing is an optimisation, never a new way to fail.
 *
 * BullMQ emits a job's events on its own queue's stream, so the router listens to every instance queue
 * it may use and re-emits their events (forwardEventsTo) on the shared queue's QueueEvents, where the
 * router's job watcher listens.
 *
 * The modules: prefill-routing/publisher.ts (the prefill side: PrefixPublisher), instance-queues.ts (the
 * instances' own queues, made on first use, and moving a departed instance's work to the shared queue),
 * router.ts (PrefillRouter: the lookup, the policy, the choice).
 */
export { cachedPrefixTokens, PREFIX_AFFINITY, prefixAffinityOf, type PrefixAffinityAttribute } from "./policy/scorers/prefix-affinity/index.js";
export { FORWARDED_JOB_EVENTS, instancePrefillQueue, moveJobsToShared, prefillQueuesKey } from "./prefill-routing/instance-queues.js";
export { PrefixPublisher, prefixSetKey, type PrefixPublisherOptions } from "./prefill-routing/publisher.js";
export { DEFAULT_PREFILL_POLICY, PrefillRouter, type PrefillRouterOptions, type RoutedPrefill } from "./prefill-routing/router.js";
