/**
 * Internal gRPC security, once for every service: a shared secret in call metadata, and TLS or mTLS
 * from PEM files. One InternalSecurity per process, read from its flags at start-up:
 *
 *   const security = loadInternalSecurity({ internalSecret, tlsCert, tlsKey, tlsCa, tlsClientAuth }, flagNames);
 *   const server = createServer({ logger, security });           // every call but health must carry the secret; TLS when a cert is given
 *   await serve(server, "0.0.0.0:7001");
 *   const decode = connect(DecodeClient, address, {}, security); // presents the secret (and its cert, for mTLS) on every call
 *   grpcKvConnector(address, clientChannel(security));           // transports take { credentials, options }
 *
 * The secret travels as `x-moela-internal-secret` call metadata. Servers compare it with every accepted
 * secret as SHA-256 digests through crypto.timingSafeEqual (timing says nothing about a secret), refuse a
 * missing or wrong one with UNAUTHENTICATED before the request is read or any handler runs, and strip it
 * from the metadata handlers see. Several secrets (comma-separated, "new,old") are all accepted and the
 * first is presented, so a secret rotates without downtime. grpc.health.v1 stays open: probes carry no
 * secret. Over plaintext the secret is readable on the wire: use TLS wherever the network is not private.
 *
 * TLS: with a cert and key a server serves TLS; clients use TLS when they have a CA (or a cert), verify
 * the server against the CA, and present their own cert/key (needed when servers require client certs:
 * `tlsClientAuth`, i.e. mTLS). Certificates must name the addresses peers dial (SANs: IPs or DNS names).
 */
import { createHash, timingSafeEqual } from "node:crypto";
import { readFileSync } from "node:fs";
import {
  type ChannelCredentials,
  type ClientOptions,
  credentials,
  type Interceptor,
  InterceptingCall,
  type Metadata,
  ServerCredentials,
  type ServerInterceptingCallInterface,
  ServerInterceptingCall,
  type ServerInterceptor,
  status as GrpcStatus,
} from "@grpc/grpc-js";
import { errorMessage, InvalidArgumentError, type MessageError } from "@moela/core";

/** Call metadata that carries the internal secret. */
export const INTERNAL_SECRET_METADATA_KEY = "x-moela-internal-secret";

/** Methods under these paths need no secret: health probes (Kubernetes, the launcher, peers) carry none. */
export const OPEN_METHOD_PREFIXES: readonly string[] = Object.freeze(["/grpc.health.v1.Health/"]);

/** A secret: at least 16 of these (metadata values are printable ASCII; commas separate secrets). */
const SECRET_CHARS = /^[\x21-\x2b\x2d-\x7e]+$/;
export const MIN_SECRET_CHARS = 16;
export const MAX_SECRET_CHARS = 1024;

/** The internal-security settings as a service's config reads them (raw strings; files not read yet). */
export interface InternalSecurityFlags {
  /** One secret, or several comma-separated (rotation: all accepted, the first presented). */
  readonly internalSecret?: string | undefined;
  /** A file holding the secret(s) (a mounted Kubernetes Secret); surrounding whitespace is ignored. */
  readonly internalSecretFile?: string | undefined;
  /** PEM certificate chain of this service: its server cert, and its client cert for mTLS. */
  readonly tlsCert?: string | undefined;
  /** PEM private key of tlsCert. */
  readonly tlsKey?: string | undefined;
  /** PEM CA bundle that peers' certificates are verified against. */
  readonly tlsCa?: string | undefined;
  /** Require client certificates signed by tlsCa (mTLS): "true" | "false" | "1" | "0", or a boolean. */
  readonly tlsClientAuth?: string | boolean | undefined;
}

/** How each setting is spelled, for error messages: e.g. "--tls-cert (env MOELA_DECODE_TLS_CERT)". */
export type InternalSecurityNames = Readonly<Record<keyof InternalSecurityFlags, string>>;

/** What a process uses on both sides of its internal calls. Frozen; the secrets never appear in toJSON. */
export interface InternalSecurity {
  /** Accepted secrets, the first one presented; empty: no secret required or sent. */
  readonly secrets: readonly string[];
  readonly tls?: {
    readonly cert?: Buffer;
    readonly key?: Buffer;
    readonly ca?: Buffer;
    /** Servers require client certificates (mTLS). */
    readonly clientAuth: boolean;
  };
}

/** No secret, no TLS: what a service runs with when none of the settings is given. */
export const NO_INTERNAL_SECURITY: InternalSecurity = Object.freeze({ secrets: Object.freeze([]) as readonly string[] });

