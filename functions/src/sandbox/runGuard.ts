/**
 * What ends a run early, in one place for every sandbox: the service's wall-clock watchdog, the
 * request's abort signal (client gone, shutdown), and the usage sampler's aggregate limits. Each
 * calls the same kill, at most once, and records why. Its owner ends it with finish() on every
 * path (try/finally), which also waits for a kill under way.
 */
import type { LimitExceeded } from './types';
import { watchUsage, type UsageLimits } from './usageWatch';

export interface GuardOptions {
  timeoutMs: number;
  signal: AbortSignal;
  /** Aggregate limits to sample, when the run has a cgroup or a uid of its own. */
  usage?: UsageLimits;
  kill: () => Promise<void>;
}

export class RunGuard {
  timedOut = false;
  aborted = false;
  exceeded: LimitExceeded | undefined;
  private killing: Promise<void> | undefined;
  private readonly watchdog: NodeJS.Timeout;
  private readonly stopUsage: () => void;
  private readonly onAbort = () => {
    this.aborted = true;
    void this.kill();
  };

  constructor(private readonly options: GuardOptions) {
    this.watchdog = setTimeout(() => {
      this.timedOut = true;
      void this.kill();
    }, options.timeoutMs);
    this.stopUsage = options.usage
      ? watchUsage(options.usage, (reason) => {
          this.exceeded = reason;
          void this.kill();
        })
      : () => undefined;
    if (options.signal.aborted) this.onAbort();
    else options.signal.addEventListener('abort', this.onAbort, { once: true });
  }

  /** Kills the run (once; later calls wait for the same kill). */
  kill(): Promise<void> {
    return (this.killing ??= this.options.kill().catch(() => undefined));
  }

  /** The run is over: no more watching. */
  stop(): void {
    clearTimeout(this.watchdog);
    this.stopUsage();
    this.options.signal.removeEventListener('abort', this.onAbort);
  }

  /**
   * Stops watching and waits for a kill already under way: the run's slot may be handed on only
   * once nothing the guard started can still reach the slot's processes.
   */
  async finish(): Promise<void> {
    this.stop();
    await this.killing;
  }
}
