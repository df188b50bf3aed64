/**
 * Admission control: at most `capacity` runs at once, each on its own slot (slot n runs as uid
 * base+n), and a bounded FIFO queue with a maximum wait. Beyond that: 429 with Retry-After.
 *
 * Retry-After is the queue's drain time as it stands: a request refused now would have been
 * position `queued + 1` in the queue, and `capacity` slots free up one run every
 * `runMs / capacity` on average, so it says floor((queued + 1) x runMs / capacity) seconds, at least 1.
 * Rounded down, not up: clients that honour it come back while the queue still holds work, so
 * the slots never idle waiting for them (rounded up, a queue that drains in 1.3 s sent every
 * client away for 2 s, and goodput at 4x the capacity fell to 0.7x the peak).
 * `runMs` is a moving average of how long recent leases held their slot (the run and its cleanup),
 * raised to the age of the youngest run in flight when every slot is busy with runs older than
 * that average (a slowdown shows before those runs end), and bounded by the longest a run may take.
 *
 * A request may say which free slots it prefers (the warm path's: those whose waiting child suits
 * its script): it gets the least recently used of them, else the least recently used free slot.
 * Queued requests take whichever slot frees first.
 *
 * A slot out of use (its uid quarantined: a process of an earlier run survived SIGKILL) is never
 * handed out while another slot could serve: a request that finds only such slots free waits in
 * the queue for a healthy one. Only when every slot is out of use does it get one, whose run
 * answers 503 with the reason.
 */
import { ApiError } from './errors';

export interface Lease {
  slot: number;
  queueMs: number;
  release(): void;
}

export interface AdmissionOptions {
  /** Milliseconds on a monotonic clock; performance.now() by default (tests inject a fake one). */
  now?: () => number;
  /** Weight of the newest run in the moving average of run durations, in (0, 1]; 0.2 by default. */
  smoothing?: number;
}

interface Waiter {
  grant(slot: number): void;
  enqueuedAt: number;
}

export class Admission {
  private readonly freeSlots: number[];
  private readonly waiters: Waiter[] = [];
  /** When each slot in use was granted (ms on `now`). */
  private readonly grantedAt = new Map<number, number>();
  private averageRunMs: number | undefined;
  private closedReason: string | undefined;
  private readonly now: () => number;
  private readonly smoothing: number;
  /** Set once the sandbox is known (service.ts): whether a slot is out of use now. */
  outOfUse: (slot: number) => boolean = () => false;

  /**
   * `maxRunS`: the longest one run may hold its slot, in seconds (SCRIPT_TIMEOUT_MS rounded up):
   * no estimate of a run's duration exceeds it.
   */
  constructor(
    readonly capacity: number,
    private readonly maxQueue: number,
    private readonly maxWaitMs: number,
    private readonly maxRunS: number,
    options: AdmissionOptions = {},
  ) {
    this.freeSlots = Array.from({ length: capacity }, (_, i) => i);
    this.now = options.now ?? (() => performance.now());
    this.smoothing = options.smoothing ?? 0.2;
    if (!(this.smoothing > 0 && this.smoothing <= 1)) throw new RangeError(`smoothing must lie in (0, 1], got ${this.smoothing}`);
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

  /**
   * The refusal acquire() would give right now without waiting (503 when closed, 429 when every
   * slot is busy and the queue is full), or undefined. Costs no allocation when admitting: call it
   * before reading a request's body, so a refused request costs almost nothing. acquire() still
   * decides: the state may change while the body is read.
   */
  refusal(): ApiError | undefined {
    if (this.closedReason) return this.shuttingDown();
    if (this.freeSlots.length === 0 && this.waiters.length >= this.maxQueue) return this.queueFull();
    return undefined;
  }

  /**
   * Seconds until a request arriving now would get a slot, in whole seconds rounded down:
   * floor((queued + 1) x runMs / capacity), at least 1 (0 would invite an immediate retry).
   */
  retryAfterSeconds(): number {
    const drainMs = ((this.waiters.length + 1) * this.estimatedRunMs()) / this.capacity;
    return Math.max(1, Math.floor(drainMs / 1000));
  }

  /** The expected time one run holds its slot, in ms (see the file's comment). */
  estimatedRunMs(): number {
    let estimate = this.averageRunMs ?? 0;
    if (this.freeSlots.length === 0 && this.grantedAt.size > 0) {
      const now = this.now();
      let youngest = Infinity;
      for (const granted of this.grantedAt.values()) youngest = Math.min(youngest, now - granted);
      estimate = Math.max(estimate, youngest);
    }
    return Math.min(estimate, this.maxRunS * 1000);
  }

  /** A free slot (the least recently used one `prefer` accepts, else the least recently used), or a place in the queue. */
  acquire(signal?: AbortSignal, prefer?: (slot: number) => boolean): Promise<Lease> {
    const enqueuedAt = this.now();
    if (this.closedReason) return Promise.reject(this.shuttingDown());
    const slot = this.takeFreeSlot(prefer);
    if (slot !== undefined) return Promise.resolve(this.lease(slot, enqueuedAt));
    if (this.waiters.length >= this.maxQueue) return Promise.reject(this.queueFull());
    // (Free slots may remain here, every one out of use: a healthy slot's release grants the queue.)
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

  /** freeSlots is in order of release: least recently used first, whose warm child has had the longest time to get ready. */
  private takeFreeSlot(prefer?: (slot: number) => boolean): number | undefined {
    const inUse = (slot: number) => !this.outOfUse(slot);
    let index = prefer ? this.freeSlots.findIndex((slot) => inUse(slot) && prefer(slot)) : -1;
    if (index < 0) index = this.freeSlots.findIndex(inUse);
    // Only out-of-use slots are free: wait for a healthy one, unless there is none at all.
    if (index < 0 && this.freeSlots.length > 0 && this.allOutOfUse()) index = 0;
    return index >= 0 ? this.freeSlots.splice(index, 1)[0] : undefined;
  }

  private allOutOfUse(): boolean {
    for (let slot = 0; slot < this.capacity; slot++) if (!this.outOfUse(slot)) return false;
    return true;
  }

  private lease(slot: number, enqueuedAt: number): Lease {
    let released = false;
    const grantedAt = this.now();
    this.grantedAt.set(slot, grantedAt);
    return {
      slot,
      queueMs: grantedAt - enqueuedAt,
      release: () => {
        if (released) return;
        released = true;
        this.grantedAt.delete(slot);
        this.recordRun(this.now() - grantedAt);
        const next = this.waiters.shift();
        if (next) next.grant(slot);
        else this.freeSlots.push(slot);
      },
    };
  }

  private recordRun(ms: number): void {
    const bounded = Math.max(0, Math.min(ms, this.maxRunS * 1000));
    this.averageRunMs = this.averageRunMs === undefined ? bounded : this.averageRunMs + this.smoothing * (bounded - this.averageRunMs);
  }

  private queueFull(): ApiError {
    return this.overloaded(`all ${this.capacity} run slots are busy and ${this.waiters.length} requests are already queued`);
  }

  private overloaded(message: string): ApiError {
    return new ApiError('overloaded', message, {}, { 'Retry-After': String(this.retryAfterSeconds()) });
  }

  private shuttingDown(): ApiError {
    return new ApiError('shutting_down', this.closedReason ?? 'the instance is shutting down');
  }
}