/** The flag names of the settings, e.g. for a service whose env twins start MOELA_DECODE_. */
export const INTERNAL_SECURITY_FLAGS: Readonly<Record<keyof InternalSecurityFlags, string>> = Object.freeze({
  internalSecret: "--internal-secret",
  internalSecretFile: "--internal-secret-file",
  tlsCert: "--tls-cert",
  tlsKey: "--tls-key",
  tlsCa: "--tls-ca",
  tlsClientAuth: "--tls-client-auth",
});

/** --help lines of the settings. */
export const INTERNAL_SECURITY_HELP: Readonly<Record<keyof InternalSecurityFlags, string>> = Object.freeze({
  internalSecret:
    "shared secret(s) S[,S...] every internal gRPC call must carry (x-moela-internal-secret); 16+ printable characters; prefer the env twin or the file (default none)",
  internalSecretFile: "file holding the internal secret(s), e.g. a mounted Secret (default none)",
  tlsCert: "PEM certificate of this service: served over TLS, and presented as client cert for mTLS (default none: plaintext)",
  tlsKey: "PEM private key of --tls-cert",
  tlsCa: "PEM CA bundle peers are verified against; clients use TLS when it is set (default none)",
  tlsClientAuth: "require client certificates signed by --tls-ca (mTLS) (default off)",
});

/**
 * The settings table entries for a service whose env twins start with `envPrefix` ("MOELA_DECODE_"):
 * `--internal-secret` / MOELA_DECODE_INTERNAL_SECRET and so on; --tls-client-auth takes no value.
 */
export function internalSecuritySettings<P extends string>(envPrefix: P) {
  const entry = <K extends keyof InternalSecurityFlags, E extends string>(key: K, env: E, bool = false) =>
    ({ flag: INTERNAL_SECURITY_FLAGS[key], env: `${envPrefix}${env}` as `${P}${E}`, bool, help: INTERNAL_SECURITY_HELP[key] }) as const;
  return {
    internalSecret: entry("internalSecret", "INTERNAL_SECRET"),
    internalSecretFile: entry("internalSecretFile", "INTERNAL_SECRET_FILE"),
    tlsCert: entry("tlsCert", "TLS_CERT"),
    tlsKey: entry("tlsKey", "TLS_KEY"),
    tlsCa: entry("tlsCa", "TLS_CA"),
    tlsClientAuth: entry("tlsClientAuth", "TLS_CLIENT_AUTH", true),
  };
}

/** "--tls-cert (env MOELA_DECODE_TLS_CERT)" for each setting of a service with env prefix `envPrefix`. */
export function internalSecurityNames(envPrefix: string): InternalSecurityNames {
  const s = internalSecuritySettings(envPrefix);
  const name = (k: keyof InternalSecurityFlags): string => `${s[k].flag} (env ${s[k].env})`;
  return Object.freeze({
    internalSecret: name("internalSecret"),
    internalSecretFile: name("internalSecretFile"),
    tlsCert: name("tlsCert"),
    tlsKey: name("tlsKey"),
    tlsCa: name("tlsCa"),
    tlsClientAuth: name("tlsClientAuth"),
  });
}

/**
 * Check the settings and read the files. An empty value is the same as none (an env twin set to "" by a
 * template, e.g. docker-compose's `${MOELA_TLS_CERT:-}`). Throws `error` (default InvalidArgumentError) with a message
 * starting "<service>: " and naming the setting, never repeating a secret: a secret too short, too long or
 * with characters metadata cannot carry; both a secret and a secret file; a cert without its key or the
 * other way round; mTLS without a CA and a cert; an unreadable or non-PEM file.
 */
