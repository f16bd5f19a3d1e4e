/**
 * The router's security helpers (services/router/src/handlers.ts): API keys checked in constant time,
 * client request ids namespaced, and error messages scrubbed of internal addresses, hosts and instance
 * ids before a client sees them. test/integration/router/hardening.test.ts drives the same over HTTP and gRPC.
 */
import { describe, expect, it } from "vitest";
import { Code, MoelaError, prefixBlockHashes, ResourceExhaustedError, UnavailableError } from "@moela/core";
import { ModelNotFoundError, openAIError, RequestValidationError } from "@moela/openai-api";
import { ApiKeys, bearerToken, namespacedRequestId, publicError, redactInternal } from "../../../services/router/src/handlers.js";

describe("API keys", () => {
  const keys = new ApiKeys(["sk-current", "sk-previous"]);

  it.each([
    { name: "the current key", header: "Bearer sk-current", ok: true },
    { name: "a rotated-out key still listed", header: "Bearer sk-previous", ok: true },
    { name: "the scheme in any case, spaces around", header: "  bearer   sk-current ", ok: true },
    { name: "no header", header: undefined, ok: false, message: /didn't provide an API key/ },
    { name: "a wrong key", header: "Bearer sk-wrong", ok: false, message: /Incorrect API key/ },
    { name: "a prefix of the key", header: "Bearer sk-curr", ok: false, message: /Incorrect API key/ },
    { name: "another scheme", header: "Basic c2stY3VycmVudA==", ok: false, message: /must be 'Bearer <key>'/ },
    { name: "the key without a scheme", header: "sk-current", ok: false, message: /must be 'Bearer <key>'/ },
  ])("$name -> $ok", ({ header, ok, message }) => {
    if (ok) {
      expect(() => keys.authenticate(header)).not.toThrow();
      return;
    }
    let err: unknown;
    try {
      keys.authenticate(header);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(MoelaError);
    expect((err as MoelaError).code).toBe(Code.UNAUTHENTICATED);
    expect((err as Error).message).toMatch(message!);
    expect((err as Error).message).not.toContain("sk-current");
    expect(openAIError(err)).toMatchObject({ status: 401, body: { error: { type: "invalid_request_error", code: "invalid_api_key" } } });
  });

  it("bearerToken reads only the Bearer scheme", () => {
    expect(bearerToken("Bearer abc")).toBe("abc");
    expect(bearerToken("Bearer a b")).toBeUndefined();
    expect(bearerToken(undefined)).toBeUndefined();
  });
});

describe("request ids", () => {
  it("a client's id runs as <id>-<12 hex>, different every time", () => {
    const a = namespacedRequestId("my-id");
    const b = namespacedRequestId("my-id");
    expect(a).toMatch(/^my-id-[0-9a-f]{12}$/);
    expect(b).toMatch(/^my-id-[0-9a-f]{12}$/);
    expect(a).not.toBe(b);
    // The longest client id still fits every service's limit (prefill: 256) with a batch and migration suffix.
    expect(`${namespacedRequestId("x".repeat(128))}.63.m3`.length).toBeLessThanOrEqual(192);
  });
});

describe("what clients are told", () => {
  const names = ["decode-node7-4242-a1b2c3", "10.1.2.3:50051", "node7", "redis.internal:6379"];
  it.each([
    { name: "a known decode address", message: "decode 10.1.2.3:50051 is unavailable", want: "decode <internal> is unavailable" },
    { name: "a registry instance id", message: "no instance: decode-node7-4242-a1b2c3 is draining", want: "no instance: <internal> is draining" },
    { name: "an unknown instance id of the registry's shape", message: "prefill-host-b-17-0f0f0f failed", want: "<internal> failed" },
    { name: "a known host alone", message: "cannot resolve node7", want: "cannot resolve <internal>" },
    { name: "an unknown IPv4 with a port", message: "connect ECONNREFUSED 192.168.0.9:7001", want: "connect ECONNREFUSED <internal>" },
    { name: "an IPv6 address", message: "dial [fd00::1]:50051 failed", want: "dial <internal> failed" },
    { name: "a host:port", message: "No connection established to decode-2.decode.moela.svc:50051", want: "No connection established to <internal>" },
    { name: "a URL with credentials", message: "Redis at redis://:hunter2@redis.internal:6379/0 did not answer", want: "Redis at <internal> did not answer" },
    {
      name: "a message with nothing internal",
      message: "no decode instance is available right now; retry later",
      want: "no decode instance is available right now; retry later",
    },
  ])("$name", ({ message, want }) => {
    expect(redactInternal(message, names)).toBe(want);
  });

  const ctx = { internalNames: () => names };
  it("the router's own refusals pass as they are (built from the client's input)", () => {
    const v = new RequestValidationError('stop[0] = "10.0.0.1:80" is fine', "stop");
    expect(publicError(v, ctx)).toBe(v);
    const m = new ModelNotFoundError("gpt-4");
    expect(publicError(m, ctx)).toBe(m);
  });

  it("a server-side failure keeps its code, loses its internals; INTERNAL says only 'internal error'", () => {
    const e = publicError(new UnavailableError("prefill failed: decode 10.1.2.3:50051 is unavailable"), ctx) as MoelaError;
    expect(e.code).toBe(Code.UNAVAILABLE);
    expect(e.message).toBe("prefill failed: decode <internal> is unavailable");
    expect((publicError(new ResourceExhaustedError("full"), ctx) as MoelaError).message).toBe("full");
    const i = publicError(new MoelaError("decode 10.1.2.3:50051 ended the stream", Code.INTERNAL), ctx) as MoelaError;
    expect(i.message).toBe("internal error");
    const d = publicError(new MoelaError("decode skipped tokens", Code.DATA_LOSS), ctx) as MoelaError;
    expect([d.code, d.message]).toEqual([Code.DATA_LOSS, "internal error"]);
    const plain = new TypeError("x is undefined at 10.1.2.3");
    expect(publicError(plain, ctx)).toBe(plain);
    expect(openAIError(plain).body.error.message).toBe("internal error");
  });
});

describe("cache_salt in prefix-cache keys", () => {
  const tokens = Array.from({ length: 33 }, (_, i) => i + 1);
  it("no salt: the keys as before; a salt changes every key; the same salt gives the same keys", () => {
    const plain = prefixBlockHashes(tokens, 8);
    expect(prefixBlockHashes(tokens, 8, Infinity, "")).toEqual(plain);
    const a = prefixBlockHashes(tokens, 8, Infinity, "tenant-a");
    const b = prefixBlockHashes(tokens, 8, Infinity, "tenant-b");
    expect(a).toHaveLength(plain.length);
    for (let i = 0; i < plain.length; i++) {
      expect(a[i]).not.toBe(plain[i]);
      expect(a[i]).not.toBe(b[i]);
    }
    expect(prefixBlockHashes(tokens, 8, Infinity, "tenant-a")).toEqual(a);
  });
});
