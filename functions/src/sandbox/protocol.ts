/**
 * The runner protocol, the service's side: everything the service and the runner say to each
 * other. Its counterpart is sandbox-image/runner/runner.py, whose docstring and constants describe
 * the same protocol from the runner's side. Both paths speak it:
 *
 *   the process  runnerArgv and sandboxEnvironment (cold: the runner itself; warm: the zygote
 *                and each child it forks).
 *   the job      one JSON document: the script, its args, result_max_bytes, the request's files
 *                (written under the working directory before user code) and where to collect
 *                output files (`out`); on the cold path also the confinement the runner applies
 *                to itself first (coldJob), on the warm path the run's own time and memory limits,
 *                to which the already confined child lowers its rlimits (warmJob). Cold: the
 *                runner's stdin, read to EOF. Warm: the child's result connection, after the child
 *                has said WARM_READY (warmJob; it was confined when it was prepared, with the same
 *                confinement() in the zygote's command, warm/boundary.ts).
 *   the channel  the runner's answer (cold: fd 3; warm: the result connection): CONFINED_MARKER
 *                once every layer is on, then one RunnerMessage. A failed confinement sends a
 *                sandbox_error without the marker. Untrusted input: readChannel.
 *
 * functions/test/runner.python.test.ts holds the two sides' numbers together: CHANNEL_ENVELOPE_BYTES,
 * and the maxLength of each string of runnerMessageSchema's error (MESSAGE_LIMITS in runner.py).
 */
import Ajv, { type ValidateFunction } from 'ajv';
import type { RunLimits } from './limits';
import type { RunRequest } from './types';

/* ---------------------------------------------------------------- the process */

