/**
 * The shared-memory channel's file and checks, in one process (both ends map the same file): a request and its
 * reply cross intact, a slot is read only once its sequence number is published, and a file that is not the
 * caller's (missing, another nonce, a foreign path, a truncated header) is refused with a clear error.
 * test/integration/shm/ runs the same channel between two processes.
 */
import { randomBytes } from "node:crypto";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, rmSync, truncateSync, writeFileSync, unlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Doorbell, monotonicNs, PeerDoorbell, removeOrphans, RingTogether, ShmChannel, shmNative, WaitClock } from "@moela/shm-native";
import { afterEach, describe, expect, it } from "vitest";

const made: ShmChannel[] = [];
afterEach(() => {
  for (const ch of made.splice(0)) ch.unlink();
});

function channel(slots = 2, slotBytes = 256): ShmChannel {
  const ch = ShmChannel.create(slots, slotBytes);
  made.push(ch);
  return ch;
}

describe.skipIf(shmNative === null)("ShmChannel", () => {
  it("carries a request to the server's mapping and the reply back, per slot and sequence number", () => {
    const caller = channel();
    const server = ShmChannel.open(caller.path, caller.nonce);
    expect(server.slots).toBe(2);
    expect(server.slotBytes).toBe(256);

    expect(server.requestSeq(1)).toBe(0);
    const request = randomBytes(200);
    caller.writeRequest(1, request, 7);
    expect(server.requestSeq(1)).toBe(7);
    expect(server.requestSeq(0)).toBe(0);
    expect(Buffer.from(server.requestView(1))).toEqual(request);

    expect(caller.takeReply(1, 7)).toBeNull();
    const reply = randomBytes(256);
    expect(server.writeReply(1, reply, 7)).toBe(true);
    expect(caller.takeReply(1, 6)).toBeNull();
    const got = caller.takeReply(1, 7)!;
    expect(got).toEqual(reply);
    // A copy: the slot's next reply does not change what the caller holds.
    server.writeReply(1, Buffer.alloc(256, 1), 8);
    expect(got).toEqual(reply);
  });

  it("stamps each message with when it was published, on one clock for every process, for the reader to time its wait", () => {
    const caller = channel();
    const server = ShmChannel.open(caller.path, caller.nonce);
    const before = monotonicNs();
    caller.writeRequest(0, Buffer.alloc(16), 1);
    const published = server.requestPublishedAt(0);
    expect(published).toBeGreaterThanOrEqual(before);
    expect(published).toBeLessThanOrEqual(monotonicNs());
    // Per slot: the other slot's stamp is untouched.
    expect(server.requestPublishedAt(1)).toBe(0);

    server.writeReply(0, Buffer.alloc(16), 1);
    const answered = caller.replyPublishedAt(0);
    expect(answered).toBeGreaterThanOrEqual(published);
    expect(answered).toBeLessThanOrEqual(monotonicNs());
    // The request's stamp stays where it was: the two live apart in the slot's header.
    expect(server.requestPublishedAt(0)).toBe(published);
    // The clock is the machine's monotonic one, not this process's own: another process reads it in step.
    const child = Number(spawnSync(process.execPath, ["-e", "process.stdout.write(String(process.hrtime.bigint()))"]).stdout.toString());
    expect(child).toBeGreaterThan(answered);
    expect(child).toBeLessThan(monotonicNs());
  });

  it("refuses a message larger than a slot, either way", () => {
    const caller = channel(1, 64);
    const server = ShmChannel.open(caller.path, caller.nonce);
    expect(() => caller.writeRequest(0, Buffer.alloc(65), 1)).toThrow(/65 bytes exceeds the slot's 64/);
    expect(server.requestSeq(0)).toBe(0);
    expect(server.writeReply(0, Buffer.alloc(65), 1)).toBe(false);
    expect(caller.takeReply(0, 1)).toBeNull();
  });

  it("refuses a file that is not the caller's channel", () => {
    const caller = channel();
    expect(() => ShmChannel.open(caller.path, randomBytes(16))).toThrow(/does not hold the caller's nonce/);
    expect(() => ShmChannel.open("/dev/shm/moela-channel-0-missing", caller.nonce)).toThrow(/open .*No such file/);
    expect(() => ShmChannel.open("/etc/passwd", caller.nonce)).toThrow(/not a moela channel file/);
    expect(() => ShmChannel.open("/dev/shm/moela-channel-../../etc/passwd", caller.nonce)).toThrow(/not a moela channel file/);

    const fake = `/dev/shm/moela-channel-${process.pid}-fake`;
    writeFileSync(fake, Buffer.alloc(4096, 7));
    try {
      expect(() => ShmChannel.open(fake, caller.nonce)).toThrow(/not a channel of version 2/);
    } finally {
      unlinkSync(fake);
    }
    // A channel cut short: its header's slots no longer fit the file.
    const cut = channel(4, 1024);
    truncateSync(cut.path, 2000);
    expect(() => ShmChannel.open(cut.path, cut.nonce)).toThrow(/4 slots of 1024 bytes do not make its 2000 bytes/);
  });

  it("checks its sizes", () => {
    expect(() => ShmChannel.create(0, 64)).toThrow(RangeError);
    expect(() => ShmChannel.create(1, 100)).toThrow(/multiple of 64/);
  });

  it("unlinks the name while both mappings keep working", () => {
    const caller = channel();
    const server = ShmChannel.open(caller.path, caller.nonce);
    caller.unlink();
    expect(existsSync(caller.path)).toBe(false);
    caller.writeRequest(0, Buffer.from("still here"), 1);
    expect(server.requestView(0).toString()).toBe("still here");
  });
});

describe.skipIf(shmNative === null)("Doorbell", () => {
  it("a ring sets it until taken, and a wait on a rung bell returns at once", () => {
    const bell = Doorbell.own();
    expect(Doorbell.own()).toBe(bell);
    const peer = new PeerDoorbell(bell.path);
    bell.take();
    expect(bell.rung()).toBe(false);
    peer.ring();
    peer.ring();
    expect(bell.rung()).toBe(true);
    const t0 = performance.now();
    bell.wait(5_000);
    expect(performance.now() - t0).toBeLessThan(1_000);
    expect(bell.take()).toBe(true);
    expect(bell.take()).toBe(false);
  });

  it("times out a wait nobody rings", () => {
    const bell = Doorbell.own();
    bell.take();
    const t0 = performance.now();
    bell.wait(20);
    expect(performance.now() - t0).toBeGreaterThanOrEqual(15);
  });

  it("RingTogether rings every bell added in one turn, after the code that added them, two per system call", async () => {
    // Three bells of "other processes": files with a doorbell's name, mapped here twice (as theirs and as ours).
    const paths = [0, 1, 2].map((i) => `/dev/shm/moela-bell-${process.pid}-test${i}`);
    const theirs = paths.map((p) => new Int32Array(shmNative!.map(p, 64, true)));
    try {
      const together = new RingTogether();
      for (const p of paths) together.add(new PeerDoorbell(p));
      expect(theirs.map((w) => w[0])).toEqual([0, 0, 0]);
      await Promise.resolve();
      expect(theirs.map((w) => w[0])).toEqual([1, 1, 1]);
    } finally {
      for (const p of paths) unlinkSync(p);
    }
  });

  it("refuses a path that is not a doorbell", () => {
    expect(() => new PeerDoorbell("/etc/passwd")).toThrow(/not a moela doorbell/);
    expect(() => new PeerDoorbell("/dev/shm/moela-bell-0-missing")).toThrow(/No such file/);
  });

  it("a watcher calls back on the event loop after a ring, and not after close", async () => {
    const bell = Doorbell.own();
    const peer = new PeerDoorbell(bell.path);
    let calls = 0;
    let rang!: () => void;
    const first = new Promise<void>((resolve) => (rang = resolve));
    const w = bell.watch(() => {
      calls++;
      rang();
    });
    peer.ring();
    await first;
    expect(calls).toBeGreaterThanOrEqual(1);
    w.close();
    w.close();
    const seen = calls;
    peer.ring();
    await new Promise((r) => setTimeout(r, 50));
    expect(calls).toBe(seen);
  });
});

describe("WaitClock", () => {
  it("times every message of a poll against one reading of the clock, and reads it again after reset()", async () => {
    const clock = new WaitClock();
    const first = monotonicNs() - 2e6;
    const second = first + 1e6;
    const a = clock.secondsSince(first);
    await new Promise((r) => setTimeout(r, 5));
    const b = clock.secondsSince(second);
    expect(a).toBeGreaterThanOrEqual(2e-3);
    expect(a - b).toBeCloseTo(1e-3, 9); // the same "now" for both, although 5 ms passed between them
    clock.reset();
    expect(clock.secondsSince(first)).toBeGreaterThanOrEqual(a + 4e-3);
    expect(clock.secondsSince(monotonicNs() + 1e9)).toBe(0); // a stamp after the reading: no negative wait
  });
});

describe("removeOrphans", () => {
  it("removes the doorbells and channels of processes that are gone, and nothing else", () => {
    const dir = mkdtempSync(join(tmpdir(), "moela-orphans-"));
    try {
      const gone = spawnSync("true").pid!;
      const names = [
        `moela-bell-${gone}-0123abcd`,
        `moela-channel-${gone}-89ef`,
        `moela-bell-${process.pid}-0123abcd`,
        `moela-channel-${process.pid}-89ef`,
        `moela-bell-${gone}-not-hex`,
        "PostgreSQL.12345",
      ];
      for (const n of names) writeFileSync(join(dir, n), "");
      expect(removeOrphans(dir).sort()).toEqual([`moela-bell-${gone}-0123abcd`, `moela-channel-${gone}-89ef`]);
      expect(readdirSync(dir).sort()).toEqual(names.slice(2).sort());
      expect(removeOrphans(join(dir, "missing"))).toEqual([]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
