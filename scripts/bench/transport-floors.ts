/**
 * What a round trip to another process costs before any of moela's own work: the floors under the cluster
 * benchmark's "wire alone" line. A child process (this file, run with `peer`) echoes every message back, once
 * over a plain TCP socket and once over a grpc-js bidirectional stream with raw Buffer messages (HTTP/2 and
 * grpc-js framing, no protobuf, no handler wrappers, no expert-host). The parent sends one message of the
 * dispatch's size at a time and times the round trip, median of many.
 *
 * So, per layer of a batch-1 decode step, in one run: raw TCP (the kernel and the two wake-ups), grpc-js (plus
 * HTTP/2 and grpc-js in both processes), and a real DispatchStream to one expert-host (plus moela's transport,
 * codec, handler and the host's compute, whose own handling the host reports).
 *
 *   npx tsx scripts/bench/transport-floors.ts [--bytes 4096] [--rounds 2000]   (standalone)
 */
import { fork } from "node:child_process";
import { createServer, connect, type AddressInfo, type Socket } from "node:net";
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import { median } from "../lib/bench-report.js";

/** One bidi method whose messages are raw bytes. */
const ECHO_SERVICE: grpc.ServiceDefinition = {
  echo: {
    path: "/moela.bench.Echo/Echo",
    requestStream: true,
    responseStream: true,
    requestSerialize: (b: Buffer) => b,
    requestDeserialize: (b: Buffer) => b,
    responseSerialize: (b: Buffer) => b,
    responseDeserialize: (b: Buffer) => b,
  },
};

interface PeerPorts {
  readonly tcp: number;
  readonly grpc: number;
}

async function runPeer(): Promise<void> {
  const tcp = createServer((s) => {
    s.setNoDelay(true);
    s.on("data", (d) => s.write(d));
  });
  await new Promise<void>((r) => tcp.listen(0, "127.0.0.1", r));
  const server = new grpc.Server();
  server.addService(ECHO_SERVICE, {
    echo: (call: grpc.ServerDuplexStream<Buffer, Buffer>) => {
      call.on("data", (b: Buffer) => call.write(b));
      call.on("end", () => call.end());
    },
  });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
  );
  const ports: PeerPorts = { tcp: (tcp.address() as AddressInfo).port, grpc: port };
  process.send!(ports);
  // The parent ends the peer by disconnecting its IPC channel.
  process.on("disconnect", () => process.exit(0));
}

/** Median round trip (microseconds) of `bytes` echoed back, one message in flight, after a warm-up. */
async function timeRoundTrips(send: (b: Buffer) => Promise<void>, bytes: number, rounds: number): Promise<number> {
  const msg = Buffer.alloc(bytes, 7);
  for (let i = 0; i < Math.min(200, rounds); i++) await send(msg);
  const times: number[] = [];
  for (let i = 0; i < rounds; i++) {
    const t0 = performance.now();
    await send(msg);
    times.push(performance.now() - t0);
  }
  return 1000 * median(times);
}

function tcpEcho(sock: Socket): (b: Buffer) => Promise<void> {
  return (b) =>
    new Promise<void>((resolve) => {
      let got = 0;
      const onData = (d: Buffer): void => {
        got += d.length;
        if (got >= b.length) {
          sock.off("data", onData);
          resolve();
        }
      };
      sock.on("data", onData);
      sock.write(b);
    });
}

function grpcEcho(call: grpc.ClientDuplexStream<Buffer, Buffer>): (b: Buffer) => Promise<void> {
  return (b) =>
    new Promise<void>((resolve) => {
      call.once("data", () => resolve());
      call.write(b);
    });
}

export interface TransportFloors {
  readonly bytes: number;
  readonly rounds: number;
  /** Median round trip over a plain TCP socket to another process, microseconds. */
  readonly tcpUs: number;
  /** Median round trip over a grpc-js bidi stream (raw bytes) to another process, microseconds. */
  readonly grpcUs: number;
}

/** Start the echo peer, time both round trips, stop it. */
export async function measureTransportFloors(bytes: number, rounds = 2000): Promise<TransportFloors> {
  const self = fileURLToPath(import.meta.url);
  const peer = fork(self, ["peer"], { execArgv: ["--import", "tsx"], stdio: ["ignore", "inherit", "inherit", "ipc"] });
  try {
    const ports = await new Promise<PeerPorts>((resolve, reject) => {
      peer.once("message", (m) => resolve(m as PeerPorts));
      peer.once("exit", (code) => reject(new Error(`the echo peer exited with ${code} before it was ready`)));
    });
    const sock = connect(ports.tcp, "127.0.0.1");
    sock.setNoDelay(true);
    await new Promise<void>((r) => sock.once("connect", () => r()));
    const tcpUs = await timeRoundTrips(tcpEcho(sock), bytes, rounds);
    sock.destroy();
    const Client = grpc.makeGenericClientConstructor(ECHO_SERVICE, "Echo");
    const client = new Client(`127.0.0.1:${ports.grpc}`, grpc.credentials.createInsecure());
    const call = (client as unknown as { echo(): grpc.ClientDuplexStream<Buffer, Buffer> }).echo();
    const grpcUs = await timeRoundTrips(grpcEcho(call), bytes, rounds);
    // Cancelled here, so the call ends with CANCELLED (expected, ignored) rather than failing when the peer stops.
    call.on("error", () => {});
    call.cancel();
    client.close();
    return { bytes, rounds, tcpUs, grpcUs };
  } finally {
    peer.disconnect();
  }
}

if (process.argv[2] === "peer") await runPeer();
else if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === process.argv[1]) {
  const arg = (name: string, d: number): number => {
    const i = process.argv.indexOf(name);
    return i < 0 ? d : Number(process.argv[i + 1]);
  };
  const f = await measureTransportFloors(arg("--bytes", 4096), arg("--rounds", 2000));
  console.log(
    `round trip of ${f.bytes} B to another process, median of ${f.rounds}: raw TCP ${f.tcpUs.toFixed(0)} us, grpc-js bidi stream ${f.grpcUs.toFixed(0)} us`,
  );
}
