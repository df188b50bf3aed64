/**
 * The one place configuration is read. Every setting is an environment variable listed in
 * SETTINGS; README.md's configuration table is checked against this list by a test.
 */
import { realpathSync } from 'fs';
import * as os from 'os';
import * as path from 'path';

export type SandboxModeSetting = 'auto' | 'nsjail' | 'seccomp';
export type CgroupSetting = 'auto' | 'v2' | 'v1' | 'off';

export interface Config {
  port: number;
  sandboxMode: SandboxModeSetting;
  sandboxCgroups: CgroupSetting;
  nsjailPath: string;
  sandboxPython: string;
  sandboxRootfs: string;
  sandboxDir: string;
  workRoot: string;
  scriptTimeoutMs: number;
  scriptMemoryMb: number;
  scriptMaxProcesses: number;
  scriptMaxOpenFiles: number;
  scriptMaxFileMb: number;
  scriptTmpMb: number;
  outputMaxBytes: number;
  resultMaxBytes: number;
  requestMaxBytes: number;
  maxConcurrentRuns: number;
  maxQueue: number;
  maxQueueWaitMs: number;
  shutdownGraceMs: number;
  sandboxUidBase: number;
  /** SANDBOX_UID_BASE was set: a range another instance holds is refused, never moved from (sandbox/instance.ts). */
  sandboxUidBaseExplicit: boolean;
  uidLockDir: string;
  warmPool: boolean;
  warmPoolSize: number;
  zygoteMemoryMb: number;
  projectId: string | undefined;
  logScripts: boolean;
}

interface Setting {
  env: string;
  default: string;
  description: string;
}

const REPO_ROOT = path.resolve(__dirname, '..', '..');
const MIB = 1024 * 1024;

/** Script memory and CPU count bound how many runs fit at once (leave 256 MiB for the service). */
export function defaultConcurrency(memoryMb: number, cpus = os.cpus().length, totalMb = os.totalmem() / MIB): number {
  const byMemory = Math.floor((totalMb - 256) / memoryMb);
  return Math.max(1, Math.min(2 * cpus, byMemory));
}

