/**
 * Seccomp mode, cold path: the runner as a plain subprocess with an empty environment plus the
 * allow-list, a private working directory, and (when the service is root) the slot's own
 * unprivileged uid. The runner then applies rlimits, no_new_privs, Landlock and the seccomp
 * policy to itself before any user code (sandbox-image/runner/confine.py).
 */
import type { Config } from '../config';
import type { SandboxFiles } from './files';
import { channelMaxBytes, hostRunnerPaths, runnerArgv, runnerJob, sandboxEnvironment } from './job';
import { runProcess, type ProcessResult } from './processRun';
import { makeRunDir, removeRunDir } from './workRoot';
import type { RunReport, RunRequest, Sandbox } from './types';
import { withUsageNote } from './types';
import { killAllOfUid, removeFilesOfUid } from './uidReaper';
import { runUsageLimits } from './usageWatch';

export class SeccompSandbox implements Sandbox {
  readonly mode = 'seccomp' as const;
  readonly path = 'cold' as const;
  private readonly isRoot = process.getuid?.() === 0;

  constructor(private readonly config: Config, private readonly files: SandboxFiles) {}

  async run(request: RunRequest): Promise<RunReport> {
    const uid = this.isRoot ? this.config.sandboxUidBase + request.slot : undefined;
    const workdir = await makeRunDir(this.config.workRoot, request.slot, uid);
    try {
      const job = runnerJob(this.config, hostRunnerPaths(this.files, workdir), request.script, request.args);
      const [command, ...args] = runnerArgv(this.config.sandboxPython, this.files.runnerDir);
      const result = await runProcess(
        { command, args, env: sandboxEnvironment(workdir), cwd: workdir, uid, gid: uid, detached: true, stdin: job, extraReadFds: 0 },
        {
          timeoutMs: this.config.scriptTimeoutMs,
          outputMaxBytes: this.config.outputMaxBytes,
          channelMaxBytes: channelMaxBytes(this.config),
          signal: request.signal,
          // Aggregate memory of the run and the size of its directory (no tmpfs cap in this mode).
          usage: uid === undefined ? undefined : runUsageLimits(this.config, uid, workdir),
          killTree: (pid) => this.killTree(pid, uid),
        },
      );
      return withUsageNote(toReport(result), result.exceeded);
    } finally {
      if (uid !== undefined) {
        await killAllOfUid(uid);
        await removeFilesOfUid(uid);
      }
      await removeRunDir(workdir);
    }
  }

  private async killTree(pid: number | undefined, uid: number | undefined): Promise<void> {
    if (uid !== undefined) return killAllOfUid(uid);
    // Not root: no uid of its own, so the process group is the best handle we have.
    if (pid !== undefined) {
      try {
        process.kill(-pid, 'SIGKILL');
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
