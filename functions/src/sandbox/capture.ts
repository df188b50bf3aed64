/** Collects a stream up to a byte cap; the rest is read and dropped so the writer never blocks. */
import type { Readable } from 'stream';
import { settlesWithin } from '../deadline';
import type { CapturedText } from './types';

/** What a run that never started printed. */
export const EMPTY_TEXT: CapturedText = Object.freeze({ text: '', bytes: 0, truncated: false });

/** Waits for the captures to see their streams end, but no longer than ms (a stream a killed
 * process's leftover still holds open is not waited for forever). */
export async function drainWithin(captures: CappedCapture[], ms: number): Promise<void> {
  await settlesWithin(Promise.all(captures.map((c) => c.done)), ms);
}

export class CappedCapture {
  private readonly chunks: Buffer[] = [];
  private kept = 0;
  private total = 0;
  readonly done: Promise<void>;

  constructor(
    stream: Readable,
    private readonly maxBytes: number,
  ) {
    this.done = new Promise((resolve) => {
      stream.on('data', (chunk: Buffer) => this.push(chunk));
      stream.on('close', resolve);
      stream.on('end', resolve);
      stream.on('error', () => resolve());
    });
  }

  private push(chunk: Buffer): void {
    this.total += chunk.length;
    const room = this.maxBytes - this.kept;
    if (room <= 0) {
      release(chunk);
      return;
    }
    const piece = chunk.length <= room ? chunk : chunk.subarray(0, room);
    this.chunks.push(piece);
    this.kept += piece.length;
  }

  get overflowed(): boolean {
    return this.total > this.maxBytes;
  }

  buffer(): Buffer {
    return Buffer.concat(this.chunks, this.kept);
  }

  /** Text as UTF-8; invalid sequences (and a character cut by the cap) become U+FFFD. */
  result(): CapturedText {
    return { text: this.buffer().toString('utf8'), bytes: this.total, truncated: this.overflowed };
  }
}

/**
 * Frees a dropped chunk's memory now rather than at the next garbage collection. Each read of a
 * pipe or socket gets a fresh buffer (64 KiB when the writer floods) from glibc malloc, and V8
 * frees it only when it collects the Buffer: during an endless flood thousands pile up between
 * collections, the heap grows to a high-water mark, and what is freed later stays in the process,
 * fragmented: bench/soak.js --kinds flood_forever, 60 s, settled RSS 95 -> 177 MiB (the growth all
 * in glibc's [heap], free, and given back by a malloc_trim(0)); with this, 96 -> 114 MiB (peak under
 * load 225 -> 136 MiB); the whole mix for 120 s, +53% -> +33%. Detaching the chunk's ArrayBuffer
 * (transfer) drops its backing store at once, so the next read reuses it. Only a chunk that is its
 * whole ArrayBuffer (a read's own, never a slice of Node's pool or of another chunk) is released;
 * nothing else holds it, as the capture is the stream's only consumer. glibc settings do not help
 * cheaply: MALLOC_ARENA_MAX=2 and MALLOC_TRIM_THRESHOLD_ change nothing (the free memory is below
 * live chunks, not at the top), MALLOC_MMAP_THRESHOLD_=16384 removes the growth but makes reading
 * a pipe 5 to 7 times as costly (an mmap and munmap per read).
 */
function release(chunk: Buffer): void {
  const store = chunk.buffer;
  if (!(store instanceof ArrayBuffer) || chunk.byteOffset !== 0 || chunk.byteLength !== store.byteLength) return;
  try {
    // ES2024 (Node 22 and later); absent from this project's TypeScript lib.
    (store as ArrayBuffer & { transfer?: (length: number) => ArrayBuffer }).transfer?.(0);
  } catch {
    // Not detachable: left to the garbage collector, as before.
  }
}
