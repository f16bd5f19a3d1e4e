/**
 * Server reflection lists every moela.v1 service and grpc.health.v1.Health, and serves their
 * file descriptors, so grpcurl works against any moela service without .proto files.
 */
import { createRequire } from "node:module";
import * as path from "node:path";
import { credentials, loadPackageDefinition, type ClientDuplexStream, type ServiceClientConstructor } from "@grpc/grpc-js";
import { loadSync } from "@grpc/proto-loader";
import { DecodeService } from "@moela/proto-gen";
import { describe, expect, it } from "vitest";
import { startServer } from "./harness.js";

interface ReflectionRequest {
  list_services?: string;
  file_containing_symbol?: string;
}
interface ReflectionResponse {
  list_services_response?: { service: { name: string }[] };
  file_descriptor_response?: { file_descriptor_proto: Buffer[] };
  error_response?: { error_code: number; error_message: string };
}

/** A grpc.reflection.v1 client built from the .proto that @grpc/reflection ships. */
function reflectionClient(address: string) {
  const require = createRequire(import.meta.url);
  const protoFile = path.join(path.dirname(require.resolve("@grpc/reflection")), "../proto/grpc/reflection/v1/reflection.proto");
  const pkg = loadPackageDefinition(loadSync(protoFile, { keepCase: true, oneofs: true })) as unknown as {
    grpc: { reflection: { v1: { ServerReflection: ServiceClientConstructor } } };
  };
  return new pkg.grpc.reflection.v1.ServerReflection(address, credentials.createInsecure());
}

/** One request/response exchange on the reflection stream. */
async function ask(address: string, request: ReflectionRequest): Promise<ReflectionResponse> {
  const client = reflectionClient(address);
  try {
    const call = (client as unknown as { ServerReflectionInfo(): ClientDuplexStream<ReflectionRequest, ReflectionResponse> }).ServerReflectionInfo();
    const response = new Promise<ReflectionResponse>((resolve, reject) => {
      call.once("data", resolve);
      call.once("error", reject);
    });
    call.write(request);
    call.end();
    return await response;
  } finally {
    client.close();
  }
}

describe("reflection", () => {
  it("lists every moela.v1 service and health", async () => {
    const { address } = await startServer((s) =>
      s.addService(DecodeService, {
        async *stream() {},
        async cancel() {
          return { found: false };
        },
        async status() {
          throw new Error("not used");
        },
      }),
    );
    const response = await ask(address, { list_services: "" });
    const names = (response.list_services_response?.service ?? []).map((s) => s.name).sort();
    expect(names).toEqual(
      ["grpc.health.v1.Health", "moela.v1.Decode", "moela.v1.ExpertHost", "moela.v1.Generate", "moela.v1.KvTransfer", "moela.v1.Prefill"].sort(),
    );
  });

  it("serves the file that defines a service, with its imports", async () => {
    const { address } = await startServer(() => {});
    const response = await ask(address, { file_containing_symbol: "moela.v1.KvTransfer" });
    expect(response.error_response).toBeUndefined();
    const files = (response.file_descriptor_response?.file_descriptor_proto ?? []).map((b) => Buffer.from(b).toString("latin1"));
    expect(files.some((f) => f.includes("moela/v1/kv_transfer.proto"))).toBe(true);
    expect(files.some((f) => f.includes("moela/v1/common.proto"))).toBe(true);
  });
});
