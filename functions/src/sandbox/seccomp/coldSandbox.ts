/**
 * Seccomp mode, cold path: the runner as a plain subprocess with an empty environment plus the
 * allow-list, in the run's own cgroup (where the host has one), chrooted into its slot's own copy
 * of the sandbox's root (slots.ts) with /tmp as its working directory, as the slot's own
 * unprivileged uid; the launcher (the host's Python, outside the sandbox) puts it there. The
 * runner then applies rlimits, no_new_privs, Landlock and the seccomp policy to itself before any
 * user code (sandbox-image/runner/confine.py). After the run the slot's /tmp is emptied.
 */
import type { Config } from '../../config';
import type { RunCgroup, RunCgroups } from '../cgroup/cgroups';
import { HOST_PYTHON, type SandboxFiles } from '../files';
import { launcherArgv, runProcess, statusFdOf, type ProcessResult } from '../processRun';
import { coldJob, runnerArgv, sandboxEnvironment } from '../protocol';
import { failedRun, withUsageNote, type RunReport, type RunRequest, type SandboxPath } from '../types';
import { killAllOfUid, removeFilesOfUid } from '../uidReaper';
import { memoryVerdict, usageLimits } from '../usageWatch';
import { ROOT_WORKDIR, slotRunnerPaths, type SlotRoots } from './slots';

export class SeccompSandbox implements SandboxPath {
  readonly mode = 'seccomp' as const;
  readonly path = 'cold' as const;

  constructor(
    private readonly config: Config,
    private readonly files: SandboxFiles,
    private readonly cgroups: RunCgroups | undefined,
    private readonly slots: SlotRoots,
  ) {}

  async run(request: RunRequest): Promise<RunReport> {
    // The service is root (slotsUnusable refuses the mode otherwise): the slot's own uid.
    const uid = this.config.sandboxUidBase + request.slot;
    try {
      await this.slots.ensureSlot(request.slot, uid);
    } catch (error) {
      return failedRun(this.mode, `the run slot's root could not be made: ${(error as Error).message}`);
    }
    let cgroup: RunCgroup | undefined;
    try {
      cgroup = this.cgroups?.create(request.slot, request.limits);
    } catch (error) {
      return failedRun(this.mode, `the run's cgroup could not be created: ${(error as Error).message}`);
    }
    const dir = this.slots.watchedTmp(request.slot);
    try {
      const job = coldJob(request, slotRunnerPaths());
      const run = { statusFd: statusFdOf(0), uid, join: cgroup?.procsFiles ?? [], chroot: this.slots.slotRoot(request.slot), chdir: ROOT_WORKDIR };
      const argv = launcherArgv(HOST_PYTHON, this.files.runnerDir, run, runnerArgv(this.config.sandboxPython, slotRunnerPaths().runnerDir));
      // Aggregate memory (the cgroup's verdict, or the sampler) and the size of the slot's /tmp.
      const usage = usageLimits(request.limits, { cgroup, uid, dir });
      const result = await runProcess(
        { argv, env: sandboxEnvironment(ROOT_WORKDIR), cwd: '/', stdin: job, extraReadFds: 0 },
        { limits: request.limits, signal: request.signal, usage, killRun: (launcherPid) => this.killRun(launcherPid, uid, cgroup) },
      );
      return withUsageNote(toReport(result), result.exceeded ?? memoryVerdict(usage));
    } finally {
      await cgroup?.destroy();
      if (!cgroup) await killAllOfUid(uid);
      await removeFilesOfUid(uid);
      await this.slots.resetTmp(request.slot, uid);
    }
  }

  private async killRun(_launcherPid: number | undefined, uid: number, cgroup: RunCgroup | undefined): Promise<void> {
    if (cgroup) return cgroup.kill();
    return killAllOfUid(uid);
  }
}

function toReport(result: ProcessResult): RunReport {
  return {
    mode: 'seccomp',
    channel: result.channel,
    exitCode: result.exitCode,
    signal: result.signal,
    timedOut: result.timedOut,
    aborted: result.aborted,
    stdout: result.stdout,
    stderr: result.stderr,
    wallMs: result.wallMs,
    sandboxFailure: result.spawnError ? `the sandbox process could not start: ${result.spawnError}` : undefined,
  };
}
