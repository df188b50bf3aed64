/**
 * Builds what the runner receives on stdin, and the environment allow-list, from configuration.
 * The same job shape serves both modes; only the paths differ (host paths in seccomp mode, paths
 * inside the jail in nsjail mode).
 */
import type { Config } from '../config';
import type { SandboxFiles } from './files';

const MIB = 1024 * 1024;

/** Envelope room on the result channel beyond the result itself (error messages, tracebacks). */
export const CHANNEL_ENVELOPE_BYTES = 256 * 1024;

export interface RunnerPaths {
  workdir: string;
  runnerDir: string;
  policyFile: string;
  /** Writable places beyond the workdir: nsjail mode's private /dev/shm (multiprocessing's semaphores). */
  extraWritePaths?: string[];
  /** What of /proc is readable: the jail's own /proc whole, or (seccomp mode) PROC_SELF_ONLY. */
  procPaths: string[];
}

/**
 * Seccomp mode shares the host's /proc. Landlock keeps the run to its own process directory
 * (/proc/self resolves to the runner's /proc/<pid> when the rule is made; its threads and the
 * directories below it are included) and a few system-wide files libraries read. Listing /proc,
 * and every other process's entries, are refused: a run sees no other run's processes. Children
 * of the runner have another pid and so no /proc/self; what reads it (subprocess's fd scan)
 * falls back.
 */
export const PROC_SELF_ONLY = [
  '/proc/self',
  '/proc/cpuinfo',
  '/proc/meminfo',
  '/proc/stat',
  '/proc/loadavg',
  '/proc/uptime',
  '/proc/version',
  '/proc/filesystems',
  '/proc/sys/vm/overcommit_memory',
  '/proc/sys/kernel/osrelease',
  '/proc/sys/kernel/random',
];

/** Read-only places the interpreter needs besides its own prefix and import path. */
const SYSTEM_READ_PATHS = [
  '/usr',
  '/lib',
  '/lib64',
  '/bin',
  '/etc/ld.so.cache',
  '/etc/localtime',
  '/etc/timezone',
  '/sys/devices/system/cpu',
  '/dev/urandom',
  '/dev/random',
  '/dev/zero',
];

/** The runner's paths when it runs on the host (seccomp mode, cold and warm). */
export function hostRunnerPaths(files: SandboxFiles, workdir: string): RunnerPaths {
  return { workdir, runnerDir: files.runnerDir, policyFile: files.policyFile, procPaths: PROC_SELF_ONLY };
}

/** Paths inside a jail, as sandbox-image/nsjail/*.cfg mount them. */
export const JAIL_WORKDIR = '/tmp';
export const JAIL_RUNNER_DIR = '/sandbox/runner';
export const JAIL_POLICY_FILE = '/sandbox/seccomp-policy.json';
/** zygote.cfg binds the warm path's socket directory (SandboxFiles.warmDir) here. */
export const JAIL_WARM_DIR = '/sandbox/warm';

/** The runner's paths inside a jail (nsjail mode, cold and warm): python.cfg's and zygote.cfg's mounts. */
export function jailRunnerPaths(): RunnerPaths {
  return { workdir: JAIL_WORKDIR, runnerDir: JAIL_RUNNER_DIR, policyFile: JAIL_POLICY_FILE, extraWritePaths: ['/dev/shm'], procPaths: ['/proc'] };
}

/** Limits and confinement of a run: everything the runner gets except the script and its args. */
export function runnerJobSpec(config: Config, paths: RunnerPaths) {
  return {
    result_max_bytes: config.resultMaxBytes,
    limits: {
      cpu_seconds: Math.ceil(config.scriptTimeoutMs / 1000),
      memory_bytes: config.scriptMemoryMb * MIB,
      max_processes: config.scriptMaxProcesses,
      max_open_files: config.scriptMaxOpenFiles,
      max_file_bytes: config.scriptMaxFileMb * MIB,
    },
    confine: {
      workdir: paths.workdir,
      read_paths: [...SYSTEM_READ_PATHS, ...paths.procPaths, paths.runnerDir, paths.policyFile],
      write_paths: [paths.workdir, '/dev/null', ...(paths.extraWritePaths ?? [])],
      seccomp_policy: paths.policyFile,
      landlock: true,
    },
  };
}

export function runnerJob(config: Config, paths: RunnerPaths, script: string, args: Record<string, unknown>): Buffer {
  return Buffer.from(JSON.stringify({ script, args, ...runnerJobSpec(config, paths) }), 'utf8');
}

/** The whole environment of a run: nothing of the service's own. */
export function sandboxEnvironment(workdir: string): Record<string, string> {
  return {
    PATH: '/usr/local/bin:/usr/bin:/bin',
    HOME: workdir,
    TMPDIR: workdir,
    LANG: 'C.UTF-8',
    LC_ALL: 'C.UTF-8',
    // One thread per BLAS/OpenMP pool: imports fit the memory limit, runs do not oversubscribe.
    OPENBLAS_NUM_THREADS: '1',
    OMP_NUM_THREADS: '1',
    MKL_NUM_THREADS: '1',
    NUMEXPR_NUM_THREADS: '1',
    MPLBACKEND: 'Agg',
    MPLCONFIGDIR: workdir,
  };
}

/**
 * The cold path's command line: the launcher (sandbox-image/runner/launcher.py, run as the
 * service's user) starts `command` in the run's cgroup and, with a uid, as the run's uid, reaps
 * what the run leaves behind, and reports the command's exit on statusFd.
 */
export function launcherArgv(python: string, runnerDir: string, run: { statusFd: number; uid?: number; join: string[] }, command: string[]): string[] {
  const flags = ['--status-fd', String(run.statusFd), ...(run.uid === undefined ? [] : ['--uid', String(run.uid)]), ...run.join.flatMap((file) => ['--join', file])];
  // -S: no site module, so nothing of the host's site-packages is imported by the service's own helper.
  return [python, '-I', '-S', '-B', `${runnerDir}/launcher.py`, ...flags, '--', ...command];
}

export function runnerArgv(python: string, runnerDir: string): string[] {
  // -I: ignore PYTHON* variables and the user site; -B: write no .pyc; -u: output in order.
  return [python, '-I', '-B', '-u', `${runnerDir}/runner.py`];
}

export function channelMaxBytes(config: Config): number {
  return config.resultMaxBytes + CHANNEL_ENVELOPE_BYTES;
}
