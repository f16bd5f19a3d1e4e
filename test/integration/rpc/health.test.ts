/**
 * grpc.health.v1: a server reports NOT_SERVING until it is ready, SERVING once served (for the
 * whole server and per moela service), and NOT_SERVING as soon as it starts draining.
 */
import { Code, MoelaError, UnavailableError } from "@moela/core";
import { PrefillService } from "@moela/proto-gen";
import { checkHealth, drainAndClose, waitForServing, watchHealth, type HealthStatus } from "@moela/rpc";
import { describe, expect, it, vi } from "vitest";
import { startServer } from "./harness.js";

const prefill = {
  async status() {
    return {
      modelId: "tiny",
      precision: 1,
      runningJobs: 0,
      maxConcurrentJobs: 1,
      pendingPromptTokens: 0,
      chunkSize: 256,
      activeTransfers: 0,
      accepting: true,
    };
  },
};

describe("health", () => {
  it("reports SERVING for the server and each service once served", async () => {
    const { address } = await startServer((s) => s.addService(PrefillService, prefill));
    expect(await checkHealth(address)).toBe("SERVING");
    expect(await checkHealth(address, { service: "moela.v1.Prefill" })).toBe("SERVING");
    // A service the server does not carry is NOT_FOUND, not SERVING.
    const unknown = await checkHealth(address, { service: "moela.v1.Decode" }).catch((e: unknown) => e);
    expect((unknown as MoelaError).code).toBe(Code.NOT_FOUND);
  });

  it("waitForServing waits for a server that is not ready yet", async () => {
    const { server, address } = await startServer((s) => s.addService(PrefillService, prefill), { serving: false });
    expect(await checkHealth(address)).toBe("NOT_SERVING");
    const waiting = waitForServing(address, { service: "moela.v1.Prefill", intervalMs: 10, timeoutMs: 10_000 });
    let resolved = false;
    void waiting.then(() => (resolved = true));
    // Several checks answer NOT_SERVING before the server is marked ready.
    await new Promise((r) => setTimeout(r, 100));
    expect(resolved).toBe(false);
    server.setServing(true);
    await waiting;
  });

  it("waitForServing gives up with DEADLINE_EXCEEDED naming the last answer", async () => {
    const { address } = await startServer((s) => s.addService(PrefillService, prefill), { serving: false });
    const error = await waitForServing(address, { timeoutMs: 200, intervalMs: 20 }).catch((e: unknown) => e);
    expect((error as MoelaError).code).toBe(Code.DEADLINE_EXCEEDED);
    expect((error as Error).message).toContain("NOT_SERVING");
  });

  it("turns NOT_SERVING when draining starts, then refuses connections once closed", async () => {
    const { server, address } = await startServer((s) => s.addService(PrefillService, prefill));
    const controller = new AbortController();
    const seen: HealthStatus[] = [];
    const watching = (async () => {
      for await (const status of watchHealth(address, { signal: controller.signal })) {
        seen.push(status);
        if (status === "NOT_SERVING") return;
      }
    })();
    // The watch delivers the current status first.
    await vi.waitFor(() => expect(seen.length).toBeGreaterThan(0), { timeout: 60_000, interval: 5 });
    expect(seen).toEqual(["SERVING"]);

    const draining = drainAndClose(server, 5_000, { announceMs: 1_000 });
    await watching;
    expect(seen).toEqual(["SERVING", "NOT_SERVING"]);
    // Within the announce window the server still answers, and says NOT_SERVING for every service.
    expect(await checkHealth(address)).toBe("NOT_SERVING");
    expect(await checkHealth(address, { service: "moela.v1.Prefill" })).toBe("NOT_SERVING");
    controller.abort();

    await draining;
    const afterClose = await checkHealth(address, { timeoutMs: 2_000 }).catch((e: unknown) => e);
    expect(afterClose).toBeInstanceOf(UnavailableError);
  });
});
