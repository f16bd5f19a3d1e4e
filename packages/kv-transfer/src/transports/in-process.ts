/**
 * The in-process transport: a sender's frames go straight to a receiver of a KvInbox in the same
 * process (tests, one-process clusters). Frames are copied on the way, as a network would, so neither
 * side can see the other's buffers. `intercept` lets a test stand in for a faulty network or a buggy
 * peer: it sees every frame with its index and returns the frames to deliver instead (none, a
 * changed copy, several); returning `"hangup"` ends the stream there, as a dropped connection would.
 */
import { Code } from "@moela/core";
import type { KvChannel, KvConnector, KvFrame, KvOutcome } from "../contract.js";
import type { KvInbox, KvReceiver } from "../receiver.js";

export interface InProcessOptions {
  readonly intercept?: (frame: KvFrame, index: number) => readonly KvFrame[] | "hangup";
  /** Called with each receiver opened (tests inspect its states). */
  readonly onReceiver?: (receiver: KvReceiver) => void;
}

function copyFrame(f: KvFrame): KvFrame {
  switch (f.kind) {
    case "begin":
      return { ...f, promptTokenIds: [...f.promptTokenIds], params: { ...f.params } };
    case "layer":
      return { ...f, shape: [...f.shape], data: f.data.slice(), sha256: f.sha256.slice() };
    case "end":
      return {
        ...f,
        sha256: f.sha256.slice(),
        firstToken: { ...f.firstToken, top: f.firstToken.top === null ? null : f.firstToken.top.map(([id, lp]) => [id, lp] as const) },
        draft: f.draft === null ? null : { token: f.draft.token, probs: f.draft.probs === null ? null : f.draft.probs.slice() },
        rngState: [...f.rngState],
      };
  }
}

class InProcessChannel implements KvChannel {
  readonly outcome: Promise<KvOutcome>;
  private sent = 0;
  private hungUp = false;

  constructor(
    private readonly receiver: KvReceiver,
    private readonly options: InProcessOptions,
  ) {
    this.outcome = receiver.done;
  }

  async send(frame: KvFrame): Promise<void> {
    if (this.hungUp) return;
    const out = this.options.intercept ? this.options.intercept(frame, this.sent) : [frame];
    this.sent++;
    if (out === "hangup") {
      this.hungUp = true;
      this.receiver.close();
      return;
    }
    for (const f of out) this.receiver.receive(copyFrame(f));
    // Let the receiver's outcome (an early failure) reach the sender before its next frame, as a
    // network answer would arrive between writes.
    await new Promise<void>((resolve) => setImmediate(resolve));
  }

  end(): void {
    if (!this.hungUp) this.receiver.close();
  }

  cancel(reason: string): void {
    this.receiver.abort({ code: Code.CANCELLED, reason: `the sender cancelled: ${reason}` });
  }
}

/** A connector whose channels deliver to receivers of `inbox`. */
export function connectInProcess(inbox: KvInbox, options: InProcessOptions = {}): KvConnector {
  return {
    open() {
      const receiver = inbox.open();
      options.onReceiver?.(receiver);
      return new InProcessChannel(receiver, options);
    },
  };
}
