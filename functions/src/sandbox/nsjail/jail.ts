/**
 * A jail as the service addresses it: the paths inside it (python.cfg and zygote.cfg mount them
 * there), and a cold jail's per-run limits, given on nsjail's command line.
 */
import { MIB, type RunLimits } from '../limits';
import type { RunnerPaths } from '../protocol';

export const JAIL_WORKDIR = '/tmp';
export const JAIL_RUNNER_DIR = '/sandbox/runner';
export const JAIL_POLICY_FILE = '/sandbox/seccomp-policy.json';
/** zygote.cfg binds the warm path's socket directory (SandboxFiles.warmDir) here. */
export const JAIL_WARM_DIR = '/sandbox/warm';

/** The runner's paths inside a jail, cold and warm. */
export function jailRunnerPaths(): RunnerPaths {
  return { workdir: JAIL_WORKDIR, runnerDir: JAIL_RUNNER_DIR, policyFile: JAIL_POLICY_FILE, extraWritePaths: ['/dev/shm'], procPaths: ['/proc'] };
}

/**
 * A cold jail's limits as nsjail flags, given after --config so that they are the ones in force:
 * nsjail's own watchdog, a second behind the service's (which kills the whole tree first), and
 * the jail's rlimits. python.cfg keeps only what is the same for every run.
 */
export function limitFlags(limits: RunLimits): string[] {
  // nsjail takes sizes in MiB: rounded down, never above the limit.
  const mib = (bytes: number) => String(Math.floor(bytes / MIB));
  return [
    '--time_limit',
    String(Math.ceil(limits.timeoutMs / 1000) + 1),
    '--rlimit_cpu',
    String(limits.cpuSeconds),
    '--rlimit_as',
    mib(limits.memoryBytes),
    '--rlimit_fsize',
    mib(limits.maxFileBytes),
    '--rlimit_nofile',
    String(limits.maxOpenFiles),
    '--rlimit_nproc',
    String(limits.maxProcesses),
  ];
}
