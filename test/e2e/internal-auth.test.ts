/**
 * `moela cluster` with internal security, end to end, as a user runs it (the real launcher and services):
 *
 * - mTLS and a shared secret from a file (`--internal-secret-file --tls-cert --tls-key --tls-ca
 *   --tls-client-auth`, certificates made by openssl for the test): the launcher passes them to every
 *   service by its environment, every internal hop (router -> decode, prefill -> decode KvTransfer,
 *   prefill/decode -> expert-hosts, the launcher's health probes) runs over it, and a greedy completion
 *   gives exactly `moela generate`'s tokens. A caller without a client certificate, or with one but without
 *   the secret, is refused by decode.
 * - the default: a random secret per cluster in <state-dir>/internal-secret (mode 0600, named in
 *   cluster.json, never its value), which a caller without it cannot pass, gone once the cluster stops.
 */
import { randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { Code } from "@moela/core";
import { DecodeClient, type DecodeStatusResponse } from "@moela/proto-gen";
import { connect, internalSecurity, unaryCall, type InternalSecurity } from "@moela/rpc";
import { clusterSecurity, moelaGenerate, startTestCluster, type TestCluster } from "../helpers/cluster.js";
import { hasOpenssl, makeTestCa, makeTestLeaf, removeTestCerts } from "../helpers/tls.js";

const PROMPT = [2, 139, 48, 911, 305, 77];
const MAX_TOKENS = 8;

async function greedyIds(cluster: TestCluster): Promise<number[]> {
  const res = await fetch(`${cluster.baseURL}/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ model: cluster.model, prompt: PROMPT, max_tokens: MAX_TOKENS, temperature: 0, logprobs: 1, return_tokens_as_token_ids: true }),
  });
  const body = (await res.json()) as { choices?: Array<{ logprobs?: { tokens?: string[] } }> };
  expect(res.status, JSON.stringify(body).slice(0, 500)).toBe(200);
  return (body.choices?.[0]?.logprobs?.tokens ?? []).map((t) => Number(t.replace(/^token_id:/, "")));
}

/** Decode.Status on `address` with `security`: the answer, or the error's code. */
async function decodeStatus(address: string, security: InternalSecurity | undefined): Promise<DecodeStatusResponse | { code: number | undefined }> {
  const c = connect(DecodeClient, address, {}, security);
  try {
    return await unaryCall<DecodeStatusResponse>((md, o, cb) => c.status({}, md, o, cb), { timeoutMs: 5_000 });
  } catch (err) {
    return { code: (err as { code?: number }).code };
  } finally {
    c.close();
  }
}

const dirs: string[] = [];
afterAll(() => {
  removeTestCerts();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

describe.runIf(hasOpenssl())("moela cluster with mTLS and a shared secret from a file", () => {
  it("serves exactly moela generate's greedy tokens; decode refuses callers without a client certificate or without the secret", async () => {
    const ca = makeTestCa();
    // One certificate for every service, server and client alike (SANs 127.0.0.1 and localhost).
    const leaf = makeTestLeaf(ca, "moela-internal");
    const dir = mkdtempSync(join(tmpdir(), "moela-e2e-internal-"));
    dirs.push(dir);
    const secret = randomBytes(24).toString("hex");
    const secretFile = join(dir, "internal-secret");
    writeFileSync(secretFile, `${secret}\n`, { mode: 0o600 });
    const [reference, cluster] = await Promise.all([
      moelaGenerate({ promptIds: PROMPT, maxTokens: MAX_TOKENS, expertHosts: 2 }),
      startTestCluster({
        expertHosts: 2,
        internalArgs: ["--internal-secret-file", secretFile, "--tls-cert", leaf.cert, "--tls-key", leaf.key, "--tls-ca", ca.caCert, "--tls-client-auth"],
      }),
    ]);
    try {
      expect(cluster.info.internal).toEqual({ secret_file: secretFile, secret: true, tls: "mtls" });
      const decode = cluster.instances("decode")[0]!;
      // Each service got the settings by its environment (file paths), not its argv; the secret is in neither.
      const environ = readFileSync(`/proc/${decode.pid}/environ`, "utf8").split("\0");
      expect(environ).toEqual(
        expect.arrayContaining([`MOELA_DECODE_INTERNAL_SECRET_FILE=${secretFile}`, `MOELA_DECODE_TLS_CLIENT_AUTH=true`, `MOELA_DECODE_TLS_CA=${ca.caCert}`]),
      );
      expect(environ.join("\n")).not.toContain(secret);
      expect(readFileSync(`/proc/${decode.pid}/cmdline`, "utf8")).not.toContain(secret);
      const router = cluster.instances("router")[0]!;
      expect(readFileSync(`/proc/${router.pid}/environ`, "utf8").split("\0")).toContain(`MOELA_ROUTER_TLS_CERT=${leaf.cert}`);

      // Router -> decode, prefill -> decode and both -> the expert-hosts all ran over mTLS with the secret.
      expect(reference.tokenIds).toHaveLength(MAX_TOKENS);
      expect(await greedyIds(cluster)).toEqual(reference.tokenIds);

      const pem = (f: string) => readFileSync(f);
      const tls = { ca: pem(ca.caCert), cert: pem(leaf.cert), key: pem(leaf.key) };
      expect(await decodeStatus(decode.grpc, undefined)).toEqual({ code: Code.UNAVAILABLE });
      expect(await decodeStatus(decode.grpc, internalSecurity({ secrets: [secret], tls: { ca: tls.ca } }))).toEqual({ code: Code.UNAVAILABLE });
      expect(await decodeStatus(decode.grpc, internalSecurity({ tls }))).toEqual({ code: Code.UNAUTHENTICATED });
      expect(await decodeStatus(decode.grpc, internalSecurity({ secrets: [secret], tls }))).toMatchObject({ accepting: true, modelId: expect.any(String) });
      expect(await cluster.stop()).toBe(0);
    } finally {
      await cluster.stop().catch(() => undefined);
    }
  }, 300_000);
});

describe("moela cluster's default: a random internal secret per cluster", () => {
  it("writes it to <state-dir>/internal-secret (0600), names the file in cluster.json, refuses callers without it, and removes it on stop", async () => {
    const cluster = await startTestCluster({ expertHosts: 1 });
    let secretFile: string | undefined;
    try {
      secretFile = cluster.info.internal?.secret_file;
      expect(cluster.info.internal).toEqual({ secret_file: join(cluster.stateDir, "internal-secret"), secret: true, tls: "off" });
      expect(statSync(secretFile!).mode & 0o777).toBe(0o600);
      const secret = readFileSync(secretFile!, "utf8").trim();
      expect(secret).toMatch(/^[0-9a-f]{64}$/);
      expect(JSON.stringify(cluster.info)).not.toContain(secret);
      const decode = cluster.instances("decode")[0]!;
      expect(await decodeStatus(decode.grpc, undefined)).toEqual({ code: Code.UNAUTHENTICATED });
      expect(await decodeStatus(decode.grpc, internalSecurity({ secrets: ["a-guess-that-is-long-enough"] }))).toEqual({ code: Code.UNAUTHENTICATED });
      expect(await decodeStatus(decode.grpc, clusterSecurity(cluster.info))).toMatchObject({ accepting: true });
      expect((await greedyIds(cluster)).length).toBe(MAX_TOKENS);
      expect(await cluster.stop()).toBe(0);
      expect(existsSync(secretFile!)).toBe(false);
    } finally {
      await cluster.stop().catch(() => undefined);
    }
  }, 300_000);
});
