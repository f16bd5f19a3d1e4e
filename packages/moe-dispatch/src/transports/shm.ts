/**
 * DispatchStream's messages through shared memory, for an expert-host on the caller's machine
 * (ExpertHost.AttachSharedMemory; the channel and doorbells are @moela/shm-native's).
 *
 * A message crosses by a copy into the slot and a futex wake-up, where gRPC pays HTTP/2 framing, grpc-js and two
 * socket wake-ups that the kernel places on the writer's core (docs/PERFORMANCE.md measured the latter making the
 * two hosts of a layer run one after the other). The bytes are DispatchStream's own (stream-codec.ts), so a host
 * answers both paths with the same code and the same bits.
 *
 * - `ShmDispatchCaller` (a prefill or decode instance, one per host): attaches over gRPC, then sends each dispatch
 *   that fits a slot through the channel and waits for its answer on this process's doorbell (`DoorbellLoop`).
 *   The attach call stays open; when it ends (the host died, drained or restarted) every call waiting in the
 *   channel fails UNAVAILABLE, so replicas fail over, and dispatches take the gRPC stream until a new attach.
 * - `ShmDispatchServer` (an expert-host): maps each caller's channel, serves the requests it finds when its
 *   doorbell rings, and answers into the same slot.
 */
import { type ClientReadableStream, Metadata, type ServiceError } from "@grpc/grpc-js";
import { Code, FailedPreconditionError, UnavailableError, errorMessage, type Logger } from "@moela/core";
import type { AttachSharedMemoryResponse, AttachSharedMemoryRequest, DispatchStreamRequest, DispatchStreamResponse, ExpertHostClient } from "@moela/proto-gen";
import { Doorbell, DoorbellLoop, PeerDoorbell, RingTogether, ShmChannel, shmNative, WaitClock } from "@moela/shm-native";
import { decodeDispatchStreamRequest, decodeDispatchStreamResponse, encodeDispatchStreamRequest, encodeDispatchStreamResponse } from "./stream-codec.js";

/** Whether this process can use shared-memory channels at all (Linux, the addon built). */
export const sharedMemoryAvailable = shmNative !== null;

/** Slots per channel: decode keeps at most its micro-batches in flight per host, prefill one chunk. */
const CALLER_SLOTS = 8;
/** Bytes per message each way; larger dispatches (long prefill chunks) take the gRPC stream. The file is sparse. */
const SLOT_BYTES = 4 * 1024 * 1024;
/** After a failed or ended attach, dispatches use gRPC for this long before trying again. */
const REATTACH_AFTER_MS = 5_000;

interface WaitingCall {
  readonly seq: number;
  resolve(reply: DispatchStreamResponse): void;
  reject(err: unknown): void;
}

/** Every caller channel of this process, waited on together: they share the process's doorbell. */
class ReplyWaiter {
  private static instance: ReplyWaiter | undefined;
  readonly bell = Doorbell.own();
  /** A layer's requests to every host are rung together, once all are written. */
  readonly rings = new RingTogether();
  private readonly callers = new Set<ShmDispatchCaller>();
  private readonly loop = new DoorbellLoop({
    bell: this.bell,
    poll: () => {
      let found = false;
      for (const c of this.callers) if (c.collectReplies()) found = true;
      return found;
    },
    expectsWork: () => [...this.callers].some((c) => c.waiting > 0),
    watchWhenIdle: () => false,
  });

  static get(): ReplyWaiter {
    ReplyWaiter.instance ??= new ReplyWaiter();
    return ReplyWaiter.instance;
  }

  add(c: ShmDispatchCaller): void {
    this.callers.add(c);
  }

  remove(c: ShmDispatchCaller): void {
    this.callers.delete(c);
  }

  kick(): void {
    this.loop.kick();
  }
}

