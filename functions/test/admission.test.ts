/**
 * Admission control in isolation: slots, the queue, refusals, and Retry-After as the queue's drain
 * time. A fake clock drives every duration; nothing here measures real time.
 */
import { Admission, type Lease } from '../src/admission';
import { ApiError } from '../src/errors';

class FakeClock {
  ms = 1000;
  now = () => this.ms;
  advance(ms: number): void {
    this.ms += ms;
  }
}

/** Holds each lease for `ms` on the fake clock, one after the other. */
async function runFor(admission: Admission, clock: FakeClock, ...durations: number[]): Promise<void> {
  for (const ms of durations) {
    const lease = await admission.acquire();
    clock.advance(ms);
    lease.release();
  }
}

async function refusalOf(promise: Promise<unknown>): Promise<ApiError> {
  try {
    await promise;
  } catch (error) {
    expect(error).toBeInstanceOf(ApiError);
    return error as ApiError;
  }
  throw new Error('expected a refusal');
}

function fill(admission: Admission): Promise<Lease[]> {
  return Promise.all(Array.from({ length: admission.capacity }, () => admission.acquire()));
}

describe('Admission', () => {
  test('grants distinct slots, queues in order, and reports queue time on its clock', async () => {
    const clock = new FakeClock();
    const admission = new Admission(2, 2, 60000, 10, { now: clock.now });
    const [a, b] = await fill(admission);
    expect(new Set([a.slot, b.slot])).toEqual(new Set([0, 1]));
    expect(a.queueMs).toBe(0);
    const order: number[] = [];
    const c = admission.acquire().then((lease) => (order.push(1), lease));
    const d = admission.acquire().then((lease) => (order.push(2), lease));
    expect(admission.queued).toBe(2);
    clock.advance(300);
    a.release();
    a.release(); // a second release is ignored
    const third = await c;
    expect(third.slot).toBe(a.slot);
    expect(third.queueMs).toBe(300);
    b.release();
    await d;
    expect(order).toEqual([1, 2]);
    expect(admission.inFlight).toBe(2);
  });

  test('Retry-After is 1 s when nothing has run yet and the runs in flight are young', async () => {
    const clock = new FakeClock();
    const admission = new Admission(1, 0, 60000, 10, { now: clock.now });
    await admission.acquire();
    const refused = await refusalOf(admission.acquire());
    expect(refused.status).toBe(429);
    expect(refused.headers['Retry-After']).toBe('1');
  });

  test('Retry-After is the queue drain time: (queued + 1) x average run / slots, rounded down', async () => {
    const clock = new FakeClock();
    const admission = new Admission(2, 2, 60000, 30, { now: clock.now });
    await runFor(admission, clock, 2000, 2000);
    expect(admission.estimatedRunMs()).toBe(2000);
    await fill(admission);
    void admission.acquire().catch(() => undefined);
    void admission.acquire().catch(() => undefined);
    expect(admission.queued).toBe(2);
    // (2 + 1) x 2000 ms / 2 slots = 3 s
    expect((await refusalOf(admission.acquire())).headers['Retry-After']).toBe('3');
    admission.close('test over');
  });

  test('the average follows recent runs (exponential moving average)', async () => {
    const clock = new FakeClock();
    const admission = new Admission(1, 0, 60000, 30, { now: clock.now, smoothing: 0.5 });
    await runFor(admission, clock, 1000);
    expect(admission.estimatedRunMs()).toBe(1000);
    await runFor(admission, clock, 6000);
    expect(admission.estimatedRunMs()).toBe(3500);
    await runFor(admission, clock, 500, 500, 500, 500, 500, 500);
    expect(admission.estimatedRunMs()).toBeLessThan(600);
    // 1 position x ~550 ms / 1 slot: 0 whole seconds, and at least 1.
    await admission.acquire();
    expect(admission.retryAfterSeconds()).toBe(1);
  });

  test('runs in flight older than the average raise the estimate; the longest run bounds it', async () => {
    const clock = new FakeClock();
    const admission = new Admission(2, 0, 60000, 10, { now: clock.now });
    await runFor(admission, clock, 100);
    const [first] = await fill(admission);
    clock.advance(4200);
    // Both slots busy for 4.2 s: each run takes at least that long. 1 x 4200 / 2 = 2.1 s -> 2.
    expect(admission.estimatedRunMs()).toBe(4200);
    expect((await refusalOf(admission.acquire())).headers['Retry-After']).toBe('2');
    // With a slot free, the runs in flight say nothing about the wait.
    first.release();
    expect(admission.estimatedRunMs()).toBeLessThan(4200);
    const again = await admission.acquire();
    clock.advance(60000);
    expect(admission.estimatedRunMs()).toBe(10000);
    again.release();
    // A run recorded as longer than the limit counts as the limit.
    expect(admission.estimatedRunMs()).toBeLessThanOrEqual(10000);
  });

  test('refusal() answers without waiting: undefined while a slot or a queue place is free', async () => {
    const clock = new FakeClock();
    const admission = new Admission(1, 1, 60000, 10, { now: clock.now });
    expect(admission.refusal()).toBeUndefined();
    await admission.acquire();
    expect(admission.refusal()).toBeUndefined(); // the queue has room
    void admission.acquire().catch(() => undefined);
    const full = admission.refusal();
    expect(full?.status).toBe(429);
    expect(full?.type).toBe('overloaded');
    expect(Number(full?.headers['Retry-After'])).toBeGreaterThanOrEqual(1);
    admission.close('draining');
    expect(admission.refusal()?.status).toBe(503);
  });

  test('a request that waits longer than the queue allows is refused with the drain time', async () => {
    jest.useFakeTimers();
    try {
      const clock = new FakeClock();
      const admission = new Admission(1, 4, 5000, 60, { now: clock.now });
      await runFor(admission, clock, 8000);
      await admission.acquire();
      const waiting = refusalOf(admission.acquire());
      clock.advance(5000);
      jest.advanceTimersByTime(5000);
      const refused = await waiting;
      expect(refused.status).toBe(429);
      expect(refused.message).toMatch(/within 5000 ms/);
      expect(admission.queued).toBe(0);
      // 1 position x 8000 ms / 1 slot
      expect(refused.headers['Retry-After']).toBe('8');
    } finally {
      jest.useRealTimers();
    }
  });

  test('close() refuses the queued and new requests with 503', async () => {
    const admission = new Admission(1, 2, 60000, 10);
    await admission.acquire();
    const queued = refusalOf(admission.acquire());
    admission.close('shutting down for the test');
    expect((await queued).status).toBe(503);
    expect((await refusalOf(admission.acquire())).status).toBe(503);
  });

  test('a client that leaves while queued frees its place', async () => {
    const admission = new Admission(1, 1, 60000, 10);
    await admission.acquire();
    const controller = new AbortController();
    const queued = refusalOf(admission.acquire(controller.signal));
    expect(admission.queued).toBe(1);
    controller.abort();
    expect((await queued).type).toBe('killed');
    expect(admission.queued).toBe(0);
    expect(admission.refusal()).toBeUndefined();
  });

  describe('a preferred slot (the warm path: one whose waiting child suits the script)', () => {
    /** Frees the slots in this order, so the free list runs from least to most recently used. */
    async function freedInOrder(admission: Admission, order: number[]): Promise<void> {
      const leases = await fill(admission);
      for (const slot of order) leases.find((lease) => lease.slot === slot)!.release();
    }

    test('the least recently used free slot the preference accepts', async () => {
      const admission = new Admission(4, 4, 60000, 10, { now: new FakeClock().now });
      await freedInOrder(admission, [2, 0, 3, 1]);
      const odd = (slot: number) => slot % 2 === 1;
      expect((await admission.acquire(undefined, odd)).slot).toBe(3);
      expect((await admission.acquire(undefined, odd)).slot).toBe(1);
    });

    test('else the least recently used free slot, as without one', async () => {
      const admission = new Admission(3, 4, 60000, 10, { now: new FakeClock().now });
      await freedInOrder(admission, [1, 2, 0]);
      expect((await admission.acquire(undefined, () => false)).slot).toBe(1);
      expect((await admission.acquire()).slot).toBe(2);
      expect((await admission.acquire(undefined, (slot) => slot === 0)).slot).toBe(0);
      expect(admission.inFlight).toBe(3);
    });

    test('the preference is asked about free slots only, and a skipped slot keeps its place', async () => {
      const admission = new Admission(3, 4, 60000, 10, { now: new FakeClock().now });
      await freedInOrder(admission, [0, 1, 2]);
      const busy = await admission.acquire(); // slot 0
      const asked: number[] = [];
      const lease = await admission.acquire(undefined, (slot) => (asked.push(slot), slot === 2));
      expect(lease.slot).toBe(2);
      expect(asked).toEqual([1, 2]);
      expect((await admission.acquire()).slot).toBe(1); // still the least recently used
      busy.release();
    });

    test('a queued request takes whichever slot frees first, preferred or not', async () => {
      const admission = new Admission(2, 2, 60000, 10, { now: new FakeClock().now });
      const [a, b] = await fill(admission);
      const queued = admission.acquire(undefined, (slot) => slot === b.slot);
      a.release();
      expect((await queued).slot).toBe(a.slot);
    });
  });

  describe('a slot out of use (its uid quarantined)', () => {
    test('is not handed out while another slot is free, preferred or not', async () => {
      const admission = new Admission(3, 4, 60000, 10, { now: new FakeClock().now });
      admission.outOfUse = (slot) => slot === 0;
      expect((await admission.acquire(undefined, (slot) => slot === 0)).slot).toBe(1);
      expect((await admission.acquire()).slot).toBe(2);
    });

    test('a request that finds only such slots free waits for a healthy one', async () => {
      const admission = new Admission(2, 2, 60000, 10, { now: new FakeClock().now });
      admission.outOfUse = (slot) => slot === 0;
      const healthy = await admission.acquire();
      expect(healthy.slot).toBe(1);
      const queued = admission.acquire();
      expect(admission.queued).toBe(1);
      healthy.release();
      expect((await queued).slot).toBe(1);
    });

    test('when every slot is out of use, a request gets one (its run answers why)', async () => {
      const admission = new Admission(2, 2, 60000, 10, { now: new FakeClock().now });
      admission.outOfUse = () => true;
      expect((await admission.acquire()).slot).toBe(0);
      expect(admission.queued).toBe(0);
    });
  });
});
