/**
 * Seccomp mode, cold path: the runner as a plain subprocess with an empty environment plus the
 * allow-list, a private working directory, the run's own cgroup (where the host has one) and,
 * when the service is root, the slot's own unprivileged uid; the launcher puts it there. The
 * runner then applies rlimits, no_new_privs, Landlock and the seccomp policy to itself before any
 * user code (sandbox-image/runner/confine.py).
 */
import type { Config } from '../config';
import type { RunCgroup, RunCgroups } from './cgroup/cgroups';
import type { SandboxFiles } from './files';
import { channelMaxBytes, hostRunnerPaths, launcherArgv, runnerArgv, runnerJob, sandboxEnvironment } from './job';
import { runProcess, statusFdOf, type ProcessResult } from './processRun';
import { makeRunDir, removeRunDir } from './workRoot';
import type { RunReport, RunRequest, Sandbox } from './types';
import { failedRun, withUsageNote } from './types';
import { killAllOfUid, removeFilesOfUid } from './uidReaper';
import { memoryVerdict, runUsageLimits } from './usageWatch';

export class SeccompSandbox implements Sandbox {
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
      cgroup = this.cgroups?.create(request.slot);
    } catch (error) {
      return failedRun(this.mode, `the run's cgroup could not be created: ${(error as Error).message}`);
    }
    let workdir: string | undefined;
    try {
      workdir = await makeRunDir(this.config.workRoot, request.slot, uid);
      const job = runnerJob(this.config, hostRunnerPaths(this.files, workdir), request.script, request.args);
      const run = { statusFd: statusFdOf(0), uid, join: cgroup?.procsFiles ?? [] };
      const argv = launcherArgv(this.config.sandboxPython, this.files.runnerDir, run, runnerArgv(this.config.sandboxPython, this.files.runnerDir));
      // Aggregate memory (the cgroup's verdict, or the sampler) and the size of the run's directory.
      const usage = runUsageLimits(this.config, { cgroup, uid, dir: workdir });
      const result = await runProcess(
        { argv, env: sandboxEnvironment(workdir), cwd: workdir, stdin: job, extraReadFds: 0 },
        {
          timeoutMs: this.config.scriptTimeoutMs,
          outputMaxBytes: this.config.outputMaxBytes,
          channelMaxBytes: channelMaxBytes(this.config),
          signal: request.signal,
          usage,
          killRun: (launcherPid) => this.killRun(launcherPid, uid, cgroup),
        },
      );
      return withUsageNote(toReport(result), result.exceeded ?? memoryVerdict(usage));
    } finally {
      await cgroup?.destroy();
      if (uid !== undefined) {
        if (!cgroup) await killAllOfUid(uid);
        await removeFilesOfUid(uid);
      }
      if (workdir) await removeRunDir(workdir);
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
