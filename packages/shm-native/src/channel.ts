/**
 * A request/reply channel between two processes of one machine, in a file under /dev/shm that both map, and
 * the doorbells that tell a process to look at its channels.
 *
 * - The caller creates the channel file: a header (magic, version, slot count and size, a random nonce) and
 *   `slots` slots, each a request area and a reply area of `slotBytes`. A call takes a free slot, writes its
 *   request and the slot's request sequence number, and rings the server's doorbell; the server answers in the
 *   same slot, writes the reply sequence number (equal to the request's) and rings the caller's doorbell. A
 *   slot is reused only after its reply was read, so neither side ever reads a half-written message.
 * - A doorbell is a file of one 32-bit counter per process. Every peer that wants the process's attention
 *   increments it and wakes it (a futex), so one wait serves all of a process's channels.
 * - Sequence numbers and lengths are read and written with Atomics (sequentially consistent), which orders the
 *   message bytes before the number that publishes them.
 * - Each side also stamps the time it published its message (CLOCK_MONOTONIC, one clock for every process on the
 *   machine), so the reader can tell how long the message waited for it: for the process to wake up and get a core.
 */
import { randomBytes } from "node:crypto";
import { shmNative, shmLoadError, type ShmNative } from "./native.js";

const MAGIC = 0x4853_4d4d; // "MMSH" little-endian
const VERSION = 2;
const HEADER_BYTES = 64;
const SLOT_HEADER_BYTES = 64;
const NONCE_BYTES = 16;
/** The directory of the files: a tmpfs on Linux, so the pages are memory and an unwritten page costs none. */
export const SHM_DIR = "/dev/shm";

function native(): ShmNative {
  if (shmNative === null) throw new Error(`shared memory is not available: ${shmLoadError?.message ?? "unknown"}`);
  return shmNative;
}

function uniquePath(kind: string): string {
  return `${SHM_DIR}/moela-${kind}-${process.pid}-${randomBytes(8).toString("hex")}`;
}

/** Slot i's words: [request seq, request length, reply seq, reply length], then two float64 publication times. */
const REQ_SEQ = 0;
const REQ_LEN = 1;
const REP_SEQ = 2;
const REP_LEN = 3;
/** Float64 indices within a slot's header: when the request and the reply were published, ns of monotonicNs(). */
const REQ_AT = 2;
const REP_AT = 3;

/** CLOCK_MONOTONIC in nanoseconds: the same clock in every process of the machine (exact as a double for 104 days). */
export function monotonicNs(): number {
  return Number(process.hrtime.bigint());
}

/**
 * Seconds from a message's publish stamp to now, for a poll that times each message it finds. The clock is read
 * once per poll (reset() at its start), at the first message, so a poll that finds none does not read it.
 */
export class WaitClock {
  private nowNs = 0;

  reset(): void {
    this.nowNs = 0;
  }

  secondsSince(stampNs: number): number {
    this.nowNs ||= monotonicNs();
    return Math.max(0, this.nowNs - stampNs) / 1e9;
  }
}

export class ShmChannel {
  private readonly words: Int32Array;
  private readonly times: Float64Array;
  private readonly bytes: Buffer;

  private constructor(
    /** The file's path (already unlinked once both sides mapped it). */
    readonly path: string,
    buffer: ArrayBuffer,
    readonly slots: number,
    readonly slotBytes: number,
  ) {
    this.words = new Int32Array(buffer);
    this.times = new Float64Array(buffer);
    this.bytes = Buffer.from(buffer);
  }

  static fileBytes(slots: number, slotBytes: number): number {
    return HEADER_BYTES + slots * (SLOT_HEADER_BYTES + 2 * slotBytes);
  }

  /** The caller's side: a new channel file of `slots` slots, each holding messages up to `slotBytes` each way. */
  static create(slots: number, slotBytes: number): ShmChannel {
    if (!Number.isInteger(slots) || slots < 1 || slots > 1024) throw new RangeError(`slots must be 1..1024, got ${slots}`);
    if (!Number.isInteger(slotBytes) || slotBytes < 64 || slotBytes % 64 !== 0 || slotBytes > 2 ** 30) {
      throw new RangeError(`slotBytes must be a multiple of 64 in [64, 2^30], got ${slotBytes}`);
    }
    const path = uniquePath("channel");
    const buffer = native().map(path, ShmChannel.fileBytes(slots, slotBytes), true);
    const ch = new ShmChannel(path, buffer, slots, slotBytes);
    ch.words[0] = MAGIC;
    ch.words[1] = VERSION;
    ch.words[2] = slots;
    ch.words[3] = slotBytes;
    randomBytes(NONCE_BYTES).copy(ch.bytes, 16);
    return ch;
  }

