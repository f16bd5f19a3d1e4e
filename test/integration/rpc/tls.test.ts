/**
 * Internal security of the rpc kit over real sockets on 127.0.0.1, with certificates made by openssl for
 * the test: a server with a cert serves TLS (a client trusting its CA gets through; a plaintext client or one
 * trusting another CA does not); with --tls-client-auth it is mTLS and refuses a client without a
 * certificate; the secret is checked on top of either; health probes dial TLS through the same settings.
 */
import { readFileSync } from "node:fs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Code } from "@moela/core";
import { Precision, PrefillClient, PrefillService, type PrefillStatusResponse } from "@moela/proto-gen";
import {
  checkHealth,
  connect,
  internalSecurity,
  internalSecurityNames,
  parseInternalSecurity,
  unaryCall,
  type AsyncServiceImplementation,
  type InternalSecurity,
} from "@moela/rpc";
import { hasOpenssl, makeTestCa, makeTestLeaf, removeTestCerts, type TestCa, type TestLeaf } from "../../helpers/tls.js";
import { startServer } from "./harness.js";

const STATUS: PrefillStatusResponse = {
  modelId: "tls-test",
  precision: Precision.PRECISION_EXACT,
  runningJobs: 0,
  maxConcurrentJobs: 8,
  pendingPromptTokens: 0,
  chunkSize: 256,
  activeTransfers: 0,
  accepting: true,
};
const prefill: AsyncServiceImplementation<typeof PrefillService> = { status: async () => STATUS };
const SECRET = "a-secret-of-at-least-sixteen-characters";

/** A Status call's error, or null when it answered. */
async function callStatus(address: string, security: InternalSecurity | undefined): Promise<{ code?: number; message?: string } | null> {
  const client = connect(PrefillClient, address, {}, security);
  try {
    const res = await unaryCall<PrefillStatusResponse>((md, o, cb) => client.status({}, md, o, cb), { timeoutMs: 5_000 });
    expect(res.modelId).toBe("tls-test");
    return null;
  } catch (err) {
    return err as { code?: number; message?: string };
  } finally {
    client.close();
  }
}

describe.runIf(hasOpenssl())("internal TLS and mTLS", () => {
  let ca: TestCa;
  let otherCa: TestCa;
  let server: TestLeaf;
  let client: TestLeaf;
  let stranger: TestLeaf;
  const pem = (file: string): Buffer => readFileSync(file);

  beforeAll(() => {
    ca = makeTestCa();
    otherCa = makeTestCa("another-ca");
    server = makeTestLeaf(ca, "server");
    client = makeTestLeaf(ca, "client");
    stranger = makeTestLeaf(otherCa, "stranger");
  });
  afterAll(() => removeTestCerts());

  it("TLS: a client trusting the CA gets through (health too); plaintext or another CA does not", async () => {
    const { address } = await startServer((s) => s.addService(PrefillService, prefill), {
      security: internalSecurity({ tls: { cert: pem(server.cert), key: pem(server.key) } }),
    });
    const trusting = internalSecurity({ tls: { ca: pem(ca.caCert) } });
    expect(await callStatus(address, trusting)).toBeNull();
    expect(await checkHealth(address, { security: trusting })).toBe("SERVING");
    expect((await callStatus(address, undefined))?.code).toBe(Code.UNAVAILABLE);
    expect((await callStatus(address, internalSecurity({ tls: { ca: pem(otherCa.caCert) } })))?.code).toBe(Code.UNAVAILABLE);
  });

  it("mTLS (--tls-client-auth): a client with a certificate from the CA gets through; one without a certificate, or with another CA's, is refused", async () => {
    // The server's settings as a service reads them: files named by flags.
    const serverSecurity = parseInternalSecurity(
      { tlsCert: server.cert, tlsKey: server.key, tlsCa: ca.caCert, tlsClientAuth: "true" },
      internalSecurityNames("MOELA_DECODE_"),
      "decode",
    );
    expect(serverSecurity.tls?.clientAuth).toBe(true);
    const { address } = await startServer((s) => s.addService(PrefillService, prefill), { security: serverSecurity });
    const withCert = internalSecurity({ tls: { ca: pem(ca.caCert), cert: pem(client.cert), key: pem(client.key) } });
    expect(await callStatus(address, withCert)).toBeNull();
    expect(await checkHealth(address, { security: withCert })).toBe("SERVING");
    const noCert = await callStatus(address, internalSecurity({ tls: { ca: pem(ca.caCert) } }));
    expect(noCert?.code).toBe(Code.UNAVAILABLE);
    const foreign = await callStatus(address, internalSecurity({ tls: { ca: pem(ca.caCert), cert: pem(stranger.cert), key: pem(stranger.key) } }));
    expect(foreign?.code).toBe(Code.UNAVAILABLE);
  });

  it("mTLS plus the secret: a client certificate alone is not enough; with the secret the call goes through", async () => {
    const { address } = await startServer((s) => s.addService(PrefillService, prefill), {
      security: internalSecurity({ secrets: [SECRET], tls: { cert: pem(server.cert), key: pem(server.key), ca: pem(ca.caCert), clientAuth: true } }),
    });
    const tls = { ca: pem(ca.caCert), cert: pem(client.cert), key: pem(client.key) };
    const certOnly = await callStatus(address, internalSecurity({ tls }));
    expect(certOnly).toMatchObject({ code: Code.UNAUTHENTICATED, message: expect.stringMatching(/needs the internal secret/) });
    expect(await callStatus(address, internalSecurity({ secrets: [SECRET], tls }))).toBeNull();
    // Health needs a certificate (mTLS is per connection) but no secret.
    expect(await checkHealth(address, { security: internalSecurity({ tls }) })).toBe("SERVING");
  });

  it("rotation: a server holding new,old accepts both; the client presents its first", async () => {
    const NEW = "the-new-secret-0123456789";
    const OLD = "the-old-secret-0123456789";
    const { address } = await startServer((s) => s.addService(PrefillService, prefill), { security: internalSecurity({ secrets: [`${NEW},${OLD}`] }) });
    expect(await callStatus(address, internalSecurity({ secrets: [NEW] }))).toBeNull();
    expect(await callStatus(address, internalSecurity({ secrets: [`${OLD},${NEW}`] }))).toBeNull();
    expect((await callStatus(address, internalSecurity({ secrets: ["a-third-secret-0123456789"] })))?.code).toBe(Code.UNAUTHENTICATED);
  });
});
