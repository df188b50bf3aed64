/**
 * nsjail mode: one jail per cold run from the rendered python.cfg and the run's limits as flags,
 * started by the launcher inside the run's cgroup (where the host has one), so the jail and all it
 * starts are limited and killed with it. The runner inside still applies the same seccomp policy
 * and Landlock on top of the namespaces. Its /tmp and /dev/shm are the jail's own tmpfs, gone with
 * its last process; the run's cgroup is removed after the answer (uidReaper.ts, cleanUpAfterAnswer).
 * As root, a run some of whose processes survive every kill is answered 503, and its slot's uid is
 * quarantined: the slot's runs are refused until they are gone (uidReaper.ts, killAllOfUid).
 */
import type { Config } from '../../config';
import type { RunCgroup, RunCgroups } from '../cgroup/cgroups';
import { HOST_PYTHON, type SandboxFiles } from '../files';
import { launcherArgv, runProcess, statusFdOf } from '../processRun';
import { coldJob, runnerArgv } from '../protocol';
import { failedRun, withUsageNote, type RunReport, type RunRequest, type SandboxPath } from '../types';
import { settlesWithin } from '../../deadline';
import { allCleanedUp, cleanUpAfterAnswer, endRun, killAllOfUid, uidReady } from '../uidReaper';
import { memoryVerdict, usageLimits } from '../usageWatch';
import { JAIL_RUNNER_DIR, jailRunnerPaths, limitFlags } from './jail';

/** The uid (and gid) a script has inside the jail. */
const INSIDE_ID = 1000;

/** How long shutdown waits for the cleanups of answered runs. */
const CLOSE_TIMEOUT_MS = 3000;

export interface NsjailOptions {
  binary: string;
  configFile: string;
}

export class NsjailSandbox implements SandboxPath {
  readonly mode = 'nsjail' as const;
  readonly path = 'cold' as const;
  private readonly isRoot = process.getuid?.() === 0;

  constructor(
    private readonly config: Config,
    private readonly files: SandboxFiles,
    private readonly options: NsjailOptions,
    private readonly cgroups: RunCgroups | undefined,
  ) {}

  async run(request: RunRequest): Promise<RunReport> {
    // The slot's last run may still be cleaning up after its answer: this one starts after. A
    // uid whose processes survived its last kill gets no run until they are gone.
    const slotUid = this.config.sandboxUidBase + request.slot;
    const refused = await uidReady(slotUid);
    if (refused) return failedRun(this.mode, `run slot ${request.slot} refuses runs: ${refused}`);
    let cgroup: RunCgroup | undefined;
    try {
      cgroup = this.cgroups?.create(request.slot, request.limits);
    } catch (error) {
      return failedRun(this.mode, `the run's cgroup could not be created: ${(error as Error).message}`);
    }
    let report: RunReport;
    let survivors: string | undefined;
    try {
      report = await this.runIn(cgroup, request);
    } finally {
      // Before the answer: nothing of the run is left (runProcess killed it; this makes sure:
      // through its cgroup, and as root by its uid, every jailed process's outside uid). After
      // it: its cgroup is removed, once the uid is clear (a quarantined uid's recovery first).
      const made = cgroup;
      if (this.isRoot) survivors = await endRun(slotUid, made);
      else await made?.kill();
      if (made) void cleanUpAfterAnswer(slotUid, () => made.destroy());
    }
    return survivors ? failedRun(this.mode, `the run's processes could not all be killed: ${survivors}; run slot ${request.slot} refuses runs until they are gone`, report.wallMs) : report;
  }

  /** Shutdown: the cleanups of answered runs finish (bounded). */
  async close(): Promise<void> {
    await settlesWithin(allCleanedUp(), CLOSE_TIMEOUT_MS);
  }

  private async runIn(cgroup: RunCgroup | undefined, request: RunRequest): Promise<RunReport> {
    const outsideId = this.isRoot ? this.config.sandboxUidBase + request.slot : process.getuid!();
    const job = coldJob(request, jailRunnerPaths());
    const nsjail = [
      this.options.binary,
      '--config',
      this.options.configFile,
      ...limitFlags(request.limits),
      '--user',
      `${INSIDE_ID}:${outsideId}:1`,
      '--group',
      `${INSIDE_ID}:${outsideId}:1`,
      '--',
      ...runnerArgv(this.config.sandboxPython, JAIL_RUNNER_DIR),
    ];
    const argv = launcherArgv(HOST_PYTHON, this.files.runnerDir, { statusFd: statusFdOf(1), join: cgroup?.procsFiles ?? [] }, nsjail);
    // Aggregate memory of the jail's processes: the cgroup's verdict, or the sampler by outside uid.
    const usage = usageLimits(request.limits, { cgroup, uid: this.isRoot ? outsideId : undefined });
    const result = await runProcess(
      { argv, env: {}, cwd: '/', stdin: job, extraReadFds: 1 },
      {
        limits: request.limits,
        signal: request.signal,
        usage,
        killRun: async (launcherPid) => {
          if (cgroup) return cgroup.kill();
          // Every process of the jail runs as the outside uid; when the jailed init dies, nsjail
          // ends too and the launcher reaps it.
          if (this.isRoot) return killAllOfUid(outsideId);
          // Not root: the launcher's process group (nsjail is in it) is the best handle we have.
          if (launcherPid !== undefined) {
            try {
              process.kill(-launcherPid, 'SIGKILL');
            } catch {
              // already gone
            }
          }
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
      result.exceeded ?? memoryVerdict(usage),
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