export function parseInternalSecurity(
  flags: InternalSecurityFlags,
  names: InternalSecurityNames,
  service = "rpc",
  error: MessageError = InvalidArgumentError,
): InternalSecurity {
  const fail = (message: string): never => {
    throw new error(`${service}: ${message}`);
  };
  const given = (v: string | undefined): v is string => v !== undefined && v !== "";
  if (given(flags.internalSecret) && given(flags.internalSecretFile)) {
    fail(`${names.internalSecret} and ${names.internalSecretFile} exclude each other`);
  }
  let secretText: string | undefined;
  let secretWhere = names.internalSecret;
  if (given(flags.internalSecretFile)) {
    secretWhere = `${names.internalSecretFile} ${flags.internalSecretFile}`;
    try {
      secretText = readFileSync(flags.internalSecretFile, "utf8");
    } catch (err) {
      fail(`${secretWhere}: cannot read it (${(err as NodeJS.ErrnoException).code ?? errorMessage(err)})`);
    }
  } else if (given(flags.internalSecret)) secretText = flags.internalSecret;
  const secrets = secretText === undefined ? [] : parseSecrets(secretText, (m) => fail(`${secretWhere}: ${m}`));

  const clientAuth = parseBool(flags.tlsClientAuth, (m) => fail(`${names.tlsClientAuth} ${m}`));
  if (given(flags.tlsCert) !== given(flags.tlsKey)) {
    fail(given(flags.tlsCert) ? `${names.tlsCert} needs ${names.tlsKey}` : `${names.tlsKey} needs ${names.tlsCert}`);
  }
  if (clientAuth && !given(flags.tlsCa)) fail(`${names.tlsClientAuth} needs ${names.tlsCa} (the CA client certificates are checked against)`);
  if (clientAuth && !given(flags.tlsCert)) fail(`${names.tlsClientAuth} needs ${names.tlsCert} and ${names.tlsKey} (this service's own certificate)`);
  const pem = (file: string | undefined, where: string, kind: RegExp): Buffer | undefined => {
    if (!given(file)) return undefined;
    let bytes: Buffer;
    try {
      bytes = readFileSync(file);
    } catch (err) {
      return fail(`${where} ${file}: cannot read it (${(err as NodeJS.ErrnoException).code ?? errorMessage(err)})`);
    }
    if (!kind.test(bytes.toString("latin1"))) fail(`${where} ${file}: not a PEM file of the expected kind`);
    return bytes;
  };
  const cert = pem(flags.tlsCert, names.tlsCert, /-----BEGIN CERTIFICATE-----/);
  const key = pem(flags.tlsKey, names.tlsKey, /-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----/);
  const ca = pem(flags.tlsCa, names.tlsCa, /-----BEGIN CERTIFICATE-----/);
  const tls =
    cert === undefined && ca === undefined
      ? undefined
      : Object.freeze({ ...(cert !== undefined ? { cert } : {}), ...(key !== undefined ? { key } : {}), ...(ca !== undefined ? { ca } : {}), clientAuth });
  return freezeSecurity(secrets, tls);
}

/** Build an InternalSecurity from values in hand (tests, the launcher): PEM bytes, not files. */
export function internalSecurity(o: {
  readonly secrets?: readonly string[];
  readonly tls?: { readonly cert?: Buffer; readonly key?: Buffer; readonly ca?: Buffer; readonly clientAuth?: boolean };
}): InternalSecurity {
  const secrets = (o.secrets ?? []).flatMap((s) =>
    parseSecrets(s, (m) => {
      throw new InvalidArgumentError(`internal secret: ${m}`);
    }),
  );
  const tls = o.tls === undefined ? undefined : Object.freeze({ ...o.tls, clientAuth: o.tls.clientAuth ?? false });
  return freezeSecurity(secrets, tls);
}

function freezeSecurity(secrets: readonly string[], tls: InternalSecurity["tls"]): InternalSecurity {
  const out: InternalSecurity = { secrets: Object.freeze([...new Set(secrets)]), ...(tls !== undefined ? { tls } : {}) };
  // Logged configs and JSON dumps never show a secret or a key.
  Object.defineProperty(out, "toJSON", {
    enumerable: false,
    value: () => ({ secrets: out.secrets.length, tls: out.tls === undefined ? "off" : out.tls.clientAuth ? "mtls" : "tls" }),
  });
  return Object.freeze(out);
}

function parseSecrets(text: string, fail: (message: string) => never): string[] {
  const parts = text
    .trim()
    .split(",")
    .map((s) => s.trim());
  parts.forEach((s, i) => {
    const which = parts.length > 1 ? `secret ${i + 1} of ${parts.length}` : "the secret";
    if (s.length === 0) fail(`${which} is empty`);
    if (s.length < MIN_SECRET_CHARS) fail(`${which} is shorter than ${MIN_SECRET_CHARS} characters (use e.g. \`openssl rand -hex 32\`)`);
    if (s.length > MAX_SECRET_CHARS) fail(`${which} is longer than ${MAX_SECRET_CHARS} characters`);
    if (!SECRET_CHARS.test(s)) fail(`${which} holds a character other than printable ASCII (no spaces or commas)`);
  });
  return parts;
}

function parseBool(v: string | boolean | undefined, fail: (message: string) => never): boolean {
  if (typeof v === "boolean") return v;
  if (v === undefined || v === "" || v === "false" || v === "0") return false;
  if (v === "true" || v === "1") return true;
  return fail(`must be true or false, got "${v}"`);
}