  /**
   * The server's side: maps the caller's file and checks its header and nonce. Throws when the file is missing
   * (another machine or container), is not a channel of this version, or holds another nonce.
   */
  static open(path: string, nonce: Uint8Array): ShmChannel {
    if (!path.startsWith(`${SHM_DIR}/moela-channel-`) || path.includes("/..")) throw new Error(`${path} is not a moela channel file`);
    const buffer = native().map(path, 0, false);
    const words = new Int32Array(buffer, 0, HEADER_BYTES / 4);
    if (buffer.byteLength < HEADER_BYTES || words[0] !== MAGIC || words[1] !== VERSION) throw new Error(`${path} is not a channel of version ${VERSION}`);
    const slots = words[2]!;
    const slotBytes = words[3]!;
    if (slots < 1 || slotBytes < 64 || buffer.byteLength !== ShmChannel.fileBytes(slots, slotBytes)) {
      throw new Error(`${path}: ${slots} slots of ${slotBytes} bytes do not make its ${buffer.byteLength} bytes`);
    }
    const ch = new ShmChannel(path, buffer, slots, slotBytes);
    if (nonce.byteLength !== NONCE_BYTES || !ch.nonce.equals(nonce)) throw new Error(`${path} does not hold the caller's nonce`);
    return ch;
  }

  get nonce(): Buffer {
    return this.bytes.subarray(16, 16 + NONCE_BYTES);
  }

  private slotBase(slot: number): number {
    return HEADER_BYTES + slot * (SLOT_HEADER_BYTES + 2 * this.slotBytes);
  }

  private word(slot: number, w: number): number {
    return this.slotBase(slot) / 4 + w;
  }

  private time(slot: number, t: number): number {
    return this.slotBase(slot) / 8 + t;
  }

  /** Caller: writes `message` as slot's request number `seq` (nonzero). */
  writeRequest(slot: number, message: Uint8Array, seq: number): void {
    if (message.byteLength > this.slotBytes) throw new RangeError(`a message of ${message.byteLength} bytes exceeds the slot's ${this.slotBytes}`);
    this.bytes.set(message, this.slotBase(slot) + SLOT_HEADER_BYTES);
    this.times[this.time(slot, REQ_AT)] = monotonicNs();
    Atomics.store(this.words, this.word(slot, REQ_LEN), message.byteLength);
    Atomics.store(this.words, this.word(slot, REQ_SEQ), seq);
  }

  /** Caller, after takeReply found the reply: when the server published it (monotonicNs()). */
  replyPublishedAt(slot: number): number {
    return this.times[this.time(slot, REP_AT)]!;
  }

  /** Caller: the reply to request `seq`, copied out of the slot (which is free again after this), or null if none yet. */
  takeReply(slot: number, seq: number): Buffer | null {
    if (Atomics.load(this.words, this.word(slot, REP_SEQ)) !== seq) return null;
    const len = Atomics.load(this.words, this.word(slot, REP_LEN));
    const at = this.slotBase(slot) + SLOT_HEADER_BYTES + this.slotBytes;
    return Buffer.from(this.bytes.subarray(at, at + len));
  }

  /** Server: the slot's request sequence number (0 before the first). */
  requestSeq(slot: number): number {
    return Atomics.load(this.words, this.word(slot, REQ_SEQ));
  }

  /** Server, once requestSeq showed a new request: when the caller published it (monotonicNs()). */
  requestPublishedAt(slot: number): number {
    return this.times[this.time(slot, REQ_AT)]!;
  }

  /** Server: a view of the slot's request, valid until the reply is written. */
  requestView(slot: number): Buffer {
    const len = Atomics.load(this.words, this.word(slot, REQ_LEN));
    if (len < 0 || len > this.slotBytes) throw new RangeError(`slot ${slot} claims a request of ${len} bytes (at most ${this.slotBytes})`);
    const at = this.slotBase(slot) + SLOT_HEADER_BYTES;
    return this.bytes.subarray(at, at + len);
  }

  /** Server: writes the reply to request `seq`; false when it does not fit the slot (nothing written). */
  writeReply(slot: number, message: Uint8Array, seq: number): boolean {
    if (message.byteLength > this.slotBytes) return false;
    this.bytes.set(message, this.slotBase(slot) + SLOT_HEADER_BYTES + this.slotBytes);
    this.times[this.time(slot, REP_AT)] = monotonicNs();
    Atomics.store(this.words, this.word(slot, REP_LEN), message.byteLength);
    Atomics.store(this.words, this.word(slot, REP_SEQ), seq);
    return true;
  }

  /** Removes the file's name (the mappings stay); the caller does this once the server mapped it. */
  unlink(): void {
    native().unlink(this.path);
  }
}
