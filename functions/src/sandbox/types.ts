/** The contract between the service and a sandbox backend, on its cold or warm path. */
import type { SandboxMode } from './backends';
import { EMPTY_TEXT } from './capture';
import type { RequestedLimits, RunLimits } from './limits';
import type { ChannelState } from './protocol';
import type { ScriptKind } from './warm/scriptKind';

/** A file the request attaches, written under the run's working directory before the script starts (validated: inputFiles.ts). */
export interface InputFile {
  path: string;
  /** Text, written UTF-8 encoded; or */
  content?: string;
  /** bytes, in standard base64. */
  content_base64?: string;
}

/** A run as the handlers ask for it. */
export interface RunOrder {
  script: string;
  /** What the script imports (scriptKind.ts): the warm path picks its child by it; the cold path ignores it. */
  kind: ScriptKind;
  args: Record<string, unknown>;
  files?: InputFile[];
  /** Lower limits than the configured ones, where the request asked (limits.ts). */
  limits?: RequestedLimits;
  /** Admission slot: selects this run's uid, so concurrent runs never share one. */
  slot: number;
  /** Aborted when the client goes away or the instance shuts down: the run is killed. */
  signal: AbortSignal;
}

/** A run as a backend gets it: the order and the limits derived for it (limits.ts). */
export interface RunRequest extends Omit<RunOrder, 'limits' | 'files'> {
  files: InputFile[];
  limits: RunLimits;
}

export interface CapturedText {
  text: string;
  bytes: number;
  truncated: boolean;
}

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
  /** Warm path: the kind of child the run was handed (a full child runs lean scripts too). */
  warmChild?: ScriptKind;
}

/** A warm child confined and waiting for a run, as /health lists it. */
export interface WaitingChild {
  slot: number;
  /** On the host. */
  pid: number;
  kind: ScriptKind;
}

/** What the service runs scripts with: the chosen backend and path, which gives each run its limits (LimitedSandbox, limits.ts). */
export interface Sandbox {
  readonly mode: SandboxMode;
  /** warm: pre-forked, pre-confined interpreters; cold: a new interpreter per run. */
  readonly path: 'warm' | 'cold';
  run(order: RunOrder): Promise<RunReport>;
  /** Warm path: the children confined and waiting for a run, by slot. */
  waiting?(): WaitingChild[];
  /** Warm path: the run slots that hold (or are about to hold) a child suited to a script of this kind; admission prefers them. */
  readyFor?(kind: ScriptKind): (slot: number) => boolean;
  /** Shutdown: ends what the sandbox keeps between runs (the warm pool: zygote, waiting children, their cgroups). */
  close?(): Promise<void>;
}

/** One backend on one path (a cold sandbox of nsjail/ or seccomp/, or the warm pool of warm/): each run comes with its limits. */
export interface SandboxPath extends Omit<Sandbox, 'run'> {
  run(request: RunRequest): Promise<RunReport>;
}

/** One finding of the start-up probe, as /health shows it under sandbox.capabilities. */
export interface Finding {
  available: boolean;
  detail: string;
  /** What else it found: Landlock's ABI, nsjail's path, the cgroup version. */
  [fact: string]: unknown;
}

export const NOT_TRIED: Finding = { available: false, detail: 'not tried' };

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
