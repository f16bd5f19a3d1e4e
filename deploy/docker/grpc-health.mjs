#!/usr/bin/env node
// Container healthcheck: `node deploy/docker/grpc-health.mjs [host:port] [service]` asks grpc.health.v1
// Check and exits 0 only on SERVING (1 otherwise). Plain JS on purpose: it runs every few seconds, so it
// must not pay for tsx, and the slim image has no grpc_health_probe binary. Kubernetes uses its native
// grpc probes instead; this is for docker-compose.
// Internal TLS: when the container's service runs it (MOELA_{PREFILL,DECODE,EXPERT_HOST}_TLS_CA/_CERT/_KEY
// set and non-empty), the check dials TLS with the same files, presenting the cert (mTLS). Health needs no
// secret. The router's gRPC is its public API, plaintext: its TLS settings are for its calls to decode.
import { readFileSync } from "node:fs";
import { Metadata, credentials, makeGenericClientConstructor } from "@grpc/grpc-js";
import { service } from "grpc-health-check";

const address = process.argv[2] ?? "127.0.0.1:50051";
const serviceName = process.argv[3] ?? "";

function tlsFile(kind) {
  for (const role of ["PREFILL", "DECODE", "EXPERT_HOST"]) {
    const path = process.env[`MOELA_${role}_TLS_${kind}`];
    if (path !== undefined && path !== "") return readFileSync(path);
  }
  return null;
}
const ca = tlsFile("CA");
const cert = tlsFile("CERT");
const key = tlsFile("KEY");
const creds = ca !== null || cert !== null ? credentials.createSsl(ca, key, cert) : credentials.createInsecure();

const Client = makeGenericClientConstructor(service, "grpc.health.v1.Health");
const client = new Client(address, creds);
client.Check({ service: serviceName }, new Metadata(), { deadline: Date.now() + 3_000 }, (err, response) => {
  const status = err ? `error: ${err.details || err.message}` : response?.status;
  if (status !== "SERVING") console.error(`${address} health: ${status}`);
  client.close();
  process.exit(status === "SERVING" ? 0 : 1);
});