export interface ShmDispatchCallerOptions {
  /** How errors name the host. */
  readonly name: string;
  readonly client: ExpertHostClient;
  readonly logger?: Logger | undefined;
  /**
   * Per answer read: the seconds between the host publishing it and this process reading it. That is this
   * process waking up and getting a core, or finishing what it was doing (the shared expert, another
   * micro-batch) first.
   */
  readonly onAnswerWait?: ((seconds: number) => void) | undefined;
}

/** A caller's channel to one expert-host; see the module comment. */
export class ShmDispatchCaller {
  private channel: ShmChannel | undefined;
  private hostBell: PeerDoorbell | undefined;
  private attachCall: ClientReadableStream<AttachSharedMemoryResponse> | undefined;
  private attaching = false;
  private retryAt = 0;
  private closed = false;
  private readonly free: number[] = [];
  private readonly calls = new Map<number, WaitingCall>();
  private readonly waitClock = new WaitClock();
  private nextSeq = 1;
  /** Dispatches sent through the channel, and those that took gRPC while it was attached (too large, no slot). */
  sent = 0;
  overflowed = 0;

  constructor(private readonly o: ShmDispatchCallerOptions) {}

  /**
   * Calls waiting for an answer in the channel. A call whose caller gave up (deadline, abort) still holds its
   * slot until the host answers: the host may be reading the request.
   */
  get waiting(): number {
    return this.calls.size;
  }

  get attached(): boolean {
    return this.channel !== undefined && this.hostBell !== undefined;
  }

  /**
   * Sends `callId`'s request through the channel and resolves with the host's answer; undefined when the channel
   * cannot take it (not attached yet, too large, every slot busy): the caller sends it over gRPC. Starts an attach
   * when there is none.
   */
  call(msg: DispatchStreamRequest, replyBound: number): Promise<DispatchStreamResponse> | undefined {
    if (!this.attached) {
      this.attach();
      return undefined;
    }
    const ch = this.channel!;
    if (replyBound > ch.slotBytes || this.free.length === 0) {
      this.overflowed++;
      return undefined;
    }
    const bytes = encodeDispatchStreamRequest(msg);
    if (bytes.byteLength > ch.slotBytes) {
      this.overflowed++;
      return undefined;
    }
    const slot = this.free.pop()!;
    const seq = this.nextSeq;
    this.nextSeq = seq >= 0x7fff_ffff ? 1 : seq + 1;
    ch.writeRequest(slot, bytes, seq);
    this.sent++;
    const waiter = ReplyWaiter.get();
    const p = new Promise<DispatchStreamResponse>((resolve, reject) => this.calls.set(slot, { seq, resolve, reject }));
    waiter.rings.add(this.hostBell!);
    waiter.kick();
    return p;
  }

  /** Resolves every call whose answer arrived; true when there was one. */
  collectReplies(): boolean {
    const ch = this.channel;
    if (ch === undefined) return false;
    let found = false;
    this.waitClock.reset();
    for (const [slot, c] of this.calls) {
      const reply = ch.takeReply(slot, c.seq);
      if (reply === null) continue;
      found = true;
      this.o.onAnswerWait?.(this.waitClock.secondsSince(ch.replyPublishedAt(slot)));
      this.calls.delete(slot);
      this.free.push(slot);
      try {
        c.resolve(decodeDispatchStreamResponse(reply));
      } catch (err) {
        c.reject(new UnavailableError(`${this.o.name} sent a malformed answer through shared memory: ${errorMessage(err)}`));
      }
    }
    return found;
  }

  close(): void {
    this.closed = true;
    this.detach(new UnavailableError(`${this.o.name}: the transport was closed`));
  }

