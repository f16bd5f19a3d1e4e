/**
 * DoorbellLoop's order of events, with a recording stand-in for the doorbell (the futex itself is tested in
 * channel.test.ts and across processes in test/integration/expert-host/shared-memory.test.ts): it sleeps only
 * after a whole turn of the event loop found no work, so what was queued behind it runs first; it stops when no
 * work is expected; and a server's loop leaves a watcher that starts it again at the next ring.
 */
import { setImmediate as turn } from "node:timers/promises";
import { DoorbellLoop, type Doorbell } from "@moela/shm-native";
import { describe, expect, it } from "vitest";

/** A doorbell that records sleeps and watchers instead of touching a futex. */
function fakeBell(events: string[]) {
  let rang = false;
  const watchers: (() => void)[] = [];
  const bell = {
    path: "/dev/shm/moela-bell-fake",
    words: new Int32Array(1),
    take: () => {
      const was = rang;
      rang = false;
      return was;
    },
    rung: () => rang,
    wait: (ms: number) => {
      events.push(`sleep ${ms}`);
    },
    watch: (onRing: () => void) => {
      events.push("watch");
      watchers.push(onRing);
      return { close: () => events.push("unwatch") };
    },
  } satisfies Pick<Doorbell, "path" | "words" | "take" | "rung" | "wait" | "watch">;
  return { bell: bell as unknown as Doorbell, ring: () => (rang = true), watchers };
}

describe("DoorbellLoop", () => {
  it("sleeps only after a whole turn found nothing: an immediate queued behind it runs first", async () => {
    const events: string[] = [];
    const { bell } = fakeBell(events);
    let expect_ = 3;
    const loop = new DoorbellLoop({
      bell,
      poll: () => {
        events.push("poll");
        return false;
      },
      expectsWork: () => expect_-- > 0,
      watchWhenIdle: () => false,
    });
    loop.kick();
    setImmediate(() => events.push("caller's next computation"));
    for (let i = 0; i < 6; i++) await turn();
    expect(events.indexOf("caller's next computation")).toBeLessThan(events.findIndex((e) => e.startsWith("sleep")));
    expect(events.filter((e) => e.startsWith("sleep"))).toEqual(["sleep 1", "sleep 1"]);
    loop.close();
  });

  it("stops when no work is expected, and kick() starts it again", async () => {
    const events: string[] = [];
    const { bell } = fakeBell(events);
    let waiting = 1;
    const loop = new DoorbellLoop({
      bell,
      poll: () => {
        events.push("poll");
        if (waiting === 0) return false;
        waiting--;
        return true;
      },
      expectsWork: () => waiting > 0,
      watchWhenIdle: () => false,
      sliceMs: 5,
    });
    loop.kick();
    loop.kick(); // already running: no second chain
    for (let i = 0; i < 4; i++) await turn();
    expect(events).toEqual(["poll", "poll"]);
    waiting = 1;
    loop.kick();
    for (let i = 0; i < 4; i++) await turn();
    expect(events).toEqual(["poll", "poll", "poll", "poll"]);
    loop.close();
  });

  it("a server's loop leaves a watcher when idle, which starts it again at the next ring", async () => {
    const events: string[] = [];
    const { bell, ring, watchers } = fakeBell(events);
    let work = 0;
    const loop = new DoorbellLoop({
      bell,
      poll: () => {
        events.push("poll");
        if (work === 0) return false;
        work--;
        return true;
      },
      expectsWork: () => false,
      watchWhenIdle: () => true,
    });
    loop.kick();
    for (let i = 0; i < 3; i++) await turn();
    expect(events).toEqual(["poll", "watch"]);
    work = 1;
    ring();
    watchers[0]!();
    for (let i = 0; i < 4; i++) await turn();
    expect(events).toEqual(["poll", "watch", "unwatch", "poll", "poll", "watch"]);
    loop.close();
    expect(events.at(-1)).toBe("unwatch");
  });
});
