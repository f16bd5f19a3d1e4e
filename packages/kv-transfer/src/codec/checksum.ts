/**
 * Transfer integrity: a SHA-256 of every layer chunk's data, and a running SHA-256 over those
 * digests in the order sent. The per-chunk digest catches damaged bytes; the running one catches a
 * lost, duplicated or reordered chunk (KvEnd.sha256).
 */
import { createHash, type Hash } from "node:crypto";

export const SHA256_BYTES = 32;

export function sha256(data: Uint8Array): Uint8Array {
  return new Uint8Array(createHash("sha256").update(data).digest());
}

export function sameDigest(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i]! ^ b[i]!;
  return diff === 0;
}

export function hex(d: Uint8Array): string {
  return Buffer.from(d.buffer, d.byteOffset, d.byteLength).toString("hex");
}

/** SHA-256 over the concatenation of chunk digests, fed one chunk at a time. */
export class RunningChecksum {
  private readonly hash: Hash = createHash("sha256");
  private chunks = 0;

  add(chunkDigest: Uint8Array): void {
    this.hash.update(chunkDigest);
    this.chunks++;
  }

  get count(): number {
    return this.chunks;
  }

  /** The total; the checksum cannot be fed after this. */
  digest(): Uint8Array {
    return new Uint8Array(this.hash.digest());
  }
}
