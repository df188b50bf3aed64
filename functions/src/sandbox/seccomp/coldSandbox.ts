/**
 * Seccomp mode, cold path: the runner as a plain subprocess with an empty environment plus the
 * allow-list, a private working directory, the run's own cgroup (where the host has one) and,
 * when the service is root, the slot's own unprivileged uid; the launcher puts it there. The
 * runner then applies rlimits, no_new_privs, Landlock and the seccomp policy to itself before any
 * user code (sandbox-image/runner/confine.py).
 */
import type { Config } from '../../config';
import type { RunCgroup, RunCgroups } from '../cgroup/cgroups';
import type { SandboxFiles } from '../files';
import { launcherArgv, runProcess, statusFdOf, type ProcessResult } from '../processRun';
import { coldJob, runnerArgv, sandboxEnvironment } from '../protocol';
import { failedRun, withUsageNote, type RunReport, type RunRequest, type SandboxPath } from '../types';
import { killAllOfUid, removeFilesOfUid } from '../uidReaper';
import { memoryVerdict, usageLimits, type WatchedDir } from '../usageWatch';
import { removeRunDir } from '../workRoot';
import { hostRunnerPaths, makeWatchedRunDir } from './host';

export class SeccompSandbox implements SandboxPath {
  readonly mode = 'seccomp' as const;
  readonly path = 'cold' as const;
  private readonly isRoot = process.getuid?.() === 0;

  constructor(
    private readonly config: Config,
    private readonly files: SandboxFiles,
    private readonly cgroups: RunCgroups | undefined,
  ) {}

  async run(request: RunRequest): Promise<RunReport> {
    const uid = this.isRoot ? this.config.sandboxUidBase + request.slot : undefined;
    let cgroup: RunCgroup | undefined;
    try {
      cgroup = this.cgroups?.create(request.slot, request.limits);
    } catch (error) {
      return failedRun(this.mode, `the run's cgroup could not be created: ${(error as Error).message}`);
    }
    let dir: WatchedDir | undefined;
    try {
      dir = await makeWatchedRunDir(this.config, request.slot, uid);
      const job = coldJob(request, hostRunnerPaths(this.files, dir.path));
      const run = { statusFd: statusFdOf(0), uid, join: cgroup?.procsFiles ?? [] };
      const argv = launcherArgv(this.config.sandboxPython, this.files.runnerDir, run, runnerArgv(this.config.sandboxPython, this.files.runnerDir));
      // Aggregate memory (the cgroup's verdict, or the sampler) and the size of the run's directory.
      const usage = usageLimits(request.limits, { cgroup, uid, dir });
      const result = await runProcess(
        { argv, env: sandboxEnvironment(dir.path), cwd: dir.path, stdin: job, extraReadFds: 0 },
        { limits: request.limits, signal: request.signal, usage, killRun: (launcherPid) => this.killRun(launcherPid, uid, cgroup) },
      );
      return withUsageNote(toReport(result), result.exceeded ?? memoryVerdict(usage));
    } finally {
      await cgroup?.destroy();
      if (uid !== undefined) {
        if (!cgroup) await killAllOfUid(uid);
        await removeFilesOfUid(uid);
      }
      if (dir) await removeRunDir(dir.path);
    }
  }

  private async killRun(launcherPid: number | undefined, uid: number | undefined, cgroup: RunCgroup | undefined): Promise<void> {
    if (cgroup) return cgroup.kill();
    if (uid !== undefined) return killAllOfUid(uid);
    // Not root: no uid of its own, so the process group is the best handle we have.
    if (launcherPid !== undefined) {
      try {
        process.kill(-launcherPid, 'SIGKILL');
      } catch {
        // group already gone
      }
    }
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