// ---- server side --------------------------------------------------------------------------------

/** The credentials a server binds with: TLS (mTLS with clientAuth) when it has a cert, else plaintext. */
export function serverCredentials(security: InternalSecurity = NO_INTERNAL_SECURITY): ServerCredentials {
  const tls = security.tls;
  if (tls?.cert === undefined || tls.key === undefined) return ServerCredentials.createInsecure();
  return ServerCredentials.createSsl(tls.ca ?? null, [{ cert_chain: tls.cert, private_key: tls.key }], tls.clientAuth);
}

/** Whether `presented` matches one of `secrets`: SHA-256 digests compared in constant time, every secret every time. */
export function secretMatches(presented: string, secrets: readonly string[]): boolean {
  const digest = createHash("sha256").update(presented, "utf8").digest();
  let ok = false;
  for (const s of secrets) {
    // No early exit: the time taken does not depend on which secret matched.
    if (timingSafeEqual(digest, createHash("sha256").update(s, "utf8").digest())) ok = true;
  }
  return ok;
}

/** Why a call was refused, for a log line or a metric (never the presented value). */
export interface RefusedCall {
  readonly method: string;
  readonly peer: string;
  readonly reason: "missing" | "mismatch";
}

/**
 * A grpc-js server interceptor that refuses every call without one of `secrets` in its metadata with
 * UNAUTHENTICATED, before the request is read or a handler runs; OPEN_METHOD_PREFIXES pass. The secret is
 * removed from the metadata the handler sees.
 */
export function secretServerInterceptor(secrets: readonly string[], onRefused?: (call: RefusedCall) => void): ServerInterceptor {
  if (secrets.length === 0) throw new InvalidArgumentError("secretServerInterceptor needs at least one secret");
  return (method, call: ServerInterceptingCallInterface) => {
    const open = OPEN_METHOD_PREFIXES.some((p) => method.path.startsWith(p));
    return new ServerInterceptingCall(call, {
      start: (next) => {
        next({
          onReceiveMetadata: (metadata: Metadata, nextMetadata: (m: Metadata) => void) => {
            const values = metadata.get(INTERNAL_SECRET_METADATA_KEY);
            metadata.remove(INTERNAL_SECRET_METADATA_KEY);
            if (open) {
              nextMetadata(metadata);
              return;
            }
            const presented = values.length === 1 && typeof values[0] === "string" ? values[0] : undefined;
            if (presented !== undefined && secretMatches(presented, secrets)) {
              nextMetadata(metadata);
              return;
            }
            onRefused?.({ method: method.path, peer: call.getPeer(), reason: values.length === 0 ? "missing" : "mismatch" });
            // The handler never starts: its listener is only reached through nextMetadata.
            call.sendStatus({
              code: GrpcStatus.UNAUTHENTICATED,
              details:
                values.length === 0
                  ? `${method.path} needs the internal secret (metadata ${INTERNAL_SECRET_METADATA_KEY})`
                  : `${method.path}: the internal secret does not match`,
            });
          },
        });
      },
    });
  };
}

// ---- client side --------------------------------------------------------------------------------

/** What a client of an internal service is built with: `new XClient(address, credentials, options)`. */
export interface ClientChannel {
  readonly credentials: ChannelCredentials;
  /** Holds the interceptor that presents the secret, when there is one. */
  readonly options: Partial<ClientOptions>;
}

/** A client interceptor that adds `secret` to every call's metadata. */
export function secretClientInterceptor(secret: string): Interceptor {
  return (options, nextCall) =>
    new InterceptingCall(nextCall(options), {
      start: (metadata, listener, next) => {
        metadata.set(INTERNAL_SECRET_METADATA_KEY, secret);
        next(metadata, listener);
      },
    });
}

/** TLS channel credentials (with this service's cert for mTLS) when it has a CA or a cert, else plaintext. */
export function channelCredentials(security: InternalSecurity = NO_INTERNAL_SECURITY): ChannelCredentials {
  const tls = security.tls;
  if (tls === undefined) return credentials.createInsecure();
  return credentials.createSsl(tls.ca ?? null, tls.key ?? null, tls.cert ?? null);
}

/** Credentials and options for a client of an internal service: TLS as configured, the first secret on every call. */
export function clientChannel(security: InternalSecurity = NO_INTERNAL_SECURITY): ClientChannel {
  const secret = security.secrets[0];
  return Object.freeze({
    credentials: channelCredentials(security),
    options: secret === undefined ? {} : { interceptors: [secretClientInterceptor(secret)] },
  });
}
