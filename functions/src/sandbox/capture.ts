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
    if (room <= 0) return;
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
