/**
 * nsjail mode: one jail per cold run from the rendered python.cfg. The runner inside still applies
 * the same seccomp policy and Landlock on top of the namespaces.
 */
import type { Config } from '../config';
import { channelMaxBytes, JAIL_RUNNER_DIR, jailRunnerPaths, runnerArgv, runnerJob } from './job';
import { runProcess } from './processRun';
import type { RunReport, RunRequest, Sandbox } from './types';
import { withUsageNote } from './types';
import { killAllOfUid } from './uidReaper';
import { runUsageLimits } from './usageWatch';

/** The uid (and gid) a script has inside the jail. */
const INSIDE_ID = 1000;

export interface NsjailOptions {
  binary: string;
  configFile: string;
  /** Extra flags found usable by the probe (cgroup v2 limits). */
  extraFlags: string[];
}

export class NsjailSandbox implements Sandbox {
  readonly mode = 'nsjail' as const;
  readonly path = 'cold' as const;
  private readonly isRoot = process.getuid?.() === 0;

  constructor(private readonly config: Config, private readonly options: NsjailOptions) {}

  async run(request: RunRequest): Promise<RunReport> {
    const outsideId = this.isRoot ? this.config.sandboxUidBase + request.slot : process.getuid!();
    const job = runnerJob(this.config, jailRunnerPaths(), request.script, request.args);
    const args = [
      '--config', this.options.configFile,
      '--user', `${INSIDE_ID}:${outsideId}:1`,
      '--group', `${INSIDE_ID}:${outsideId}:1`,
      ...this.options.extraFlags,
      '--', ...runnerArgv(this.config.sandboxPython, JAIL_RUNNER_DIR),
    ];
    const result = await runProcess(
      { command: this.options.binary, args, env: {}, cwd: '/', detached: true, stdin: job, extraReadFds: 1 },
      {
        timeoutMs: this.config.scriptTimeoutMs,
        outputMaxBytes: this.config.outputMaxBytes,
        channelMaxBytes: channelMaxBytes(this.config),
        signal: request.signal,
        // Aggregate memory of the jail's processes (outside uid), also where cgroup v2 is missing.
        usage: this.isRoot ? runUsageLimits(this.config, outsideId) : undefined,
        killTree: async (pid) => {
          // Killing nsjail kills the jail's init (PR_SET_PDEATHSIG), and with it the pid namespace.
          if (pid !== undefined) {
            try {
              process.kill(pid, 'SIGKILL');
            } catch {
              // already gone
            }
          }
          if (this.isRoot) await killAllOfUid(outsideId);
        },
      },
    );
    const log = result.extra[0]?.toString('utf8') ?? '';
    const ended = parseNsjailExit(log);
    const started = /Executing '/.test(log) || ended !== undefined || result.channel.kind !== 'empty';
    return withUsageNote(
      {
        mode: 'nsjail',
        channel: result.channel,
        exitCode: ended?.exitCode ?? (ended?.signal ? null : result.exitCode),
        signal: ended?.signal ?? null,
        timedOut: result.timedOut || /run time >= time limit/.test(log),
        aborted: result.aborted,
        stdout: result.stdout,
        stderr: result.stderr,
        wallMs: result.wallMs,
        sandboxFailure: result.spawnError
          ? `nsjail could not start: ${result.spawnError}`
          : !started && !result.timedOut && !result.aborted
            ? `nsjail failed to set up the jail: ${lastErrorLine(log)}`
            : undefined,
      },
      result.exceeded,
    );
  }
}

/** nsjail logs how the jailed process ended; its own exit code folds signals into 128+n. */
export function parseNsjailExit(log: string): { exitCode: number | null; signal: string | null } | undefined {
  const signalled = /terminated with signal: (SIG[A-Z0-9]+)/.exec(log);
  if (signalled) return { exitCode: null, signal: signalled[1] };
  const exited = /exited with status: (\d+)/.exec(log);
  if (exited) return { exitCode: Number(exited[1]), signal: null };
  return undefined;
}

function lastErrorLine(log: string): string {
  const lines = log.split('\n').filter((line) => /^\[[EF]\]/.test(line));
  return (lines.at(-1) ?? log.trim().split('\n').at(-1) ?? 'no log').slice(0, 500);
}
