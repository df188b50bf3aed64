/**
 * Runs one cold run's process through the launcher (sandbox-image/runner/launcher.py): feeds it
 * the job on stdin, captures stdout and stderr (capped), reads the result channel (fd 3), and ends
 * it early through a RunGuard (watchdog, abort, usage limits). The launcher reports on its last
 * descriptor when the run's own process has exited; then everything the run left is killed, and
 * the report is made once the launcher has reaped the last of it. The launcher's command line and
 * its report are here too: they are its whole contract with the service.
 */
import { spawn, type StdioPipe } from 'child_process';
import type { Readable } from 'stream';
import { settlesWithin } from '../deadline';
import { CappedCapture, drainWithin, EMPTY_TEXT } from './capture';
import type { RunLimits } from './limits';
import { channelMaxBytes, readChannel, RESULT_FD, type ChannelState } from './protocol';
import { RunGuard } from './runGuard';
import type { CapturedText, LimitExceeded } from './types';
import type { UsageLimits } from './usageWatch';

export interface ProcessPlan {
  /** The launcher's command line (launcherArgv). */
  argv: string[];
  env: Record<string, string>;
  cwd: string;
  stdin: Buffer;
  /** Pipes from fd 4 on to read (nsjail's log on fd 4); the launcher's status pipe comes after them. */
  extraReadFds: number;
}

export interface ProcessRunOptions {
  /** The run's watchdog and its output and channel caps. */
  limits: RunLimits;
  signal: AbortSignal;
  /** Aggregate limits to sample, when the run has a cgroup or a uid of its own. */
  usage?: UsageLimits;
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
  return RESULT_FD + 1 + extraReadFds;
}

/**
 * The cold path's command line: the launcher (run as the service's user) starts `command` in the
 * run's cgroup and, with a uid, as the run's uid, reaps what the run leaves behind, and reports
 * the command's exit on statusFd.
 */
export function launcherArgv(python: string, runnerDir: string, run: { statusFd: number; uid?: number; join: string[]; chroot?: string; chdir?: string }, command: string[]): string[] {
  const flags = [
    '--status-fd',
    String(run.statusFd),
    ...(run.uid === undefined ? [] : ['--uid', String(run.uid)]),
    ...run.join.flatMap((file) => ['--join', file]),
    // seccomp mode: the slot's root, entered (and the directory changed) before the uid is taken.
    ...(run.chroot === undefined ? [] : ['--chroot', run.chroot, '--chdir', run.chdir ?? '/']),
  ];
  // -S: no site module, so nothing of the host's site-packages is imported by the service's own helper.
  return [python, '-I', '-S', '-B', `${runnerDir}/launcher.py`, ...flags, '--', ...command];
}

export function runProcess(plan: ProcessPlan, options: ProcessRunOptions): Promise<ProcessResult> {
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
    const { limits } = options;
    const stdout = new CappedCapture(pipes[1], limits.outputMaxBytes);
    const stderr = new CappedCapture(pipes[2], limits.outputMaxBytes);
    const channel = new CappedCapture(pipes[RESULT_FD], channelMaxBytes(limits));
    const extra = pipes.slice(RESULT_FD + 1, statusFdOf(plan.extraReadFds)).map((pipe) => new CappedCapture(pipe, 256 * 1024));
    const status = new CappedCapture(pipes[statusFdOf(plan.extraReadFds)], 256);
    const guard = new RunGuard({ timeoutMs: limits.timeoutMs, signal: options.signal, usage: options.usage, kill: () => options.killRun(child.pid) });

    // The job, then EOF. A runner that dies early closes stdin: ignore EPIPE.
    child.stdin.on('error', () => undefined);
    child.stdin.end(plan.stdin);

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
        channel: readChannel(channel, limits),
        extra: extra.map((e) => e.buffer()),
        wallMs,
        spawnError,
      });
    });
  });
}

/** The launcher's one line: "exit CODE" or "signal NAME". */
function parseStatus(line: string): { exitCode: number | null; signal: string | null } | undefined {
  const match = /^(exit|signal) (-?\d+|SIG[A-Z0-9]+(?:\+\d+)?)\n/.exec(line);
  if (!match) return undefined;
  return match[1] === 'exit' ? { exitCode: Number(match[2]), signal: null } : { exitCode: null, signal: match[2] };
}

function failedSpawn(message: string, wallMs: number): ProcessResult {
  return { exitCode: null, signal: null, timedOut: false, aborted: false, stdout: EMPTY_TEXT, stderr: EMPTY_TEXT, channel: { kind: 'empty' }, extra: [], wallMs, spawnError: message };
}