export function runnerArgv(python: string, runnerDir: string): string[] {
  // -I: ignore PYTHON* variables and the user site; -B: write no .pyc; -u: output in order.
  return [python, '-I', '-B', '-u', `${runnerDir}/runner.py`];
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

/* ---------------------------------------------------------------- the job */

/** Where the runner finds its files and may write, as it sees them: paths inside its slot's root (seccomp/host.ts) or inside a jail (nsjail/jail.ts). */
export interface RunnerPaths {
  workdir: string;
  runnerDir: string;
  policyFile: string;
  /** Writable places beyond the workdir: nsjail mode's private /dev/shm (multiprocessing's semaphores). */
  extraWritePaths?: string[];
  /** What of /proc is readable: the jail's own /proc whole (nsjail mode); seccomp mode's root has no /proc. */
  procPaths: string[];
}

/**
 * Read-only places the interpreter needs besides its own prefix and import path: paths inside the
 * sandbox's root (every mode and path sees only it), whose /etc holds nothing of the host's.
 */
const SYSTEM_READ_PATHS = [
  '/usr',
  '/lib',
  '/lib64',
  '/bin',
  '/etc/ld.so.cache',
  '/etc/alternatives',
  '/etc/localtime',
  '/etc/timezone',
  '/etc/matplotlibrc',
  '/etc/mime.types',
  '/etc/passwd',
  '/etc/group',
  '/sys/devices/system/cpu',
  '/dev/urandom',
  '/dev/random',
  '/dev/zero',
];

/**
 * What the runner confines itself to before any user code (sandbox-image/runner/confine.py):
 * rlimits, Landlock and the seccomp policy. In the job on the cold path; in the zygote's command
 * for each child on the warm path.
 */
export function confinement(limits: RunLimits, paths: RunnerPaths) {
  return {
    limits: {
      cpu_seconds: limits.cpuSeconds,
      memory_bytes: limits.memoryBytes,
      max_processes: limits.maxProcesses,
      max_open_files: limits.maxOpenFiles,
      max_file_bytes: limits.maxFileBytes,
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

/** The output files' directory, under the run's working directory (it starts empty). */
export const OUTPUT_DIR = 'out';

function scriptJob(request: RunRequest) {
  const { limits } = request;
  return {
    script: request.script,
    args: request.args,
    result_max_bytes: limits.resultMaxBytes,
    files: request.files,
    out: { dir: OUTPUT_DIR, max_files: limits.outputFilesMax, max_bytes: limits.outputFilesMaxBytes },
  };
}

/** A cold run's job: the run, and the confinement the runner applies to itself first. */
export function coldJob(request: RunRequest, paths: RunnerPaths): Buffer {
  return Buffer.from(JSON.stringify({ ...scriptJob(request), ...confinement(request.limits, paths) }), 'utf8');
}

/** A warm run's job: the run, and its own limits, which its already confined child lowers its rlimits to. */
export function warmJob(request: RunRequest): Buffer {
  const limits = { cpu_seconds: request.limits.cpuSeconds, memory_bytes: request.limits.memoryBytes };
  return Buffer.from(JSON.stringify({ ...scriptJob(request), limits }), 'utf8');
}

/* ---------------------------------------------------------------- the channel */

/** The cold runner's result channel (nsjail passes it into the jail: python.cfg's pass_fd). */
export const RESULT_FD = 3;

/** Written by the runner once confined, before any user code. */
export const CONFINED_MARKER = 0x1e;

/** Written by the runner after CONFINED_MARKER once the input files are written, right before the script's module runs. */
export const USER_CODE_MARKER = 0x1d;

/** A warm child's first line on its result connection: confined, and waiting for its job. */
export const WARM_READY = 'ready';

/** Envelope room on the result channel beyond the result itself (error messages, tracebacks). */
export const CHANNEL_ENVELOPE_BYTES = 256 * 1024;

/** Output files' paths (out/...) and skipped entries' paths, in characters; the runner skips or cuts longer ones. */
export const OUTPUT_PATH_MAX_CHARS = 1024;
/** Skipped entries (symlinks, fifos, ...) listed at most. */
export const SKIPPED_MAX = 100;
/** One listed file's or skipped entry's room beyond its content: its path fully escaped (\\uXXXX, up to 12 bytes a character when a surrogate pair) and its other fields. */
const OUTPUT_ENTRY_BYTES = OUTPUT_PATH_MAX_CHARS * 12 + 128;

export function channelMaxBytes(limits: RunLimits): number {
  const files = 4 * Math.ceil(limits.outputFilesMaxBytes / 3) + (limits.outputFilesMax + SKIPPED_MAX) * OUTPUT_ENTRY_BYTES;
  return limits.resultMaxBytes + files + CHANNEL_ENVELOPE_BYTES;
}

const RUNNER_ERROR_TYPES = ['syntax_error', 'missing_main', 'input_files', 'runtime_error', 'result_not_serializable', 'result_too_large', 'memory_limit', 'killed', 'sandbox_error'] as const;
export const SKIP_REASONS = ['symlink', 'fifo', 'socket', 'device', 'other', 'name_not_utf8', 'name_not_printable', 'path_too_long', 'too_deep', 'changed', 'unreadable', 'error'] as const;
type RunnerErrorType = (typeof RUNNER_ERROR_TYPES)[number];

const nullableInt = { type: ['integer', 'null'] };
const layersSchema = {
  type: 'object',
  additionalProperties: false,
  properties: {
    landlock_abi: { type: 'integer', minimum: 0, maximum: 1000 },
    seccomp_rules: { type: 'integer', minimum: 0, maximum: 100000 },
    no_new_privs: { type: 'boolean' },
  },
};

/** What the runner sends on its channel. Untrusted: the script runs in the same process as the runner. */
export const runnerMessageSchema = {
  $id: 'RunnerMessage',
  oneOf: [
    {
      type: 'object',
      additionalProperties: false,
      required: ['status', 'cpu_ms', 'layers', 'result'],
      properties: {
        status: { const: 'ok' },
        cpu_ms: { type: 'integer', minimum: 0 },
        layers: layersSchema,
        result: {},
        // What the script left under out/ (runner: files.py). Checked against the run's caps after the schema.
        files: {
          type: 'array',
          items: {
            type: 'object',
            additionalProperties: false,
            required: ['path', 'size', 'content_base64'],
            properties: {
              path: { type: 'string', pattern: '^out/', maxLength: OUTPUT_PATH_MAX_CHARS },
              size: { type: 'integer', minimum: 0 },
              content_base64: { type: 'string' },
            },
          },
        },
        skipped: {
          type: 'array',
          maxItems: SKIPPED_MAX,
          items: {
            type: 'object',
            additionalProperties: false,
            required: ['path', 'reason'],
            properties: { path: { type: 'string', maxLength: OUTPUT_PATH_MAX_CHARS }, reason: { enum: SKIP_REASONS } },
          },
        },
        files_truncated: { type: 'boolean' },
      },
    },
    {
      type: 'object',
      additionalProperties: false,
      required: ['status', 'cpu_ms', 'layers', 'error'],
      properties: {
        status: { const: 'error' },
        cpu_ms: { type: 'integer', minimum: 0 },
        layers: layersSchema,
        error: {
          type: 'object',
          additionalProperties: false,
          required: ['type', 'message'],
          properties: {
            type: { enum: RUNNER_ERROR_TYPES },
            message: { type: 'string', maxLength: 20000 },
            line: nullableInt,
            column: nullableInt,
            text: { type: ['string', 'null'], maxLength: 2000 },
            exception: { type: 'string', maxLength: 2000 },
            traceback: { type: 'string', maxLength: 200000 },
            exit_code: { type: 'integer' },
            // input_files: the OSError's errno name (ENOSPC: the run's disk is full).
            errno: { type: 'string', pattern: '^E[A-Z0-9]{1,31}$' },
          },
        },
      },
    },
  ],
} as const;

export interface RunnerLayers {
  landlock_abi?: number;
  seccomp_rules?: number;
  no_new_privs?: boolean;
}

export interface OutputFile {
  path: string;
  size: number;
  content_base64: string;
}

export interface SkippedEntry {
  path: string;
  reason: (typeof SKIP_REASONS)[number];
}

export type RunnerMessage =
  | { status: 'ok'; cpu_ms: number; layers: RunnerLayers; result: unknown; files?: OutputFile[]; skipped?: SkippedEntry[]; files_truncated?: boolean }
  | {
      status: 'error';
      cpu_ms: number;
      layers: RunnerLayers;
      error: {
        type: RunnerErrorType;
        message: string;
        line?: number | null;
        column?: number | null;
        text?: string | null;
        exception?: string;
        traceback?: string;
        exit_code?: number;
        errno?: string;
      };
    };

const validateRunnerMessage: ValidateFunction<RunnerMessage> = new Ajv({ allErrors: false, strict: true, allowUnionTypes: true }).compile<RunnerMessage>(runnerMessageSchema);

export type ChannelState = { kind: 'message'; message: RunnerMessage } | { kind: 'empty' } | { kind: 'oversize' } | { kind: 'invalid' };

/**
 * The channel is untrusted input: size-capped by the capture, then a strict parse and schema check.
 * The script shares the runner's process, so it can write to the channel too; what it cannot do
 * is remove the marker the runner wrote before user code. A message after the marker is the
 * script's to choose (a result or an error about itself), except sandbox_error, which only the
 * runner, before the marker, may send: a script cannot make the service claim its sandbox failed.
 * Likewise input_files (whose ENOSPC is answered 503): only before USER_CODE_MARKER.
 */
export function readChannel(capture: { overflowed: boolean; buffer(): Buffer }, limits: ChannelLimits): ChannelState {
  if (capture.overflowed) return { kind: 'oversize' };
  const raw = capture.buffer();
  if (raw.length === 0) return { kind: 'empty' };
  const confined = raw[0] === CONFINED_MARKER;
  const userCode = confined && raw[1] === USER_CODE_MARKER;
  const body = raw.subarray(Number(confined) + Number(userCode));
  if (body.length === 0) return { kind: 'empty' };
  let parsed: unknown;
  try {
    parsed = JSON.parse(body.toString('utf8'));
  } catch {
    return { kind: 'invalid' };
  }
  if (!validateRunnerMessage(parsed)) return { kind: 'invalid' };
  const sandboxError = parsed.status === 'error' && parsed.error.type === 'sandbox_error';
  if (confined === sandboxError) return { kind: 'invalid' };
  // The runner's own report that it could not write the input files comes before any user code.
  if (parsed.status === 'error' && parsed.error.type === 'input_files' && userCode) return { kind: 'invalid' };
  if (parsed.status === 'ok') {
    if (parsed.files && !filesWithinCaps(parsed.files, limits)) return { kind: 'invalid' };
    if (parsed.skipped?.some((entry) => entry.path !== OUTPUT_DIR && !entry.path.startsWith(`${OUTPUT_DIR}/`))) return { kind: 'invalid' };
    // The runner holds the result to RESULT_MAX_BYTES, but the script can write a message of its
    // own: measured again whenever the message could hold more than that (the channel has room
    // for output files too). JSON.stringify writes UTF-8 where the runner escapes to ASCII, so a
    // result the runner let through always passes.
    if (body.length > limits.resultMaxBytes + CHANNEL_ENVELOPE_BYTES && Buffer.byteLength(JSON.stringify(parsed.result) ?? '') > limits.resultMaxBytes) {
      return { kind: 'oversize' };
    }
  }
  return { kind: 'message', message: parsed };
}

/** What readChannel holds a message to, besides its schema: the run's limits. */
export type ChannelLimits = Pick<RunLimits, 'resultMaxBytes' | 'outputFilesMax' | 'outputFilesMaxBytes'>;

/** An output file's path as the runner sends it: out/ and plain components (none empty, "." or "..", no control character). */
function underOutputDir(path: string): boolean {
  const parts = path.split('/');
  return parts[0] === OUTPUT_DIR && parts.length > 1 && parts.slice(1).every((part) => part !== '' && part !== '.' && part !== '..' && !hasControlCharacter(part));
}

// eslint-disable-next-line no-control-regex -- control characters are exactly what is looked for
const CONTROL_CHARACTER = /[\u0000-\u001f\u007f]/;

/**
 * Whether a path (or a name in it) holds a control character: C0 (U+0000 to U+001F) or DEL
 * (U+007F), a newline or an escape sequence in a path a client may print or use. The one rule of
 * the service, for the paths of input files (inputFiles.ts) and of output files (readChannel);
 * the runner applies the same (runner/files.py, has_control_character: it skips such names
 * "name_not_printable"), and runner.python.test.ts checks that the two agree.
 */
export function hasControlCharacter(path: string): boolean {
  return CONTROL_CHARACTER.test(path);
}

const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

/** The bytes standard padded base64 decodes to, or undefined when it is not that (both directions of files use it). */
export function base64DecodedBytes(encoded: string): number | undefined {
  if (encoded.length % 4 !== 0 || !BASE64.test(encoded)) return undefined;
  const padding = encoded.endsWith('==') ? 2 : encoded.endsWith('=') ? 1 : 0;
  return (encoded.length / 4) * 3 - padding;
}

/** The files fit the run's caps, each path is plain and unique, and each one's base64 holds exactly its size in bytes. */
function filesWithinCaps(files: OutputFile[], limits: ChannelLimits): boolean {
  if (files.length > limits.outputFilesMax) return false;
  if (new Set(files.map((file) => file.path)).size !== files.length) return false;
  let total = 0;
  for (const file of files) {
    if (!underOutputDir(file.path)) return false;
    total += file.size;
    if (base64DecodedBytes(file.content_base64) !== file.size) return false;
  }
  return total <= limits.outputFilesMaxBytes;
}
