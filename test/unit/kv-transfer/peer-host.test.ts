/**
 * peerHost: the host a KV sender is counted under for --kv-max-transfers-per-peer. Every connection of one
 * machine must map to one key, whatever its port, on IPv4, IPv6 and dual-stack listeners ([::]:port, where
 * grpc-js reports an IPv4 client as "::ffff:a.b.c.d:port", without brackets).
 */
import { describe, expect, it } from "vitest";
import { peerHost } from "@moela/kv-transfer";

describe("peerHost", () => {
  it.each([
    ["10.0.0.7:51234", "10.0.0.7"],
    ["ipv4:10.0.0.7:51234", "10.0.0.7"],
    ["[::1]:51234", "::1"],
    ["ipv6:[fd00::2]:7001", "fd00::2"],
    ["::1:51234", "::1"],
    ["fd00::2:40000", "fd00::2"],
    ["::ffff:127.0.0.1:57684", "127.0.0.1"],
    ["[::ffff:10.0.0.7]:1", "10.0.0.7"],
    ["::1", "::1"],
    ["10.0.0.7", "10.0.0.7"],
  ])("%s -> %s", (peer, host) => {
    expect(peerHost(peer)).toBe(host);
  });

  it("two connections of one machine are one peer; two machines are two", () => {
    expect(peerHost("::ffff:127.0.0.1:50001")).toBe(peerHost("::ffff:127.0.0.1:50002"));
    expect(peerHost("::ffff:127.0.0.1:50001")).toBe(peerHost("127.0.0.1:50003"));
    expect(peerHost("::1:50001")).not.toBe(peerHost("::ffff:127.0.0.1:50001"));
  });
});
