/**
 * Ports: what the engine needs from the outside, as interfaces. The engine never learns about the
 * network; moe-dispatch and kv-transfer implement these for the disaggregated services, and the
 * engine's own in-process implementations serve `moela generate` and the tests.
 */

/** Computes the routed experts of one MoE layer for a batch of tokens. */
export interface ExpertExecutor {
  /**
   * out[t, :] = sum_j weights[t, j] * expert_{ids[t, j]}(x[t, :]) for t < T.
   * layer: decoder layer index (the MTP block is layer num_hidden_layers).
   * x: [T, hidden] the post-attention-normalised activations; ids/weights: [T, num_experts_per_tok];
   * out: [T, hidden], overwritten.
   */
  runRouted(layer: number, x: Float32Array, T: number, ids: Int32Array, weights: Float32Array, out: Float32Array, sharedOut?: Float32Array): Promise<void>;
  /**
   * true when runRouted also computes the layer's shared expert into `sharedOut` ([T, hidden], overwritten) when
   * given one, with the same bits the model's own would have: DeepSeek-V3's decoding treats the shared expert as
   * a routed one that every token selects, so the attention side only attends while the expert-hosts compute.
   */
  readonly computesSharedExpert?: boolean;
  /**
   * true when runRouted waits on other processes (expert-hosts over the network): the model then computes the
   * shared expert while the call is in flight. Absent or false: it computes here, and running the shared expert
   * at the same time would only make the two share this machine's cores, so the model runs them one after the other.
   */
  readonly waitsOnOtherProcesses?: boolean;
  /**
   * true while the processes runRouted waits on compute on this machine's cores (expert-hosts reached through
   * shared memory): the model then leaves them its kernel threads while a call of LEAVE_CORES_MIN_ROWS rows or more
   * is in flight (KernelBackend.callerOnly), so a thread of its own never holds a core a host is waiting for.
   */
  readonly sharesCores?: boolean;
}

/** Receives latent KV rows as soon as a layer of a forward call has written them (prefill streaming). */
export interface KvSink {
  /**
   * rows: [n, latentDim] = [c_kv | k_pe] for positions [start, start + n) of sequence `seq` (index in the batch).
   * The array is reused after the call returns: copy what you keep.
   */
  onLayer(layer: number, seq: number, start: number, n: number, rows: Float32Array): void | Promise<void>;
}
