/**
 * The cluster benchmark's wire probe (scripts/bench/cluster-wire.ts) dials a running cluster's expert-hosts the way
 * cluster.json says they want to be dialled: a real expert-host holding an internal secret answers the probe's
 * transport when the secret comes from the file cluster.json names, and refuses the same call without it. A cluster
 * behind TLS, or one whose secret has no file, is refused before any call with a message that says why.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Code, createLogger } from "@moela/core";
import { connectExpertHosts, type GrpcExpertHostTransport } from "@moela/moe-dispatch";
import { parseConfig, startExpertHost, type RunningExpertHost } from "@moela/expert-host";
import { wireProbeChannel } from "../../../scripts/bench/cluster-wire.js";

const MODEL = fileURLToPath(new URL("../../../models/tiny-v3", import.meta.url));
const SECRET = "the-bench-wire-probe-test-secret-0123456789";

describe("the cluster benchmark's wire probe against a cluster with an internal secret", () => {
  let host: RunningExpertHost;
  let dir: string;
  const transports: GrpcExpertHostTransport[] = [];

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "moela-wire-probe-"));
    writeFileSync(join(dir, "internal-secret"), `${SECRET}\n`);
    const cfg = parseConfig(["--model", MODEL, "--shard-index", "0", "--shard-count", "1"], { MOELA_EXPERT_HOST_INTERNAL_SECRET: SECRET })!;
    host = await startExpertHost(cfg, createLogger("wire-probe-test", "silent"));
  });

  afterAll(async () => {
    for (const t of transports) t.close();
    await host?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  function probe(channel: ReturnType<typeof wireProbeChannel>): GrpcExpertHostTransport {
    const [t] = connectExpertHosts([host.grpcAddress], { credentials: channel.credentials, channelOptions: channel.options, sharedMemory: false });
    transports.push(t!);
    return t!;
  }

  it("presents the secret from the file cluster.json names, and the host answers", async () => {
    const channel = wireProbeChannel({ internal: { secret: true, secret_file: join(dir, "internal-secret"), tls: "off" } });
    const info = await probe(channel).info();
    expect(info.shardIndex).toBe(0);
  });

  it("without the secret (a cluster.json that says there is none) the host refuses the call", async () => {
    const channel = wireProbeChannel({ internal: { secret: false, tls: "off" } });
    await expect(probe(channel).info()).rejects.toMatchObject({ code: Code.UNAUTHENTICATED });
  });

  it("refuses TLS, and a secret without a file, before dialling", () => {
    expect(() => wireProbeChannel({ internal: { secret: true, secret_file: join(dir, "internal-secret"), tls: "mtls" } })).toThrow(/plaintext.*uses mtls/);
    expect(() => wireProbeChannel({ internal: { secret: true, tls: "off" } })).toThrow(/names no file that holds it/);
  });
});
