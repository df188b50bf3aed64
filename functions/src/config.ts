/**
 * The one place configuration is read. Every setting is an environment variable with one row in
 * SETTINGS: its Config field, its parser (which says what it accepts), its default and its
 * description. loadConfig() reads the environment through those rows, and README.md's
 * configuration table is written from them (settingsTable(); npm run docs:config), so the range
 * the service enforces and the range the README states are the same text.
 */
import { realpathSync } from 'fs';
import * as os from 'os';
import * as path from 'path';
import { SANDBOX_MODES, type SandboxMode } from './sandbox/backends';

export type SandboxModeSetting = 'auto' | SandboxMode;
const CGROUP_SETTINGS = ['auto', 'v2', 'v1', 'off'] as const;
export type CgroupSetting = (typeof CGROUP_SETTINGS)[number];

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
  inputFilesMax: number;
  inputFilesMaxBytes: number;
  outputFilesMax: number;
  outputFilesMaxBytes: number;
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
  warmLean: boolean;
  zygoteMemoryMb: number;
  projectId: string | undefined;
  logScripts: boolean;
}

export class ConfigError extends Error {}

/** How a variable's text (trimmed, not empty) becomes its value. */
export interface Parser<T> {
  /** What it accepts, as the error message and README.md's table say it: "a whole number from 64 to 65536". */
  allowed: string;
  /** The value, or undefined when the text is not accepted. */
  parse(text: string): T | undefined;
}

export function wholeNumber(min: number, max: number): Parser<number> {
  return {
    allowed: `a whole number from ${min} to ${max}`,
    parse: (text) => {
      if (!/^\d+$/.test(text)) return undefined;
      const value = Number(text);
      return value >= min && value <= max ? value : undefined;
    },
  };
}

export function oneOf<T extends string>(values: readonly T[]): Parser<T> {
  return {
    allowed: `${values.slice(0, -1).join(', ')} or ${values[values.length - 1]}`,
    parse: (text) => values.find((value) => value === text),
  };
}

export const onOff: Parser<boolean> = {
  allowed: 'on or off (or true/false, 1/0)',
  parse: (text) => {
    const word = text.toLowerCase();
    if (word === 'on' || word === 'true' || word === '1') return true;
    if (word === 'off' || word === 'false' || word === '0') return false;
    return undefined;
  },
};

/** Any text: a command looked up on PATH, a path inside the sandbox's root, a project id. */
export const anyText: Parser<string> = { allowed: 'any text', parse: (text) => text };

/** A path on this host, made absolute (relative to the working directory). */
export const hostPath: Parser<string> = { allowed: 'a path', parse: (text) => path.resolve(text) };

/** A host path with every symlink resolved (the root's `current` link moves when it is rebuilt); as given when it does not exist (the probe then refuses). */
export const realHostPath: Parser<string> = {
  allowed: 'a path (its symlinks resolved at start-up)',
  parse: (text) => {
    try {
      return realpathSync(path.resolve(text));
    } catch {
      return path.resolve(text);
    }
  },
};

export interface Setting<T> {
  env: string;
  parser: Parser<T>;
  /** The value when the variable is unset or empty; a function of the settings in rows above it when it depends on them or on the host. */
  default: T | ((above: Config) => T);
  /** README's default column when it is not the default value itself (a computed or host-dependent default). */
  shown?: string;
  description: string;
}

const MIB = 1024 * 1024;
const REPO_ROOT = path.resolve(__dirname, '..', '..');
const ROOTFS = '/var/cache/pyexec-rootfs/current/root';

/** Script memory and CPU count bound how many runs fit at once (leave 256 MiB for the service). */
export function defaultConcurrency(memoryMb: number, cpus = os.cpus().length, totalMb = os.totalmem() / MIB): number {
  const byMemory = Math.floor((totalMb - 256) / memoryMb);
  return Math.max(1, Math.min(2 * cpus, byMemory));
}

/**
 * One row per Config field (the compiler checks that each field has one, and that its parser and
 * default give the field's type), in README order. A computed default may use only rows above it.
 * sandboxUidBaseExplicit is not a variable of its own (loadConfig).
 */
