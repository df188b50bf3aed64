/**
 * Seccomp mode: the runner as a plain subprocess with an empty environment plus the allow-list,
 * a private working directory, and (when the service is root) the slot's own unprivileged uid.
 * The runner then applies rlimits, no_new_privs, Landlock and the seccomp policy to itself
 * before any user code (sandbox-image/runner/confine.py).
 */
import { promises as fs } from 'fs';
import * as path from 'path';
import type { Config } from '../config';
import { channelMaxBytes, PROC_SELF_ONLY, runnerArgv, runnerJob, sandboxEnvironment } from './job';
import { runProcess, type ProcessResult } from './processRun';
import type { RunReport, RunRequest, Sandbox } from './types';
import { killAllOfUid, removeFilesOfUid } from './uidReaper';
import { withUsageNote, type LimitExceeded } from './types';
import { watchUsage } from './usageWatch';

const MIB = 1024 * 1024;

export class SeccompSandbox implements Sandbox {
  readonly mode = 'seccomp' as const;
  private readonly isRoot = process.getuid?.() === 0;

  constructor(private readonly config: Config) {}

  async run(request: RunRequest): Promise<RunReport> {
    const uid = this.isRoot ? this.config.sandboxUidBase + request.slot : undefined;
    const workdir = await this.makeWorkdir(request.slot, uid);
    // Aggregate memory of the run and the size of its directory (no tmpfs cap in this mode).
    let exceeded: LimitExceeded | undefined;
    const stopWatch =
      uid !== undefined
        ? watchUsage({ uid, memoryBytes: this.config.scriptMemoryMb * MIB, dir: workdir, dirBytes: this.config.scriptTmpMb * MIB }, (reason) => {
            exceeded = reason;
            void killAllOfUid(uid);
          })
        : () => undefined;
    try {
      const runnerDir = path.join(this.config.sandboxDir, 'runner');
      const job = runnerJob(
        this.config,
        { workdir, runnerDir, policyFile: path.join(this.config.sandboxDir, 'seccomp-policy.json'), procPaths: PROC_SELF_ONLY },
        request.script,
        request.args,
      );
      const [command, ...args] = runnerArgv(this.config.sandboxPython, runnerDir);
      const result = await runProcess(
        { command, args, env: sandboxEnvironment(workdir), cwd: workdir, uid, gid: uid, detached: true, stdin: job, extraReadFds: 0 },
        { timeoutMs: this.config.scriptTimeoutMs, outputMaxBytes: this.config.outputMaxBytes, channelMaxBytes: channelMaxBytes(this.config) },
        (pid) => this.killTree(pid, uid),
        request.signal,
      );
      return withUsageNote(toReport(result), exceeded);
    } finally {
      stopWatch();
      if (uid !== undefined) {
        await killAllOfUid(uid);
        await removeFilesOfUid(uid);
      }
      await fs.rm(workdir, { recursive: true, force: true });
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

  private async makeWorkdir(slot: number, uid: number | undefined): Promise<string> {
    await fs.mkdir(this.config.workRoot, { recursive: true, mode: 0o711 });
    const dir = await fs.mkdtemp(path.join(this.config.workRoot, `run-${slot}-`));
    if (uid !== undefined) await fs.chown(dir, uid, uid);
    await fs.chmod(dir, 0o700);
    return dir;
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