export const SETTINGS: Setting[] = [
  { env: 'PORT', default: '8080', description: 'HTTP port (read by the Functions Framework; Cloud Run sets it).' },
  {
    env: 'SANDBOX_MODE',
    default: 'auto',
    description: '`auto`, `nsjail` or `seccomp`. `auto` probes at start-up: nsjail if a trial jail runs, else seccomp if a filter can be installed, else every run is refused with 503.',
  },
  {
    env: 'SANDBOX_CGROUPS',
    default: 'auto',
    description:
      "Per-run cgroups, in every mode and path: the kernel holds a run's memory (shared memory, memfds and tmpfs pages included; swap off) to SCRIPT_MEMORY_MB and its tasks to SCRIPT_MAX_PROCESSES, and ends the run through its cgroup. `auto` proves v2 (a delegated subtree with memory and pids), then v1 (memory and pids, plus freezer when mounted), then runs without (the usage sampler alone); `v2` or `v1` refuses every run (503) when that one is not usable; `off` never uses cgroups.",
  },
  { env: 'NSJAIL_PATH', default: 'nsjail (on PATH)', description: 'The nsjail binary.' },
  {
    env: 'SANDBOX_ROOTFS',
    default: '/var/cache/pyexec-rootfs/current/root',
    description:
      "The sandbox's root file system (sandbox-image/rootfs/build.sh; the image: /opt/sandbox/rootfs), resolved to its real path once at start-up. Every run, both modes and paths, sees only it: nsjail mode binds its /usr and /etc into the jail; seccomp mode chroots into a hard-link copy of it per run slot. Missing: every run is refused (503); the host's Python is never used instead.",
  },
  {
    env: 'SANDBOX_PYTHON',
    default: '/usr/bin/python3',
    description:
      "The sandbox's interpreter: its path inside SANDBOX_ROOTFS (under /usr). The service's own helper (the cold path's launcher) runs on the host's /usr/bin/python3 -I -S, standard library only.",
  },
  {
    env: 'SANDBOX_DIR',
    default: '<repo>/sandbox-image',
    description:
      'Holds `runner/`, `nsjail/` (the jails: `python.cfg`, `zygote.cfg`, `filesystem.cfg`) and `seccomp-policy.json` (the image uses /opt/sandbox). The runner and the policy are copied at start-up into SANDBOX_WORK_ROOT, so the checkout may sit where run uids cannot read (a 0700 home directory, a `mktemp -d` clone).',
  },
  {
    env: 'SANDBOX_WORK_ROOT',
    default: '<os tmpdir>/pyexec-runs',
    description:
      "What the service creates at run time (0711, root-owned), on a local filesystem; instances on one host may share it. Each instance works in a directory of its own, `instance-<random>` (the staged runner and policy, the runs' places, the warm path's socket; in seccomp mode a hard-link copy of SANDBOX_ROOTFS per run slot and one for the zygote, so it must be on SANDBOX_ROOTFS's file system), locked while the instance lives (an flock held by a child `flock` process, released by the kernel when the instance dies, in any pid namespace). It is removed when the instance exits, or by the next instance to start if it was killed; what cannot be removed is moved to `quarantine/`.",
  },
  { env: 'SCRIPT_TIMEOUT_MS', default: '10000', description: 'Wall-clock limit of one run (queue time not included). CPU time is limited to the same number of seconds, rounded up.' },
  {
    env: 'SCRIPT_MEMORY_MB',
    default: '512',
    description:
      "Memory of a run: the sum over all its processes, shared memory, memfds and tmpfs files included (the run's cgroup; without one, the service's sampler), and RLIMIT_AS of each process; over it is `memory_limit`.",
  },
  { env: 'SCRIPT_MAX_PROCESSES', default: '32', description: "Processes and threads a run may have at once (RLIMIT_NPROC for its own uid, and the run cgroup's pids limit)." },
  { env: 'SCRIPT_MAX_OPEN_FILES', default: '256', description: 'Open file descriptors per process (RLIMIT_NOFILE).' },
  { env: 'SCRIPT_MAX_FILE_MB', default: '16', description: 'Largest file a run may write (RLIMIT_FSIZE).' },
  {
    env: 'SCRIPT_TMP_MB',
    default: '64',
    description:
      "Disk a run may fill: nsjail mode's private tmpfs /tmp; seccomp mode's /tmp (in its run slot's root) plus the files the run holds open or mapped after unlinking them (sampled, with at most 10000 entries).",
  },
  { env: 'OUTPUT_MAX_BYTES', default: '1048576', description: 'Captured stdout and captured stderr are each cut at this many bytes (`truncated` says so); the rest is read and dropped.' },
  { env: 'RESULT_MAX_BYTES', default: '1048576', description: "Largest JSON encoding of main()'s return value; larger is `result_too_large`." },
  { env: 'REQUEST_MAX_BYTES', default: '1048576', description: 'Largest request body; larger is refused with 413 before it is read.' },
  { env: 'MAX_CONCURRENT_RUNS', default: 'min(2 x CPUs, (memory - 256 MiB) / SCRIPT_MEMORY_MB)', description: 'Runs executing at once (admission limit; set Cloud Run concurrency to the same).' },
  { env: 'MAX_QUEUE', default: '2 x MAX_CONCURRENT_RUNS', description: 'Requests that may wait for a free slot; beyond it 429.' },
  { env: 'MAX_QUEUE_WAIT_MS', default: '10000', description: 'Longest wait for a slot before 429.' },
  { env: 'SHUTDOWN_GRACE_MS', default: '8000', description: 'On SIGTERM, how long in-flight runs may finish before they are killed.' },
  {
    env: 'SANDBOX_UID_BASE',
    default: '60000',
    description:
      "Run slot n executes as uid/gid base+n (when the service runs as root); in nsjail mode the warm pool's zygote is base-1 outside its jail. Each instance claims its range (base-1 to base+MAX_CONCURRENT_RUNS-1) host-wide with a lock in SANDBOX_UID_LOCK_DIR. Unset, and the default range is held by another instance: it takes the next free one (stepping by MAX_CONCURRENT_RUNS+1) and logs it. Set, and another instance holds an overlapping range: every run is refused (503) with the reason. The range is in `/health` (`sandbox.capabilities.uid_range`).",
  },
  {
    env: 'SANDBOX_UID_LOCK_DIR',
    default: '/run/pyexec-uid-ranges',
    description:
      "Where the instances of one host claim their uid ranges (one lock file per range, 0700, root's). Every instance on the host must see the same directory (containers: mount one host directory into each); unused when the service is not root.",
  },
  {
    env: 'WARM_POOL',
    default: 'on',
    description:
      '`on`: runs use pre-forked, pre-confined interpreters from a zygote with numpy and pandas loaded, in either mode (in nsjail mode the zygote lives in a jail and runs as SANDBOX_UID_BASE-1 outside it; falls back to cold runs if the zygote cannot start); `off`: every run starts a new interpreter.',
  },
  { env: 'WARM_POOL_SIZE', default: 'MAX_CONCURRENT_RUNS', description: 'How many run slots keep a confined child waiting; other slots fork one on demand.' },
  { env: 'ZYGOTE_MEMORY_MB', default: '1024', description: 'Address-space limit of the zygote (its children lower theirs to SCRIPT_MEMORY_MB).' },
  { env: 'GOOGLE_CLOUD_PROJECT', default: '(unset)', description: 'Project id for trace correlation in logs.' },
  { env: 'LOG_SCRIPTS', default: 'false', description: 'Debugging only: also log scripts. By default only their SHA-256 is logged.' },
];

export class ConfigError extends Error {}