  private attach(): void {
    if (this.attaching || this.closed || Date.now() < this.retryAt) return;
    this.attaching = true;
    let channel: ShmChannel;
    try {
      channel = ShmChannel.create(CALLER_SLOTS, SLOT_BYTES);
    } catch (err) {
      this.attaching = false;
      this.retryAt = Number.POSITIVE_INFINITY;
      this.o.logger?.warn({ host: this.o.name, err: errorMessage(err) }, "no shared-memory channel: dispatches take gRPC");
      return;
    }
    const waiter = ReplyWaiter.get();
    const req: AttachSharedMemoryRequest = { channelPath: channel.path, bellPath: waiter.bell.path, nonce: channel.nonce };
    const call = this.o.client.attachSharedMemory(req, new Metadata());
    this.attachCall = call;
    let opened = false;
    call.on("data", (ev: AttachSharedMemoryResponse) => {
      if (opened) return;
      opened = true;
      this.attaching = false;
      try {
        this.hostBell = new PeerDoorbell(ev.bellPath);
      } catch (err) {
        call.cancel();
        this.failAttach(channel, `the host's doorbell: ${errorMessage(err)}`, true);
        return;
      }
      // Both sides hold the mapping now; the name is no longer needed.
      channel.unlink();
      this.channel = channel;
      this.free.length = 0;
      for (let s = CALLER_SLOTS - 1; s >= 0; s--) this.free.push(s);
      waiter.add(this);
      this.o.logger?.info({ host: this.o.name }, "dispatches go through shared memory");
    });
    const ended = (err: ServiceError | undefined): void => {
      if (this.attachCall !== call) return;
      this.attachCall = undefined;
      if (!opened) {
        this.attaching = false;
        // A host elsewhere (FAILED_PRECONDITION) or one that predates the method (UNIMPLEMENTED) never attaches;
        // anything else (the host not up yet, a restart) may pass, so it is tried again later.
        const never = err !== undefined && (err.code === Code.FAILED_PRECONDITION || err.code === Code.UNIMPLEMENTED);
        this.failAttach(channel, err === undefined ? "the host ended the call" : `status ${err.code}: ${err.details}`, never);
        return;
      }
      this.retryAt = Date.now() + REATTACH_AFTER_MS;
      this.detach(new UnavailableError(`${this.o.name}: its shared-memory channel closed${err === undefined ? "" : ` (${err.details})`}`));
    };
    call.on("error", (err: ServiceError) => ended(err));
    call.on("end", () => ended(undefined));
  }

  private failAttach(channel: ShmChannel, why: string, never: boolean): void {
    channel.unlink();
    this.retryAt = never ? Number.POSITIVE_INFINITY : Date.now() + REATTACH_AFTER_MS;
    this.o.logger?.info({ host: this.o.name, reason: why }, never ? "no shared-memory channel: dispatches take gRPC" : "no shared-memory channel yet");
  }

  private detach(err: unknown): void {
    this.attachCall?.cancel();
    this.attachCall = undefined;
    if (this.channel === undefined) return;
    this.channel = undefined;
    this.hostBell = undefined;
    ReplyWaiter.get().remove(this);
    for (const c of this.calls.values()) c.reject(err);
    this.calls.clear();
    this.free.length = 0;
  }
}

/** What a host does with one DispatchStream request (the gRPC stream's own handler). */
export type ServeDispatchStream = (msg: DispatchStreamRequest, signal: AbortSignal) => Promise<DispatchStreamResponse>;

export interface ShmDispatchServerOptions {
  readonly serve: ServeDispatchStream;
  readonly logger?: Logger | undefined;
  /**
   * Per request read: the seconds between the caller publishing it and this host reading it. That is this
   * host waking up and getting a core, or finishing the requests before it.
   */
  readonly onRequestWait?: ((seconds: number) => void) | undefined;
}

interface AttachedChannel {
  readonly channel: ShmChannel;
  readonly callerBell: PeerDoorbell;
  readonly signal: AbortSignal;
  /** Per slot, the request sequence number last taken. */
  readonly taken: Int32Array;
}

/** How long a host keeps sleeping on its doorbell after the last request before it leaves a watcher. */
const SERVER_IDLE_MS = 100;

/** An expert-host's side of every attached channel; see the module comment. */
export class ShmDispatchServer {
  private readonly attached = new Set<AttachedChannel>();
  /** Made at the first attach, so that a host without the addon still starts. */
  private loop: DoorbellLoop | undefined;
  private lastRequestAt = 0;
  private readonly waitClock = new WaitClock();
  /** Requests being answered. */
  private inFlight = 0;

