/**
 * The internal-security settings in a service's config.ts, once for every service: their zod fields (raw
 * strings, checked and the files read by parseInternalSecurity, whose errors never repeat a secret), the
 * config type with them replaced by the parsed InternalSecurity, and the step that does the replacing.
 *
 *   const schema = z.object({ model: ..., ...INTERNAL_SECURITY_SCHEMA });
 *   export type DecodeConfig = Readonly<WithInternalSecurity<z.output<typeof schema>>>;
 *   return Object.freeze(withInternalSecurity(validated, "MOELA_DECODE_", "decode"));
 */
import { z } from "zod";
import { InvalidArgumentError, type MessageError } from "@moela/core";
import { internalSecurityNames, parseInternalSecurity, type InternalSecurity, type InternalSecurityFlags } from "./security.js";

/** The zod fields of the settings (internalSecuritySettings), to spread into a service's schema. */
export const INTERNAL_SECURITY_SCHEMA = {
  internalSecret: z.string().optional(),
  internalSecretFile: z.string().optional(),
  tlsCert: z.string().optional(),
  tlsKey: z.string().optional(),
  tlsCa: z.string().optional(),
  tlsClientAuth: z.string().optional(),
} as const;

export type InternalSecurityKey = keyof InternalSecurityFlags;

/** Validated settings with the security ones replaced by `security`: the secret callers present, TLS/mTLS. */
export type WithInternalSecurity<T> = Omit<T, InternalSecurityKey> & { security: InternalSecurity };

/** Parses the security settings among `settings` (errors start "<service>: " and name the flag and its env twin `${envPrefix}...`). */
export function internalSecurityOf(
  settings: InternalSecurityFlags,
  envPrefix: string,
  service: string,
  error: MessageError = InvalidArgumentError,
): InternalSecurity {
  return parseInternalSecurity(settings, internalSecurityNames(envPrefix), service, error);
}

/** Splits the security settings off `settings` and parses them (internalSecurityOf); the others are returned as they are. */
export function withInternalSecurity<T extends InternalSecurityFlags>(
  settings: T,
  envPrefix: string,
  service: string,
  error: MessageError = InvalidArgumentError,
): WithInternalSecurity<T> {
  const { internalSecret: _s, internalSecretFile: _f, tlsCert: _c, tlsKey: _k, tlsCa: _a, tlsClientAuth: _m, ...rest } = settings;
  return { ...rest, security: internalSecurityOf(settings, envPrefix, service, error) };
}
