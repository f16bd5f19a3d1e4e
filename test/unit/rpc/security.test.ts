/**
 * The internal-security settings: what parseInternalSecurity accepts and refuses (naming the flag and
 * its env twin, never repeating a secret), the constant-time secret check, and that every service reads the
 * same settings from its own MOELA_<ROLE>_ env twins.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { ConfigError, InvalidArgumentError } from "@moela/core";
import { internalSecurityNames, internalSecuritySettings, parseInternalSecurity, secretMatches, type InternalSecurityFlags } from "@moela/rpc";
import { parseConfig as parseDecodeConfig } from "../../../services/decode/src/config.js";
import { parseConfig as parseExpertHostConfig } from "../../../services/expert-host/src/config.js";
import { parsePrefillConfig } from "../../../services/prefill/src/config.js";
import { parseRouterConfig } from "../../../services/router/src/config.js";

const MODEL = new URL("../../../models/tiny-v3", import.meta.url).pathname;
const dir = mkdtempSync(join(tmpdir(), "moela-security-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const SECRET = "0123456789abcdef0123";
const CERT = join(dir, "cert.pem");
const KEY = join(dir, "key.pem");
const NOT_PEM = join(dir, "not.pem");
writeFileSync(CERT, "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n");
writeFileSync(KEY, "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n");
writeFileSync(NOT_PEM, "hello\n");
const SECRET_FILE = join(dir, "secret");
writeFileSync(SECRET_FILE, `  new-secret-0123456789,old-secret-0123456789\n`);

const names = internalSecurityNames("MOELA_DECODE_");
const parse = (flags: InternalSecurityFlags) => parseInternalSecurity(flags, names, "decode");

describe("parseInternalSecurity", () => {
  it.each([
    { name: "nothing is given", flags: {} },
    {
      name: "every value is empty (a template's unset variable)",
      flags: { internalSecret: "", internalSecretFile: "", tlsCert: "", tlsKey: "", tlsCa: "", tlsClientAuth: "" },
    },
  ])("is off when $name", ({ flags }) => {
    const s = parse(flags);
    expect(s.secrets).toEqual([]);
    expect(s.tls).toBeUndefined();
  });

  it("reads several secrets from a file, trimmed, the first presented; JSON shows only their count", () => {
    const s = parse({ internalSecretFile: SECRET_FILE });
    expect(s.secrets).toEqual(["new-secret-0123456789", "old-secret-0123456789"]);
    expect(JSON.stringify(s)).toBe('{"secrets":2,"tls":"off"}');
  });

  it("reads TLS files: a cert and key serve TLS, a CA and clientAuth make it mTLS", () => {
    const s = parse({ tlsCert: CERT, tlsKey: KEY, tlsCa: CERT, tlsClientAuth: "true" });
    expect(s.tls?.clientAuth).toBe(true);
    expect(s.tls?.cert?.toString()).toContain("BEGIN CERTIFICATE");
    expect(JSON.stringify(s)).toBe('{"secrets":0,"tls":"mtls"}');
  });

  it.each([
    {
      name: "a short secret",
      flags: { internalSecret: "short" },
      message: /--internal-secret \(env MOELA_DECODE_INTERNAL_SECRET\): the secret is shorter than 16 characters/,
    },
    { name: "a secret with a space", flags: { internalSecret: "0123456789 abcdef0123" }, message: /holds a character other than printable ASCII/ },
    { name: "an empty second secret", flags: { internalSecret: `${SECRET},` }, message: /secret 2 of 2 is empty/ },
    {
      name: "a secret and a file",
      flags: { internalSecret: SECRET, internalSecretFile: SECRET_FILE },
      message: /--internal-secret \(env MOELA_DECODE_INTERNAL_SECRET\) and --internal-secret-file \(env MOELA_DECODE_INTERNAL_SECRET_FILE\) exclude each other/,
    },
    {
      name: "a missing secret file",
      flags: { internalSecretFile: join(dir, "nope") },
      message: /--internal-secret-file \(env MOELA_DECODE_INTERNAL_SECRET_FILE\) .*nope: cannot read it \(ENOENT\)/,
    },
    {
      name: "a cert without its key",
      flags: { tlsCert: CERT },
      message: /--tls-cert \(env MOELA_DECODE_TLS_CERT\) needs --tls-key \(env MOELA_DECODE_TLS_KEY\)/,
    },
    { name: "a key without its cert", flags: { tlsKey: KEY }, message: /--tls-key \(env MOELA_DECODE_TLS_KEY\) needs --tls-cert/ },
    {
      name: "mTLS without a CA",
      flags: { tlsCert: CERT, tlsKey: KEY, tlsClientAuth: "true" },
      message: /--tls-client-auth \(env MOELA_DECODE_TLS_CLIENT_AUTH\) needs --tls-ca/,
    },
    { name: "mTLS without its own cert", flags: { tlsCa: CERT, tlsClientAuth: true }, message: /--tls-client-auth .* needs --tls-cert/ },
    { name: "a file that is no PEM certificate", flags: { tlsCa: NOT_PEM }, message: /--tls-ca \(env MOELA_DECODE_TLS_CA\) .*not\.pem: not a PEM file/ },
    { name: "a key file that holds a certificate", flags: { tlsCert: CERT, tlsKey: CERT }, message: /--tls-key .* not a PEM file of the expected kind/ },
    { name: "a bad boolean", flags: { tlsClientAuth: "yes" }, message: /--tls-client-auth \(env MOELA_DECODE_TLS_CLIENT_AUTH\) must be true or false/ },
  ])("refuses $name, naming the setting", ({ flags, message }) => {
    expect(() => parse(flags)).toThrow(InvalidArgumentError);
    expect(() => parse(flags)).toThrow(message);
  });

  it("never repeats a secret in an error", () => {
    const secret = "with space but otherwise long enough";
    let message = "";
    try {
      parse({ internalSecret: secret });
    } catch (err) {
      message = (err as Error).message;
    }
    expect(message).toMatch(/printable ASCII/);
    expect(message).not.toContain("otherwise");
  });
});

describe("secretMatches", () => {
  it.each([
    { presented: "new-secret-0123456789", secrets: ["new-secret-0123456789"], want: true },
    { presented: "old-secret-0123456789", secrets: ["new-secret-0123456789", "old-secret-0123456789"], want: true },
    { presented: "new-secret-012345678", secrets: ["new-secret-0123456789"], want: false },
    { presented: "", secrets: ["new-secret-0123456789"], want: false },
    { presented: "new-secret-0123456789", secrets: [], want: false },
  ])("$presented against $secrets: $want", ({ presented, secrets, want }) => {
    expect(secretMatches(presented, secrets)).toBe(want);
  });
});

describe("every service reads the settings from its own env twins", () => {
  it("names them MOELA_<ROLE>_INTERNAL_SECRET, _INTERNAL_SECRET_FILE, _TLS_CERT, _TLS_KEY, _TLS_CA, _TLS_CLIENT_AUTH", () => {
    expect(Object.values(internalSecuritySettings("MOELA_EXPERT_HOST_")).map((s) => `${s.flag} ${s.env}`)).toEqual([
      "--internal-secret MOELA_EXPERT_HOST_INTERNAL_SECRET",
      "--internal-secret-file MOELA_EXPERT_HOST_INTERNAL_SECRET_FILE",
      "--tls-cert MOELA_EXPERT_HOST_TLS_CERT",
      "--tls-key MOELA_EXPERT_HOST_TLS_KEY",
      "--tls-ca MOELA_EXPERT_HOST_TLS_CA",
      "--tls-client-auth MOELA_EXPERT_HOST_TLS_CLIENT_AUTH",
    ]);
  });

  it.each([
    { role: "decode", parse: (env: NodeJS.ProcessEnv) => parseDecodeConfig(["--model", MODEL], env)!.security },
    {
      role: "expert-host",
      parse: (env: NodeJS.ProcessEnv) => parseExpertHostConfig(["--model", MODEL, "--shard-index", "0", "--shard-count", "1"], env)!.security,
    },
    { role: "prefill", parse: (env: NodeJS.ProcessEnv) => parsePrefillConfig(["--model", MODEL], env).security! },
  ])("$role: secret file, cert, key, CA and mTLS from the env", ({ role, parse: parseRole }) => {
    const prefix = `MOELA_${role.toUpperCase().replace("-", "_")}_`;
    const s = parseRole({
      [`${prefix}INTERNAL_SECRET_FILE`]: SECRET_FILE,
      [`${prefix}TLS_CERT`]: CERT,
      [`${prefix}TLS_KEY`]: KEY,
      [`${prefix}TLS_CA`]: CERT,
      [`${prefix}TLS_CLIENT_AUTH`]: "true",
    });
    expect(s.secrets).toEqual(["new-secret-0123456789", "old-secret-0123456789"]);
    expect(s.tls?.clientAuth).toBe(true);
  });

  it("the flag wins over the env twin, and a bad value fails start-up with the service's error", () => {
    expect(
      parseDecodeConfig(["--model", MODEL, "--internal-secret", SECRET], { MOELA_DECODE_INTERNAL_SECRET: "another-secret-0123456" })!.security.secrets,
    ).toEqual([SECRET]);
    expect(() => parsePrefillConfig(["--model", MODEL], { MOELA_PREFILL_TLS_CERT: CERT })).toThrow(ConfigError);
    expect(() => parsePrefillConfig(["--model", MODEL], { MOELA_PREFILL_TLS_CERT: CERT })).toThrow(
      /prefill: --tls-cert \(env MOELA_PREFILL_TLS_CERT\) needs --tls-key/,
    );
  });

  it("router: the secret and TLS of its calls to decode", () => {
    const s = parseRouterConfig(["--model", MODEL], { MOELA_ROUTER_INTERNAL_SECRET: SECRET, MOELA_ROUTER_TLS_CA: CERT }).security!;
    expect(s.secrets).toEqual([SECRET]);
    expect(s.tls?.ca?.toString()).toContain("BEGIN CERTIFICATE");
  });

  it("decode: --kv-max-transfers-per-peer (MOELA_DECODE_KV_MAX_TRANSFERS_PER_PEER), 64 by default, 0 = no bound", () => {
    expect(parseDecodeConfig(["--model", MODEL], {})!.kvMaxTransfersPerPeer).toBe(64);
    expect(parseDecodeConfig(["--model", MODEL], { MOELA_DECODE_KV_MAX_TRANSFERS_PER_PEER: "0" })!.kvMaxTransfersPerPeer).toBe(0);
    expect(() => parseDecodeConfig(["--model", MODEL], { MOELA_DECODE_KV_MAX_TRANSFERS_PER_PEER: "-1" })).toThrow(
      /--kv-max-transfers-per-peer \/ MOELA_DECODE_KV_MAX_TRANSFERS_PER_PEER/,
    );
  });
});
