/**
 * grpc.health.v1 on both sides. Servers report per service name ("" = the whole server, plus
 * each moela service by its full name, e.g. "moela.v1.Decode"): NOT_SERVING until `serve`, then
 * SERVING, and NOT_SERVING again when draining. Kubernetes probes and peers read it; clients here
 * poll it with `waitForServing` or follow it with `watchHealth`.
 */
import {
  type CallOptions,
  type ChannelCredentials,
  type ChannelOptions,
  type Client,
  type ClientReadableStream,
  type ClientUnaryCall,
  credentials,
  makeGenericClientConstructor,
  Metadata,
  type ServiceDefinition,
  type ServiceError,
} from "@grpc/grpc-js";
import { CancelledError, errorMessage } from "@moela/core";
import { service as healthServiceDefinition } from "grpc-health-check";
import { deadlineExceeded } from "./deadlines.js";
import { asMoelaError } from "./errors.js";
import { channelCredentials, type InternalSecurity } from "./security.js";

/** What grpc.health.v1 reports; SERVICE_UNKNOWN only comes from Watch. */
export type HealthStatus = "UNKNOWN" | "SERVING" | "NOT_SERVING" | "SERVICE_UNKNOWN";

export const HEALTH_SERVICE_NAME = "grpc.health.v1.Health";

interface HealthCheckRequest {
  service: string;
}
interface HealthCheckResponse {
  status: HealthStatus;
}
/** The methods of the dynamically built health client (grpc-health-check ships no client). */
interface HealthClient extends Client {
  Check(
    request: HealthCheckRequest,
    metadata: Metadata,
    options: Partial<CallOptions>,
    callback: (err: ServiceError | null, response?: HealthCheckResponse) => void,
  ): ClientUnaryCall;
  Watch(request: HealthCheckRequest, metadata: Metadata, options: Partial<CallOptions>): ClientReadableStream<HealthCheckResponse>;
}

const HealthClientConstructor = makeGenericClientConstructor(healthServiceDefinition as unknown as ServiceDefinition, HEALTH_SERVICE_NAME) as unknown as new (
  address: string,
  creds: ChannelCredentials,
  options?: ChannelOptions,
) => HealthClient;

/** Health needs no secret, but a TLS server needs a TLS client (with a cert, under mTLS). */
function healthClient(address: string, security: InternalSecurity | undefined): HealthClient {
  return new HealthClientConstructor(address, security === undefined ? credentials.createInsecure() : channelCredentials(security));
}

export interface HealthQueryOptions {
  /** Service name to ask about; "" (the default) = the whole server. */
  readonly service?: string;
  /** The internal security the server runs with (its TLS settings; health needs no secret). Default: plaintext. */
  readonly security?: InternalSecurity;
}

function check(client: HealthClient, service: string, deadline: number, waitForReady: boolean): Promise<HealthStatus> {
  return new Promise((resolve, reject) => {
    // waitForReady: a server not up yet is waited for (until the deadline) instead of failing at once.
    client.Check({ service }, new Metadata({ waitForReady }), { deadline }, (err, response) => {
      if (err !== null) reject(asMoelaError(err));
      else resolve(response?.status ?? "UNKNOWN");
    });
  });
}

/**
 * One health Check of `address` (host:port). Rejects with the call's error as a MoelaError
 * (UNAVAILABLE when nothing answers, NOT_FOUND for a service name the server does not know).
 */
export async function checkHealth(address: string, options: HealthQueryOptions & { timeoutMs?: number } = {}): Promise<HealthStatus> {
  const client = healthClient(address, options.security);
  try {
    return await check(client, options.service ?? "", Date.now() + (options.timeoutMs ?? 5_000), false);
  } finally {
    client.close();
  }
}

export interface WaitForServingOptions extends HealthQueryOptions {
  /** Give up after this long (default 30 s) with DEADLINE_EXCEEDED; Infinity leaves the ending to `signal`. */
  readonly timeoutMs?: number;
  /** Stop waiting when this aborts (rejects with its reason). */
  readonly signal?: AbortSignal;
  /** Pause between checks that answered NOT_SERVING (default 100 ms). */
  readonly intervalMs?: number;
}

/**
 * Resolve once `address` reports SERVING for the service. A server that is not up yet, or is up
 * but NOT_SERVING, is waited for; the last answer or error is named in the timeout error.
 */
export async function waitForServing(address: string, options: WaitForServingOptions = {}): Promise<void> {
  const service = options.service ?? "";
  const deadline = Date.now() + (options.timeoutMs ?? 30_000);
  const intervalMs = options.intervalMs ?? 100;
  const client = healthClient(address, options.security);
  // The last status the server answered with outranks the last error: the final attempt is often
  // cut short by the overall deadline and would only say so.
  let lastAnswer: HealthStatus | undefined;
  let lastError = "no answer";
  try {
    for (;;) {
      if (options.signal?.aborted) throw options.signal.reason;
      const left = deadline - Date.now();
      if (left <= 0) {
        const last = lastAnswer === undefined ? `last error: ${lastError}` : `last answer: ${lastAnswer}`;
        throw deadlineExceeded(`waiting for ${address} to serve "${service}" (${last})`);
      }
      try {
        // Short attempts, so a signal or the overall deadline is noticed between them.
        const status = await check(client, service, Date.now() + Math.min(left, 1_000), true);
        if (status === "SERVING") return;
        lastAnswer = status;
      } catch (err) {
        lastError = errorMessage(err);
      }
      await sleep(Math.min(intervalMs, Math.max(0, deadline - Date.now())), options.signal);
    }
  } finally {
    client.close();
  }
}

/**
 * Follow a server's health with grpc.health.v1 Watch: yields the current status, then every
 * change, until the server ends the stream (the iterator then throws that status as a
 * MoelaError) or `signal` aborts (it ends quietly). Breaking out of the loop cancels the call.
 */
export async function* watchHealth(address: string, options: HealthQueryOptions & { signal?: AbortSignal } = {}): AsyncGenerator<HealthStatus> {
  const client = healthClient(address, options.security);
  const call = client.Watch({ service: options.service ?? "" }, new Metadata(), {});
  const cancel = (): void => call.cancel();
  options.signal?.addEventListener("abort", cancel, { once: true });
  try {
    for await (const response of call as AsyncIterable<HealthCheckResponse>) yield response.status;
  } catch (err) {
    if (options.signal?.aborted) return;
    throw asMoelaError(err);
  } finally {
    options.signal?.removeEventListener("abort", cancel);
    call.cancel();
    client.close();
  }
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason ?? new CancelledError());
      return;
    }
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(signal!.reason ?? new CancelledError());
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