  constructor(private readonly o: ShmDispatchServerOptions) {}

  /** Maps a caller's channel; throws FailedPreconditionError when it cannot (see the rpc's comment). */
  attach(req: AttachSharedMemoryRequest, signal: AbortSignal): { bellPath: string; detach(): void } {
    if (!sharedMemoryAvailable) throw new FailedPreconditionError("this expert-host has no shared-memory support");
    // A caller in this very process (tests, one-process setups) would share the doorbell, and one side's wait
    // would hold up the other's event loop: it keeps gRPC.
    if (req.bellPath === Doorbell.own().path) throw new FailedPreconditionError("the caller is this process");
    let a: AttachedChannel;
    try {
      const channel = ShmChannel.open(req.channelPath, req.nonce);
      a = { channel, callerBell: new PeerDoorbell(req.bellPath), signal, taken: new Int32Array(channel.slots) };
    } catch (err) {
      throw new FailedPreconditionError(`cannot attach the caller's shared memory: ${errorMessage(err)}`);
    }
    // Requests written before this attach (none: the caller waits for the answer) would carry sequence 0.
    for (let s = 0; s < a.channel.slots; s++) a.taken[s] = a.channel.requestSeq(s);
    // The loop sleeps on the doorbell only while nothing is in flight: an answer may be computed off the event
    // loop, and a sleeping loop would hold up its completion. When the last answer is written the loop looks
    // for new requests again (kick), so a ring meanwhile is not lost.
    this.loop ??= new DoorbellLoop({
      bell: Doorbell.own(),
      poll: () => this.poll(),
      expectsWork: () => this.attached.size > 0 && this.inFlight === 0 && performance.now() - this.lastRequestAt < SERVER_IDLE_MS,
      watchWhenIdle: () => this.attached.size > 0 && this.inFlight === 0,
    });
    this.attached.add(a);
    this.lastRequestAt = performance.now();
    this.loop.kick();
    return { bellPath: Doorbell.own().path, detach: () => this.attached.delete(a) };
  }

  close(): void {
    this.attached.clear();
    this.loop?.close();
  }

  private poll(): boolean {
    let found = false;
    this.waitClock.reset();
    for (const a of this.attached) {
      for (let slot = 0; slot < a.channel.slots; slot++) {
        const seq = a.channel.requestSeq(slot);
        if (seq === a.taken[slot]) continue;
        a.taken[slot] = seq;
        found = true;
        this.o.onRequestWait?.(this.waitClock.secondsSince(a.channel.requestPublishedAt(slot)));
        void this.answer(a, slot, seq);
      }
    }
    if (found) this.lastRequestAt = performance.now();
    return found;
  }

  private async answer(a: AttachedChannel, slot: number, seq: number): Promise<void> {
    this.inFlight++;
    try {
      let reply: DispatchStreamResponse;
      let callId = 0;
      try {
        const msg = decodeDispatchStreamRequest(a.channel.requestView(slot));
        callId = msg.callId;
        reply = await this.o.serve(msg, a.signal);
      } catch (err) {
        if (a.signal.aborted) return;
        reply = { callId, errorCode: Code.INVALID_ARGUMENT, errorMessage: `a malformed request in shared memory: ${errorMessage(err)}` };
      }
      if (!this.attached.has(a)) return;
      if (!a.channel.writeReply(slot, encodeDispatchStreamResponse(reply), seq)) {
        const tooLarge = { callId, errorCode: Code.RESOURCE_EXHAUSTED, errorMessage: "the answer is larger than the shared-memory slot" };
        a.channel.writeReply(slot, encodeDispatchStreamResponse(tooLarge), seq);
        this.o.logger?.warn({ slotBytes: a.channel.slotBytes }, "a dispatch answer did not fit its shared-memory slot");
      }
      a.callerBell.ring();
    } finally {
      this.inFlight--;
      this.lastRequestAt = performance.now();
      if (this.inFlight === 0) this.loop?.kick();
    }
  }
}
