/**
 * The cluster's internal gRPC security (a shared secret, TLS or mTLS) as each service's environment,
 * never its argv: MOELA_<ROLE>_INTERNAL_SECRET and friends.
 */
import { resolve } from "node:path";
import { InvalidArgumentError } from "@moela/core";
import type { Role } from "./topology.js";

export interface InternalSecurityOptions {
  /**
   * Internal gRPC security, passed to every service through its environment (never argv):
   * `internalSecret` (a value: MOELA_<ROLE>_INTERNAL_SECRET) or `internalSecretFile` (a file:
   * MOELA_<ROLE>_INTERNAL_SECRET_FILE), or `generateInternalSecret`: a random 256-bit secret written to
   * <stateDir>/internal-secret (mode 0600) for this cluster's life. Default: no secret.
   */
  readonly internalSecret?: string;
  readonly internalSecretFile?: string;
  readonly generateInternalSecret?: boolean;
  /** PEM files every service gets as --tls-cert/--tls-key/--tls-ca (env twins), and mTLS (--tls-client-auth). */
  readonly tls?: { readonly cert?: string; readonly key?: string; readonly ca?: string; readonly clientAuth?: boolean };
}

/** Env twin prefixes of the services (MOELA_<ROLE>_). */
const ENV_PREFIX: Record<Role, string> = { router: "MOELA_ROUTER_", prefill: "MOELA_PREFILL_", decode: "MOELA_DECODE_", "expert-host": "MOELA_EXPERT_HOST_" };

/**
 * The cluster's internal security settings as each service's environment: MOELA_<ROLE>_INTERNAL_SECRET
 * (or _INTERNAL_SECRET_FILE), _TLS_CERT, _TLS_KEY, _TLS_CA, _TLS_CLIENT_AUTH (not the router's: it serves no
 * internal gRPC). Files are passed as absolute paths. `generate`: no secret given and one is to be made.
 */
export function internalSecurityOf(o: InternalSecurityOptions): {
  readonly generate: boolean;
  readonly env: { internalSecret?: string; internalSecretFile?: string; tlsCert?: string; tlsKey?: string; tlsCa?: string; tlsClientAuth?: "true" };
  flags(): { internalSecret?: string; internalSecretFile?: string; tlsCert?: string; tlsKey?: string; tlsCa?: string; tlsClientAuth?: string };
  envFor(role: Role): Record<string, string>;
} {
  if (o.internalSecret !== undefined && o.internalSecretFile !== undefined) {
    throw new InvalidArgumentError("--internal-secret and --internal-secret-file exclude each other");
  }
  const generate = o.internalSecret === undefined && o.internalSecretFile === undefined && o.generateInternalSecret === true;
  const env: { internalSecret?: string; internalSecretFile?: string; tlsCert?: string; tlsKey?: string; tlsCa?: string; tlsClientAuth?: "true" } = {
    ...(o.internalSecret !== undefined ? { internalSecret: o.internalSecret } : {}),
    ...(o.internalSecretFile !== undefined ? { internalSecretFile: resolve(o.internalSecretFile) } : {}),
    ...(o.tls?.cert !== undefined ? { tlsCert: resolve(o.tls.cert) } : {}),
    ...(o.tls?.key !== undefined ? { tlsKey: resolve(o.tls.key) } : {}),
    ...(o.tls?.ca !== undefined ? { tlsCa: resolve(o.tls.ca) } : {}),
    ...(o.tls?.clientAuth === true ? { tlsClientAuth: "true" as const } : {}),
  };
  const names = {
    internalSecret: "INTERNAL_SECRET",
    internalSecretFile: "INTERNAL_SECRET_FILE",
    tlsCert: "TLS_CERT",
    tlsKey: "TLS_KEY",
    tlsCa: "TLS_CA",
    tlsClientAuth: "TLS_CLIENT_AUTH",
  } as const;
  return {
    generate,
    env,
    flags: () => ({ ...env }),
    envFor: (role) => {
      const out: Record<string, string> = {};
      for (const [key, value] of Object.entries(env) as [keyof typeof names, string | undefined][]) {
        if (value === undefined || (role === "router" && key === "tlsClientAuth")) continue;
        out[`${ENV_PREFIX[role]}${names[key]}`] = value;
      }
      return out;
    },
  };
}

export type InternalSecuritySettings = ReturnType<typeof internalSecurityOf>;

/**
 * The environment `role` is started with: the launcher's, with the cluster's internal security (which
 * replaces whatever secret the launcher's own environment holds for the role) and the router's API key.
 */
export function serviceEnv(role: Role, env: NodeJS.ProcessEnv, internal: InternalSecuritySettings, apiKey: string | undefined): NodeJS.ProcessEnv {
  const out: NodeJS.ProcessEnv = { ...env };
  if (internal.env.internalSecret !== undefined || internal.env.internalSecretFile !== undefined) {
    delete out[`${ENV_PREFIX[role]}INTERNAL_SECRET`];
    delete out[`${ENV_PREFIX[role]}INTERNAL_SECRET_FILE`];
  }
  return { ...out, ...internal.envFor(role), ...(role === "router" && apiKey !== undefined ? { MOELA_ROUTER_API_KEY: apiKey } : {}) };
}
