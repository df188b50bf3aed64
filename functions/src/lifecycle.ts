/**
 * Graceful shutdown. On SIGTERM (Cloud Run allows ~10 s): stop admitting, let in-flight runs finish
 * within SHUTDOWN_GRACE_MS, then kill the rest (their requests are answered 503 shutting_down),
 * and exit once every answer is written. The Functions Framework's own SIGTERM/SIGINT handlers
 * exit at once, so they are removed as soon as it installs them.
 *
 * Only a function that owns its process takes the signals over (index.ts's `service`, when the
 * Functions Framework serves it); a handler mounted in another app leaves them to that app, which
 * calls `shutdown()` itself (with an `exit` that does not end the process).
 */
import type { Admission } from './admission';
import type { Logger } from './logging';

const SIGNALS = ['SIGTERM', 'SIGINT'] as const;
/** After the grace period, how long killed runs get to write their answers. */
const ANSWER_AFTER_KILL_MS = 3000;

export class Lifecycle {
  private readonly runs = new Set<AbortController>();
  private readonly idleWaiters: Array<() => void> = [];
  private stopping = false;
  private readonly stoppers: Array<() => Promise<void>> = [];
  private signalsTaken = false;

  constructor(
    private readonly admission: Admission,
    private readonly logger: Logger,
    private readonly graceMs: number,
    private readonly exit: (code: number) => void = (code) => process.exit(code),
  ) {}

  get shuttingDown(): boolean {
    return this.stopping;
  }

  /** A run (or queued request) in flight: aborted with reason 'shutdown' when the grace ends. */
  track(controller: AbortController): () => void {
    this.runs.add(controller);
    return () => {
      this.runs.delete(controller);
      if (this.runs.size === 0) for (const wake of this.idleWaiters.splice(0)) wake();
    };
  }

  takeOverSignals(): void {
    if (this.signalsTaken) return;
    this.signalsTaken = true;
    const handler = (signal: string) => void this.shutdown(signal);
    for (const signal of SIGNALS) {
      for (const listener of process.listeners(signal)) process.removeListener(signal, listener);
      process.on(signal, handler);
    }
    process.on('newListener', (event: string | symbol, listener) => {
      if ((SIGNALS as readonly (string | symbol)[]).includes(event) && listener !== handler) {
        setImmediate(() => process.removeListener(event as NodeJS.Signals, listener as () => void));
      }
    });
  }

  /** Runs once the runs are over, before the process exits (e.g. closing the sandbox). */
  onStop(stop: () => Promise<void>): void {
    this.stoppers.push(stop);
  }

  async shutdown(signal: string): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    this.admission.close('the instance is shutting down');
    this.logger.info(`${signal} received: admitting no new runs`, { event: 'shutdown_started', in_flight: this.runs.size, grace_ms: this.graceMs });
    const finished = await this.waitIdle(this.graceMs);
    const killed = finished ? 0 : this.runs.size;
    if (!finished) {
      this.logger.warn('grace period over: killing the remaining runs', { event: 'shutdown_killing', in_flight: this.runs.size });
      for (const run of this.runs) run.abort('shutdown');
      await this.waitIdle(ANSWER_AFTER_KILL_MS);
    }
    // What outlives runs (the warm pool's zygote, waiting children and their cgroups) is ended
    // while the process can still clean up after it.
    await Promise.all(this.stoppers.map((stop) => stop().catch(() => undefined)));
    this.logger.info('shutdown complete', { event: 'shutdown_complete', killed_runs: killed });
    this.exit(0);
  }

  private waitIdle(timeoutMs: number): Promise<boolean> {
    if (this.runs.size === 0) return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), timeoutMs);
      this.idleWaiters.push(() => {
        clearTimeout(timer);
        resolve(true);
      });
    });
  }
}
