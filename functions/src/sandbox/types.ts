/** The contract between the service and a sandbox mode. */
import type { RunnerMessage } from '../schemas';
import { EMPTY_TEXT } from './capture';

export type SandboxMode = 'nsjail' | 'seccomp';

export interface RunRequest {
  script: string;
  args: Record<string, unknown>;
  /** Admission slot: selects this run's uid, so concurrent runs never share one. */
  slot: number;
  /** Aborted when the client goes away or the instance shuts down: the run is killed. */
  signal: AbortSignal;
}

export interface CapturedText {
  text: string;
  bytes: number;
  truncated: boolean;
}

export type ChannelState =
  | { kind: 'message'; message: RunnerMessage }
  | { kind: 'empty' }
  | { kind: 'oversize' }
  | { kind: 'invalid' };

/** Everything observed about one run, before it is interpreted (outcome.ts does that). */
export interface RunReport {
  mode: SandboxMode;
  channel: ChannelState;
  exitCode: number | null;
  /** Signal that ended the sandboxed process (from waitpid, or from nsjail's log in nsjail mode). */
  signal: string | null;
  timedOut: boolean;
  aborted: boolean;
  stdout: CapturedText;
  stderr: CapturedText;
  wallMs: number;
  /** Set when the sandbox itself failed (could not start); no user code result is available. */
  sandboxFailure?: string;
  /** Set when the service killed the run for exceeding an aggregate limit. */
  exceeded?: LimitExceeded;
}

export interface Sandbox {
  readonly mode: SandboxMode;
  /** warm: pre-forked, pre-confined interpreters; cold: a new interpreter per run. */
  readonly path: 'warm' | 'cold';
  run(request: RunRequest): Promise<RunReport>;
  /** Warm path: the children confined and waiting for a run, by slot. */
  waiting?(): Array<{ slot: number; pid: number }>;
}

/** A run the service's usage sampler (usageWatch.ts) killed, and why. */
export interface LimitExceeded {
  kind: 'memory' | 'disk';
  message: string;
}

export function withUsageNote(report: RunReport, exceeded: LimitExceeded | undefined): RunReport {
  return exceeded ? { ...report, exceeded, signal: report.signal ?? 'SIGKILL' } : report;
}

/** The report of a run whose sandbox could not start it: no output, no result. */
export function failedRun(mode: SandboxMode, message: string, wallMs = 0): RunReport {
  return { mode, channel: { kind: 'empty' }, exitCode: null, signal: null, timedOut: false, aborted: false, stdout: EMPTY_TEXT, stderr: EMPTY_TEXT, wallMs, sandboxFailure: message };
}
