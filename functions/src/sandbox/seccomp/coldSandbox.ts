/**
 * Seccomp mode, cold path: the runner as a plain subprocess with an empty environment plus the
 * allow-list, in the run's own cgroup (where the host has one), chrooted into its slot's own copy
 * of the sandbox's root (slots.ts) with /tmp as its working directory, as the slot's own
 * unprivileged uid; the launcher (the host's Python, outside the sandbox) puts it there. The
 * runner then applies rlimits, no_new_privs, Landlock and the seccomp policy to itself before any
 * user code (sandbox-image/runner/confine.py). After the run's answer the slot's /tmp is emptied
 * (off the answer's path; the slot's next run waits for it: uidReaper.ts, cleanUpAfterAnswer).
 * A run some of whose processes survive every kill is answered 503, and its uid is quarantined:
 * the slot's runs are refused until they are gone (uidReaper.ts, killAllOfUid).
 */
import type { Config } from '../../config';
import type { RunCgroup, RunCgroups } from '../cgroup/cgroups';
import { HOST_PYTHON, type SandboxFiles } from '../files';
import { launcherArgv, runProcess, statusFdOf, type ProcessResult } from '../processRun';
import { coldJob, runnerArgv, sandboxEnvironment } from '../protocol';
import { failedRun, withUsageNote, type RunReport, type RunRequest, type SandboxPath } from '../types';
import { settlesWithin } from '../../deadline';
import { allCleanedUp, cleanUpAfterAnswer, endRun, killAllOfUid, removeFilesOfUid, uidReady } from '../uidReaper';
import { memoryVerdict, usageLimits } from '../usageWatch';
import { ROOT_WORKDIR, slotRunnerPaths, type SlotRoots } from './slots';

/** How long shutdown waits for the cleanups of answered runs. */
const CLOSE_TIMEOUT_MS = 3000;

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
    // The slot's last run may still be removing its files after its answer: this one starts
    // after. A uid whose processes survived its last kill gets no run until they are gone.
    const refused = await uidReady(uid);
    if (refused) return failedRun(this.mode, `run slot ${request.slot} refuses runs: ${refused}`);
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
    let report: RunReport;
    let survivors: string | undefined;
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
      report = withUsageNote(toReport(result), result.exceeded ?? memoryVerdict(usage));
    } finally {
      // Before the answer: no process of the run is left (runProcess killed them; this makes
      // sure, by the uid whatever the cgroup did, and costs one read when none is). After it:
      // the cgroup and the files go, and the slot's next run waits for that (uidReady, above);
      // if some survived, the uid is quarantined and the cleanup waits for its recovery.
      survivors = await endRun(uid, cgroup);
      void cleanUpAfterAnswer(uid, async () => {
        await cgroup?.destroy();
        await removeFilesOfUid(uid);
        await this.slots.resetTmp(request.slot, uid);
      });
    }
    return survivors ? failedRun(this.mode, `the run's processes could not all be killed: ${survivors}; run slot ${request.slot} refuses runs until they are gone`, report.wallMs) : report;
  }

  /** Shutdown: the cleanups of answered runs finish (bounded; what is left goes with the work directory at exit). */
  async close(): Promise<void> {
    await settlesWithin(allCleanedUp(), CLOSE_TIMEOUT_MS);
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
