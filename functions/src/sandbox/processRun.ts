/**
 * Runs one cold run's process through the launcher (sandbox-image/runner/launcher.py): feeds it
 * the job on stdin, captures stdout and stderr (capped), reads the result channel (fd 3), and ends
 * it early through a RunGuard (watchdog, abort, usage limits). The launcher reports on its last
 * descriptor when the run's own process has exited; then everything the run left is killed, and
 * the report is made once the launcher has reaped the last of it.
 */
import { spawn, type StdioPipe } from 'child_process';
import type { Readable } from 'stream';
import { settlesWithin } from '../deadline';
import { isRunnerMessage } from '../validation';
import { CappedCapture, drainWithin, EMPTY_TEXT } from './capture';
import { RunGuard, type GuardOptions } from './runGuard';
import type { ChannelState, CapturedText, LimitExceeded } from './types';

export interface ProcessPlan {
  /** The launcher's command line (launcherArgv in job.ts). */
  argv: string[];
  env: Record<string, string>;
  cwd: string;
  stdin: Buffer;
  /** Pipes from fd 4 on to read (nsjail's log on fd 4); the launcher's status pipe comes after them. */
  extraReadFds: number;
}

export interface ProcessLimits extends Omit<GuardOptions, 'kill'> {
  outputMaxBytes: number;
  channelMaxBytes: number;
  /** Kills every process of the run (its cgroup, or its uid); resolves when none is left. */
  killRun: (launcherPid: number | undefined) => Promise<void>;
}

export interface ProcessResult {
  exitCode: number | null;
  signal: string | null;
  timedOut: boolean;
  aborted: boolean;
  exceeded?: LimitExceeded;
  stdout: CapturedText;
  stderr: CapturedText;
  channel: ChannelState;
  extra: Buffer[];
  wallMs: number;
  spawnError?: string;
}

/** How long pipes may stay open after the tree was killed before we stop waiting for them. */
export const DRAIN_AFTER_KILL_MS = 2000;
/** How long the launcher may take to reap what was killed before the run is reported anyway. */
const REAP_AFTER_KILL_MS = 5000;

/** The first descriptor after the standard three, the result channel and the extra pipes. */
export function statusFdOf(extraReadFds: number): number {
  return 4 + extraReadFds;
}

export function runProcess(plan: ProcessPlan, limits: ProcessLimits): Promise<ProcessResult> {
  const started = process.hrtime.bigint();
  const elapsedMs = () => Number(process.hrtime.bigint() - started) / 1e6;
  const stdio: StdioPipe[] = ['pipe', 'pipe', 'pipe', 'pipe'];
  for (let i = 0; i <= plan.extraReadFds; i++) stdio.push('pipe');

  return new Promise((resolve) => {
    let child;
    try {
      const [command, ...args] = plan.argv;
      // Detached: a new process group, so a non-root service can still kill the whole tree.
      child = spawn(command, args, { env: plan.env, cwd: plan.cwd, detached: true, stdio });
    } catch (error) {
      resolve(failedSpawn((error as Error).message, elapsedMs()));
      return;
    }
    const pipes = child.stdio as unknown as Readable[];
    const stdout = new CappedCapture(pipes[1], limits.outputMaxBytes);
    const stderr = new CappedCapture(pipes[2], limits.outputMaxBytes);
    const channel = new CappedCapture(pipes[3], limits.channelMaxBytes);
    const extra = pipes.slice(4, 4 + plan.extraReadFds).map((pipe) => new CappedCapture(pipe, 256 * 1024));
    const status = new CappedCapture(pipes[statusFdOf(plan.extraReadFds)], 256);
    const guard = new RunGuard({ ...limits, kill: () => limits.killRun(child.pid) });

    // The job, then EOF. A runner that dies early closes stdin: ignore EPIPE.
    child.stdin!.on('error', () => undefined);
    child.stdin!.end(plan.stdin);

    let spawnError: string | undefined;
    const launcherExited = new Promise<{ code: number | null; signal: string | null }>((done) => child.on('exit', (code, signal) => done({ code, signal })));
    child.on('error', (error) => {
      spawnError = error.message;
      if (child.pid === undefined) {
        // Never started (e.g. the binary is missing): there is no 'exit' to wait for.
        guard.stop();
        resolve(failedSpawn(error.message, elapsedMs()));
      }
    });
    if (child.pid === undefined) return;

    // The run's own process has exited when the launcher says so, or when the launcher is gone.
    void Promise.race([status.done, launcherExited]).then(async () => {
      const wallMs = elapsedMs();
      guard.stop();
      // Whatever the runner left behind (daemons, grandchildren) dies with it.
      await guard.kill();
      const launcher = (await settlesWithin(launcherExited, REAP_AFTER_KILL_MS)) ? await launcherExited : undefined;
      await drainWithin([stdout, stderr, channel, ...extra], DRAIN_AFTER_KILL_MS);
      for (const pipe of pipes.slice(1)) pipe?.destroy();
      const ended = parseStatus(status.buffer().toString('utf8')) ?? { exitCode: launcher?.code ?? null, signal: launcher?.signal ?? null };
      resolve({
        ...ended,
        timedOut: guard.timedOut,
        aborted: guard.aborted,
        exceeded: guard.exceeded,
        stdout: stdout.result(),
        stderr: stderr.result(),
        channel: readChannel(channel),
        extra: extra.map((e) => e.buffer()),
        wallMs,
        spawnError,
      });
    });
  });
}

/** The launcher's one line: "exit CODE" or "signal NAME". */
function parseStatus(line: string): { exitCode: number | null; signal: string | null } | undefined {
  const match = /^(exit|signal) (-?\d+|SIG[A-Z0-9]+)\n/.exec(line);
  if (!match) return undefined;
  return match[1] === 'exit' ? { exitCode: Number(match[2]), signal: null } : { exitCode: null, signal: match[2] };
}

/** Written by the runner once confined, before any user code (sandbox-image/runner/runner.py). */
export const CONFINED_MARKER = 0x1e;

/**
 * The channel is untrusted input: size-capped by the capture, then a strict parse and schema check.
 * The script shares the runner's process, so it can write to the channel too; what it cannot do
 * is remove the marker the runner wrote before user code. A message after the marker is the
 * script's to choose (a result or an error about itself), except sandbox_error, which only the
 * runner, before the marker, may send: a script cannot make the service claim its sandbox failed.
 */
export function readChannel(capture: { overflowed: boolean; buffer(): Buffer }): ChannelState {
  if (capture.overflowed) return { kind: 'oversize' };
  const raw = capture.buffer();
  if (raw.length === 0) return { kind: 'empty' };
  const confined = raw[0] === CONFINED_MARKER;
  const body = confined ? raw.subarray(1) : raw;
  if (body.length === 0) return { kind: 'empty' };
  let parsed: unknown;
  try {
    parsed = JSON.parse(body.toString('utf8'));
  } catch {
    return { kind: 'invalid' };
  }
  if (!isRunnerMessage(parsed)) return { kind: 'invalid' };
  const sandboxError = parsed.status === 'error' && parsed.error.type === 'sandbox_error';
  if (confined === sandboxError) return { kind: 'invalid' };
  return { kind: 'message', message: parsed };
}

function failedSpawn(message: string, wallMs: number): ProcessResult {
  return { exitCode: null, signal: null, timedOut: false, aborted: false, stdout: EMPTY_TEXT, stderr: EMPTY_TEXT, channel: { kind: 'empty' }, extra: [], wallMs, spawnError: message };
}