function integer(env: NodeJS.ProcessEnv, name: string, fallback: number, min: number, max: number): number {
  const raw = env[name];
  if (raw === undefined || raw === '') return fallback;
  if (!/^\d+$/.test(raw.trim())) throw new ConfigError(`${name} must be a whole number, got "${raw}"`);
  const value = Number(raw.trim());
  if (value < min || value > max) throw new ConfigError(`${name} must be between ${min} and ${max}, got ${value}`);
  return value;
}

function onOff(env: NodeJS.ProcessEnv, name: string, fallback: boolean): boolean {
  const raw = (env[name] ?? '').trim().toLowerCase();
  if (raw === '') return fallback;
  if (raw === 'on' || raw === 'true' || raw === '1') return true;
  if (raw === 'off' || raw === 'false' || raw === '0') return false;
  throw new ConfigError(`${name} must be on or off, got "${env[name]}"`);
}

/** The path with every symlink resolved (the root's `current` link moves when it is rebuilt); as given when it does not exist (the probe then refuses). */
function realPath(target: string): string {
  try {
    return realpathSync(target);
  } catch {
    return target;
  }
}

export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  const mode = (env.SANDBOX_MODE || 'auto').trim();
  if (mode !== 'auto' && mode !== 'nsjail' && mode !== 'seccomp') {
    throw new ConfigError(`SANDBOX_MODE must be auto, nsjail or seccomp, got "${mode}"`);
  }
  const cgroups = (env.SANDBOX_CGROUPS || 'auto').trim();
  if (cgroups !== 'auto' && cgroups !== 'v2' && cgroups !== 'v1' && cgroups !== 'off') {
    throw new ConfigError(`SANDBOX_CGROUPS must be auto, v2, v1 or off, got "${cgroups}"`);
  }
  const scriptMemoryMb = integer(env, 'SCRIPT_MEMORY_MB', 512, 64, 65536);
  const maxConcurrentRuns = integer(env, 'MAX_CONCURRENT_RUNS', defaultConcurrency(scriptMemoryMb), 1, 1000);
  return {
    port: integer(env, 'PORT', 8080, 0, 65535),
    sandboxMode: mode,
    sandboxCgroups: cgroups,
    nsjailPath: env.NSJAIL_PATH || 'nsjail',
    sandboxPython: env.SANDBOX_PYTHON || '/usr/bin/python3',
    sandboxRootfs: realPath(path.resolve(env.SANDBOX_ROOTFS || '/var/cache/pyexec-rootfs/current/root')),
    sandboxDir: path.resolve(env.SANDBOX_DIR || path.join(REPO_ROOT, 'sandbox-image')),
    workRoot: path.resolve(env.SANDBOX_WORK_ROOT || path.join(os.tmpdir(), 'pyexec-runs')),
    scriptTimeoutMs: integer(env, 'SCRIPT_TIMEOUT_MS', 10000, 100, 3600000),
    scriptMemoryMb,
    scriptMaxProcesses: integer(env, 'SCRIPT_MAX_PROCESSES', 32, 1, 100000),
    scriptMaxOpenFiles: integer(env, 'SCRIPT_MAX_OPEN_FILES', 256, 16, 1048576),
    scriptMaxFileMb: integer(env, 'SCRIPT_MAX_FILE_MB', 16, 1, 1048576),
    scriptTmpMb: integer(env, 'SCRIPT_TMP_MB', 64, 1, 1048576),
    outputMaxBytes: integer(env, 'OUTPUT_MAX_BYTES', MIB, 0, 1024 * MIB),
    resultMaxBytes: integer(env, 'RESULT_MAX_BYTES', MIB, 16, 1024 * MIB),
    requestMaxBytes: integer(env, 'REQUEST_MAX_BYTES', MIB, 64, 1024 * MIB),
    maxConcurrentRuns,
    maxQueue: integer(env, 'MAX_QUEUE', 2 * maxConcurrentRuns, 0, 100000),
    maxQueueWaitMs: integer(env, 'MAX_QUEUE_WAIT_MS', 10000, 0, 3600000),
    shutdownGraceMs: integer(env, 'SHUTDOWN_GRACE_MS', 8000, 0, 3600000),
    sandboxUidBase: integer(env, 'SANDBOX_UID_BASE', 60000, 1000, 4000000000),
    sandboxUidBaseExplicit: (env.SANDBOX_UID_BASE ?? '').trim() !== '',
    uidLockDir: path.resolve(env.SANDBOX_UID_LOCK_DIR || '/run/pyexec-uid-ranges'),
    warmPool: onOff(env, 'WARM_POOL', true),
    warmPoolSize: integer(env, 'WARM_POOL_SIZE', maxConcurrentRuns, 0, 1000),
    zygoteMemoryMb: integer(env, 'ZYGOTE_MEMORY_MB', 1024, 256, 65536),
    projectId: env.GOOGLE_CLOUD_PROJECT || env.GCLOUD_PROJECT || undefined,
    logScripts: env.LOG_SCRIPTS === 'true',
  };
}