const TABLE: { [Field in Exclude<keyof Config, 'sandboxUidBaseExplicit'>]: Setting<Config[Field]> } = {
  port: { env: 'PORT', parser: wholeNumber(0, 65535), default: 8080, description: 'HTTP port (read by the Functions Framework; Cloud Run sets it).' },
  sandboxMode: {
    env: 'SANDBOX_MODE',
    parser: oneOf(['auto', ...SANDBOX_MODES]),
    default: 'auto',
    description: `\`auto\` probes at start-up and takes the first backend whose trial run succeeds, in this order: ${SANDBOX_MODES.map((mode) => `\`${mode}\``).join(', ')}; when none does, every run is refused with 503. A backend named here is the only one used (503 when it is not usable).`,
  },
  sandboxCgroups: {
    env: 'SANDBOX_CGROUPS',
    parser: oneOf(CGROUP_SETTINGS),
    default: 'auto',
    description:
      "Per-run cgroups, in every mode and path: the kernel holds a run's memory (shared memory, memfds and tmpfs pages included; swap off) to SCRIPT_MEMORY_MB and its tasks to SCRIPT_MAX_PROCESSES, and ends the run through its cgroup. `auto` proves v2 (a delegated subtree with memory and pids), then v1 (memory and pids, plus freezer when mounted), then runs without (the usage sampler alone); `v2` or `v1` refuses every run (503) when that one is not usable; `off` never uses cgroups.",
  },
  nsjailPath: { env: 'NSJAIL_PATH', parser: anyText, default: 'nsjail', shown: 'nsjail (on PATH)', description: 'The nsjail binary.' },
  sandboxRootfs: {
    env: 'SANDBOX_ROOTFS',
    parser: realHostPath,
    default: () => realHostPath.parse(ROOTFS) ?? ROOTFS,
    shown: ROOTFS,
    description:
      "The sandbox's root file system (sandbox-image/rootfs/build.sh; the image: /opt/sandbox/rootfs), resolved to its real path once at start-up. Every run, both modes and paths, sees only it: nsjail mode binds its /usr and /etc into the jail; seccomp mode chroots into a hard-link copy of it per run slot. Missing: every run is refused (503); the host's Python is never used instead.",
  },
  sandboxPython: {
    env: 'SANDBOX_PYTHON',
    parser: anyText,
    default: '/usr/bin/python3',
    description:
      "The sandbox's interpreter: its path inside SANDBOX_ROOTFS (under /usr). The service's own helper (the cold path's launcher) runs on the host's /usr/bin/python3 -I -S, standard library only.",
  },
  sandboxDir: {
    env: 'SANDBOX_DIR',
    parser: hostPath,
    default: path.join(REPO_ROOT, 'sandbox-image'),
    shown: '<repo>/sandbox-image',
    description:
      'Holds `runner/`, `nsjail/` (the jails: `python.cfg`, `zygote.cfg`, `filesystem.cfg`) and `seccomp-policy.json` (the image uses /opt/sandbox). The runner and the policy are copied at start-up into SANDBOX_WORK_ROOT, so the checkout may sit where run uids cannot read (a 0700 home directory, a `mktemp -d` clone).',
  },
  workRoot: {
    env: 'SANDBOX_WORK_ROOT',
    parser: hostPath,
    default: () => path.join(os.tmpdir(), 'pyexec-runs'),
    shown: '<os tmpdir>/pyexec-runs',
    description:
      "What the service creates at run time (0711, root-owned), on a local filesystem; instances on one host may share it. Each instance works in a directory of its own, `instance-<random>` (the staged runner and policy, the runs' places, the warm path's socket; in seccomp mode a hard-link copy of SANDBOX_ROOTFS per run slot and one for the zygote, so it must be on SANDBOX_ROOTFS's file system), locked while the instance lives (an flock held by a child `flock` process, released by the kernel when the instance dies, in any pid namespace). It is removed when the instance exits, or by the next instance to start if it was killed; what cannot be removed is moved to `quarantine/`.",
  },
  scriptTimeoutMs: {
    env: 'SCRIPT_TIMEOUT_MS',
    parser: wholeNumber(100, 3600000),
    default: 10000,
    description: 'Wall-clock limit of one run (queue time not included). CPU time is limited to the same number of seconds, rounded up.',
  },
  scriptMemoryMb: {
    env: 'SCRIPT_MEMORY_MB',
    parser: wholeNumber(64, 65536),
    default: 512,
    description:
      "Memory of a run: the sum over all its processes, shared memory, memfds and tmpfs files included (the run's cgroup; without one, the service's sampler), and RLIMIT_AS of each process; over it is `memory_limit`.",
  },
  scriptMaxProcesses: {
    env: 'SCRIPT_MAX_PROCESSES',
    parser: wholeNumber(1, 100000),
    default: 32,
    description: "Processes and threads a run may have at once (RLIMIT_NPROC for its own uid, and the run cgroup's pids limit).",
  },
  scriptMaxOpenFiles: { env: 'SCRIPT_MAX_OPEN_FILES', parser: wholeNumber(16, 1048576), default: 256, description: 'Open file descriptors per process (RLIMIT_NOFILE).' },
  scriptMaxFileMb: { env: 'SCRIPT_MAX_FILE_MB', parser: wholeNumber(1, 1048576), default: 16, description: 'Largest file a run may write (RLIMIT_FSIZE).' },
  scriptTmpMb: {
    env: 'SCRIPT_TMP_MB',
    parser: wholeNumber(1, 1048576),
    default: 64,
    description:
      "Disk a run may fill: nsjail mode's private tmpfs /tmp; seccomp mode's /tmp (in its run slot's root) plus the files the run holds open or mapped after unlinking them (sampled, with at most 10000 entries).",
  },
  outputMaxBytes: {
    env: 'OUTPUT_MAX_BYTES',
    parser: wholeNumber(0, 1024 * MIB),
    default: MIB,
    description: 'Captured stdout and captured stderr are each cut at this many bytes (`truncated` says so); the rest is read and dropped.',
  },
  resultMaxBytes: { env: 'RESULT_MAX_BYTES', parser: wholeNumber(16, 1024 * MIB), default: MIB, description: "Largest JSON encoding of main()'s return value; larger is `result_too_large`." },
  requestMaxBytes: { env: 'REQUEST_MAX_BYTES', parser: wholeNumber(64, 1024 * MIB), default: MIB, description: 'Largest request body; larger is refused with 413 before it is read.' },
  inputFilesMax: { env: 'INPUT_FILES_MAX', parser: wholeNumber(0, 10000), default: 32, description: 'Most files a request may attach (`files`).' },
  inputFilesMaxBytes: {
    env: 'INPUT_FILES_MAX_BYTES',
    parser: wholeNumber(0, 1024 * MIB),
    default: (above) => above.requestMaxBytes,
    shown: 'REQUEST_MAX_BYTES',
    description:
      "Most bytes a request's files may hold together, decoded. Each must also fit SCRIPT_MAX_FILE_MB, and all of them SCRIPT_TMP_MB (the run's disk); the whole body is bounded by REQUEST_MAX_BYTES first.",
  },
  outputFilesMax: { env: 'OUTPUT_FILES_MAX', parser: wholeNumber(0, 10000), default: 32, description: "Most files returned from the run's `out/` directory; beyond it `truncated.files` is set." },
  outputFilesMaxBytes: {
    env: 'OUTPUT_FILES_MAX_BYTES',
    parser: wholeNumber(0, 1024 * MIB),
    default: 8 * MIB,
    description: 'Most bytes the returned files may hold together (before base64); a file that would go beyond it is left out and `truncated.files` is set.',
  },
  maxConcurrentRuns: {
    env: 'MAX_CONCURRENT_RUNS',
    parser: wholeNumber(1, 1000),
    default: (above) => defaultConcurrency(above.scriptMemoryMb),
    shown: 'min(2 x CPUs, (memory - 256 MiB) / SCRIPT_MEMORY_MB)',
    description: 'Runs executing at once (admission limit; set Cloud Run concurrency to the same).',
  },
  maxQueue: {
    env: 'MAX_QUEUE',
    parser: wholeNumber(0, 100000),
    default: (above) => 2 * above.maxConcurrentRuns,
    shown: '2 x MAX_CONCURRENT_RUNS',
    description: 'Requests that may wait for a free slot; beyond it 429.',
  },
  maxQueueWaitMs: { env: 'MAX_QUEUE_WAIT_MS', parser: wholeNumber(0, 3600000), default: 10000, description: 'Longest wait for a slot before 429.' },
  shutdownGraceMs: { env: 'SHUTDOWN_GRACE_MS', parser: wholeNumber(0, 3600000), default: 8000, description: 'On SIGTERM, how long in-flight runs may finish before they are killed.' },
  sandboxUidBase: {
    env: 'SANDBOX_UID_BASE',
    parser: wholeNumber(1000, 4000000000),
    default: 60000,
    description:
      "Run slot n executes as uid/gid base+n (when the service runs as root); in nsjail mode the warm pool's zygote is base-1 outside its jail. Each instance claims its range (base-1 to base+MAX_CONCURRENT_RUNS-1) host-wide with a lock in SANDBOX_UID_LOCK_DIR. Unset, and the default range is held by another instance: it takes the next free one (stepping by MAX_CONCURRENT_RUNS+1) and logs it. Set, and another instance holds an overlapping range: every run is refused (503) with the reason. The range is in `/health` (`sandbox.capabilities.uid_range`).",
  },
  uidLockDir: {
    env: 'SANDBOX_UID_LOCK_DIR',
    parser: hostPath,
    default: '/run/pyexec-uid-ranges',
    description:
      "Where the instances of one host claim their uid ranges (one lock file per range, 0700, root's). Every instance on the host must see the same directory (containers: mount one host directory into each); unused when the service is not root.",
  },
  warmPool: {
    env: 'WARM_POOL',
    parser: onOff,
    default: true,
    description:
      '`on`: runs use pre-forked, pre-confined interpreters from a zygote with numpy and pandas loaded, in either mode (in nsjail mode the zygote lives in a jail and runs as SANDBOX_UID_BASE-1 outside it; falls back to cold runs if the zygote cannot start); `off`: every run starts a new interpreter.',
  },
  warmPoolSize: {
    env: 'WARM_POOL_SIZE',
    parser: wholeNumber(0, 1000),
    default: (above) => above.maxConcurrentRuns,
    shown: 'MAX_CONCURRENT_RUNS',
    description: 'How many run slots keep a confined child waiting; other slots fork one on demand.',
  },
  warmLean: {
    env: 'WARM_LEAN',
    parser: onOff,
    default: true,
    description:
      '`on`: the warm path also starts a lean zygote, without numpy and pandas, whose children start and exit faster; a script whose import statements name only standard-library modules runs in one of its children, any other in a full one (a misjudged script only pays its import). Children of both are confined alike. `off`: one zygote, every child a full one.',
  },
  zygoteMemoryMb: { env: 'ZYGOTE_MEMORY_MB', parser: wholeNumber(256, 65536), default: 1024, description: 'Address-space limit of the zygote (its children lower theirs to SCRIPT_MEMORY_MB).' },
  projectId: { env: 'GOOGLE_CLOUD_PROJECT', parser: anyText, default: undefined, shown: '(unset)', description: 'Project id for trace correlation in logs.' },
  logScripts: { env: 'LOG_SCRIPTS', parser: onOff, default: false, description: 'Debugging only: also log scripts. By default only their SHA-256 is logged.' },
};

/** A row of the table with the Config field it sets. */
export type SettingRow = Setting<Config[keyof Config]> & { field: keyof Config };

/** The settings in README order. */
export const SETTINGS: readonly SettingRow[] = Object.entries(TABLE).map(([field, setting]) => ({ field: field as keyof Config, ...setting }));

/** The variable's text, trimmed; undefined when it is unset or empty. */
function textOf(env: NodeJS.ProcessEnv, name: string): string | undefined {
  return env[name]?.trim() || undefined;
}

function read<T>(setting: Setting<T>, env: NodeJS.ProcessEnv, above: Config): T {
  const text = textOf(env, setting.env);
  if (text === undefined) return typeof setting.default === 'function' ? (setting.default as (above: Config) => T)(above) : setting.default;
  const value = setting.parser.parse(text);
  if (value === undefined) throw new ConfigError(`${setting.env} must be ${setting.parser.allowed}, got "${env[setting.env]}"`);
  return value;
}

export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  const config = {} as Config;
  // In table order, so a computed default sees the rows above it.
  for (const setting of SETTINGS) (config as unknown as Record<string, unknown>)[setting.field] = read(setting, env, config);
  config.sandboxUidBaseExplicit = textOf(env, 'SANDBOX_UID_BASE') !== undefined;
  config.projectId ??= textOf(env, 'GCLOUD_PROJECT'); // the legacy name of GOOGLE_CLOUD_PROJECT
  return config;
}

/** README's default column: the default as the variable would hold it, or the row's own text for a computed one. */
export function shownDefault(setting: Setting<unknown>): string {
  if (setting.shown !== undefined) return setting.shown;
  if (typeof setting.default === 'function') throw new Error(`${setting.env}: a computed default needs its README text (shown)`);
  if (typeof setting.default === 'boolean') return setting.default ? 'on' : 'off';
  return String(setting.default);
}

/** README.md's configuration table (Markdown), one line per setting: scripts/config-table.js writes it, config.test.ts checks it. */
export function settingsTable(): string[] {
  const rows = SETTINGS.map((s) => `| \`${s.env}\` | \`${shownDefault(s)}\` | ${s.parser.allowed} | ${s.description} |`);
  return ['| variable | default | allowed | meaning |', '|---|---|---|---|', ...rows];
}
