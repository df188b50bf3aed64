/**
 * The runner protocol, the service's side: everything the service and the runner say to each
 * other. Its counterpart is sandbox-image/runner/runner.py, whose docstring and constants describe
 * the same protocol from the runner's side. Both paths speak it:
 *
 *   the process  runnerArgv and sandboxEnvironment (cold: the runner itself; warm: the zygote
 *                and each child it forks).
 *   the job      one JSON document: the script, its args and result_max_bytes, and on the cold
 *                path the confinement the runner applies to itself first (coldJob). Cold: the
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

function scriptJob(request: RunRequest) {
  return { script: request.script, args: request.args, result_max_bytes: request.limits.resultMaxBytes };
}

/** A cold run's job: the run, and the confinement the runner applies to itself first. */
export function coldJob(request: RunRequest, paths: RunnerPaths): Buffer {
  return Buffer.from(JSON.stringify({ ...scriptJob(request), ...confinement(request.limits, paths) }), 'utf8');
}

/** A warm run's job: the run alone; its child is confined already. */
export function warmJob(request: RunRequest): Buffer {
  return Buffer.from(JSON.stringify(scriptJob(request)), 'utf8');
}

/* ---------------------------------------------------------------- the channel */

/** The cold runner's result channel (nsjail passes it into the jail: python.cfg's pass_fd). */
export const RESULT_FD = 3;

/** Written by the runner once confined, before any user code. */
export const CONFINED_MARKER = 0x1e;

/** A warm child's first line on its result connection: confined, and waiting for its job. */
export const WARM_READY = 'ready';

/** Envelope room on the result channel beyond the result itself (error messages, tracebacks). */
export const CHANNEL_ENVELOPE_BYTES = 256 * 1024;

export function channelMaxBytes(limits: RunLimits): number {
  return limits.resultMaxBytes + CHANNEL_ENVELOPE_BYTES;
}

const RUNNER_ERROR_TYPES = ['syntax_error', 'missing_main', 'runtime_error', 'result_not_serializable', 'result_too_large', 'memory_limit', 'killed', 'sandbox_error'] as const;
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

export type RunnerMessage =
  | { status: 'ok'; cpu_ms: number; layers: RunnerLayers; result: unknown }
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
 */
export function readChannel(capture: { overflowed: boolean; buffer(): Buffer }): ChannelState {
  if (capture.overflowed) return { kind: 'oversize' };
  const raw = capture.buffer();
  if (raw.length === 0) return { kind: 'empty' };
  const confined = raw[0] === CONFINED_MARKER;
  const body = confined ? raw.subarray(1) : raw;
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
  return { kind: 'message', message: parsed };
}
