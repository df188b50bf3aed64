/**
 * Admission control: at most `capacity` runs at once, each on its own slot (slot n runs as uid
 * base+n), and a bounded FIFO queue with a maximum wait. Beyond that: 429 with Retry-After.
 */
import { ApiError } from './errors';

export interface Lease {
  slot: number;
  queueMs: number;
  release(): void;
}

interface Waiter {
  grant(slot: number): void;
  enqueuedAt: number;
}

export class Admission {
  private readonly freeSlots: number[];
  private readonly waiters: Waiter[] = [];
  private closedReason: string | undefined;

  constructor(
    readonly capacity: number,
    private readonly maxQueue: number,
    private readonly maxWaitMs: number,
    private readonly retryAfterS: number,
  ) {
    this.freeSlots = Array.from({ length: capacity }, (_, i) => i);
  }

  get inFlight(): number {
    return this.capacity - this.freeSlots.length;
  }

  get queued(): number {
    return this.waiters.length;
  }

  /** Stop admitting: new and queued requests are refused with 503. */
  close(reason: string): void {
    this.closedReason = reason;
    for (const waiter of this.waiters.splice(0)) waiter.grant(-1);
  }

  acquire(signal?: AbortSignal): Promise<Lease> {
    const enqueuedAt = performance.now();
    if (this.closedReason) return Promise.reject(this.shuttingDown());
    // Least recently used slot first: its warm child has had the longest time to get ready.
    const slot = this.freeSlots.shift();
    if (slot !== undefined) return Promise.resolve(this.lease(slot, enqueuedAt));
    if (this.waiters.length >= this.maxQueue) {
      return Promise.reject(this.overloaded(`all ${this.capacity} run slots are busy and ${this.waiters.length} requests are already queued`));
    }
    return new Promise((resolve, reject) => {
      const waiter: Waiter = {
        enqueuedAt,
        grant: (granted) => {
          clearTimeout(timer);
          signal?.removeEventListener('abort', onAbort);
          if (granted < 0) reject(this.shuttingDown());
          else resolve(this.lease(granted, enqueuedAt));
        },
      };
      const leave = () => {
        const index = this.waiters.indexOf(waiter);
        if (index >= 0) this.waiters.splice(index, 1);
      };
      const timer = setTimeout(() => {
        leave();
        signal?.removeEventListener('abort', onAbort);
        reject(this.overloaded(`no run slot became free within ${this.maxWaitMs} ms`));
      }, this.maxWaitMs);
      const onAbort = () => {
        leave();
        clearTimeout(timer);
        reject(new ApiError('killed', 'the client closed the connection while queued'));
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.waiters.push(waiter);
    });
  }

  private lease(slot: number, enqueuedAt: number): Lease {
    let released = false;
    return {
      slot,
      queueMs: performance.now() - enqueuedAt,
      release: () => {
        if (released) return;
        released = true;
        const next = this.waiters.shift();
        if (next) next.grant(slot);
        else this.freeSlots.push(slot);
      },
    };
  }

  private overloaded(message: string): ApiError {
    return new ApiError('overloaded', message, {}, { 'Retry-After': String(this.retryAfterS) });
  }

  private shuttingDown(): ApiError {
    return new ApiError('shutting_down', this.closedReason ?? 'the instance is shutting down');
  }
}
