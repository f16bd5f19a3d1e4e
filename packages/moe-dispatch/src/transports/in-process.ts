/**
 * Expert-hosts inside this process: the same ExpertHostCore the expert-host service runs, called
 * directly instead of over gRPC. `moela generate --expert-hosts H --precision P` runs every routed
 * expert through HostedExpertExecutor over H of these, so it rounds and sums exactly as a cluster
 * with H expert-hosts does.
 */
import { CancelledError, InvalidArgumentError } from "@moela/core";
import { loadExpertShard, readModelConfig, type DeepseekModel, type MlpWeights } from "@moela/engine";
import type { EncodedActivations } from "../codec/index.js";
import { HostedExpertExecutor, type DispatchMetrics, type ExpertHostTransport, type SharedExpertPlacement } from "../dispatcher.js";
import { ExpertHostCore, checkpointModelId, placementFor, type ExpertDispatchRequest, type HostInfo } from "../host.js";
import type { ExpertPlacement } from "../placement.js";
import { resolveProfile, type PrecisionProfile, type ProfileLike } from "../profile.js";

export class InProcessExpertHost implements ExpertHostTransport {
  readonly core: ExpertHostCore;
  readonly inProcess = true;
  private readonly offEventLoop: boolean;

  /** offEventLoop: compute large dispatches on a kernel thread (a service's in-process experts). */
  constructor(core: ExpertHostCore, offEventLoop = false) {
    this.core = core;
    this.offEventLoop = offEventLoop;
  }

  async dispatch(req: ExpertDispatchRequest, signal?: AbortSignal): Promise<EncodedActivations> {
    if (signal?.aborted) throw signal.reason ?? new CancelledError();
    return this.offEventLoop ? this.core.dispatchAsync(req) : this.core.dispatch(req);
  }

  async info(): Promise<HostInfo> {
    return this.core.info();
  }
}

/** `experts` with only the ids `keep` says left in place (the rest null). Shares the weights. */
function maskExperts(experts: ReadonlyArray<MlpWeights | null>, keep: (e: number) => boolean): Array<MlpWeights | null> {
  return experts.map((w, e) => (keep(e) ? w : null));
}

export interface InProcessExperts {
  readonly executor: HostedExpertExecutor;
  readonly hosts: readonly InProcessExpertHost[];
  readonly placement: ExpertPlacement;
  readonly profile: PrecisionProfile;
}

export interface InProcessExpertsOptions {
  readonly metrics?: DispatchMetrics;
  /** Compute large dispatches off the event loop (services; see ModelOptions.computeOffEventLoop). */
  readonly computeOffEventLoop?: boolean;
  /** Where the shared expert runs (HostedExpertExecutorOptions.sharedExpert; default local). */
  readonly sharedExpert?: SharedExpertPlacement;
}

/**
 * H in-process expert-hosts and the dispatcher over them.
 * - From a loaded model: the hosts share the model's expert weights (no second copy); the model
 *   must have been loaded with every routed expert.
 * - From a checkpoint folder: each host loads only its shard (loadExpertShard), as the service does.
 * Install the executor with `model.setExpertExecutor(result.executor)`.
 */
export function createInProcessExperts(
  source: string | DeepseekModel,
  hosts: number,
  profile: ProfileLike,
  options: InProcessExpertsOptions = {},
): InProcessExperts {
  const prof = resolveProfile(profile);
  const config = typeof source === "string" ? readModelConfig(source) : source.config;
  const placement = placementFor(config, hosts);
  const modelId = typeof source === "string" ? checkpointModelId(source) : "";
  const moeLayers = typeof source === "string" ? null : source.moeLayers();
  const cores = Array.from({ length: hosts }, (_, h) => {
    const owned = (e: number): boolean => placement.hostOfExpert[e] === h;
    let expertsByLayer: ReadonlyMap<number, ReadonlyArray<MlpWeights | null>>;
    let sharedByLayer: ReadonlyMap<number, MlpWeights>;
    if (moeLayers === null) {
      ({ expertsByLayer, sharedByLayer } = loadExpertShard(source as string, config, (_layer, e) => owned(e), undefined, options.sharedExpert === "hosts"));
    } else {
      const m = new Map<number, Array<MlpWeights | null>>();
      const shared = new Map<number, MlpWeights>();
      for (const [layer, moe] of moeLayers) {
        moe.experts.forEach((w, e) => {
          if (owned(e) && w === null) {
            throw new InvalidArgumentError(`layer ${layer} expert ${e} was not loaded; load the model with every routed expert`);
          }
        });
        m.set(layer, maskExperts(moe.experts, owned));
        if (moe.shared !== null) shared.set(layer, moe.shared);
      }
      expertsByLayer = m;
      sharedByLayer = shared;
    }
    return new ExpertHostCore({ expertsByLayer, sharedByLayer, hidden: config.hiddenSize, profile: prof, shardIndex: h, shardCount: hosts, modelId });
  });
  const hostTransports = cores.map((c) => new InProcessExpertHost(c, options.computeOffEventLoop === true));
  const executor = new HostedExpertExecutor({
    placement,
    profile: prof,
    hosts: hostTransports,
    hidden: config.hiddenSize,
    ...(options.metrics ? { metrics: options.metrics } : {}),
    ...(options.sharedExpert ? { sharedExpert: options.sharedExpert } : {}),
  });
  return { executor, hosts: hostTransports, placement, profile: prof };
}
