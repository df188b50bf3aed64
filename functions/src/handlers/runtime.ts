/**
 * GET /runtime: what a script runs with. The sandbox's Python version, every distribution on its
 * interpreter's import path (name, version, the top-level modules it provides), and the effective
 * limits (this instance's configured maxima).
 *
 * The Python side is found by running a small script through the real sandbox, once per instance
 * (like the start-up probe's trial run), and cached; a failed attempt is not cached, so the next
 * request tries again. Why a run rather than reading the root's dist-info/egg-info metadata from
 * the host:
 *   - it is by definition what a script sees: the sandbox's own interpreter, its sys.path, .pth
 *     files and importlib.metadata's rules (dist-info and egg-info, name normalisation, the first
 *     distribution of a name on sys.path wins), with no second implementation of them here;
 *   - the root holds absolute symbolic links (usr/lib/python3.13/sitecustomize.py ->
 *     /etc/python3.13/sitecustomize.py, for one) that name files of the root only when resolved
 *     inside it: read from the host they name the host's files. Reading the root safely from the
 *     host needs resolution confined to the root (openat2's RESOLVE_IN_ROOT), which Node does not
 *     offer, and the sandbox gives for free.
 * It costs one run (a slot, tens of milliseconds) the first time; without a usable sandbox the
 * answer is 503 sandbox_unavailable, as for /execute.
 */
import type { Config } from '../config';
import type { RequestInfo, ServiceContext } from '../context';
import { ApiError } from '../errors';
import { SANDBOX_MODES } from '../sandbox/backends';
import type { Sandbox } from '../sandbox/types';
import { scriptKind } from '../sandbox/warm/scriptKind';
import type { HandlerResult } from './execute';

/** Runs inside the sandbox; returns {python, packages}. Standard library only. */
export const RUNTIME_SCRIPT = `
import importlib.metadata as metadata
import importlib.util
import platform
import re
import sys


def main():
    def key(name):
        return re.sub(r"[-_.]+", "-", name).lower()

    provides = {}
    for module, dists in metadata.packages_distributions().items():
        if not module.isidentifier():
            continue
        for dist in dists:
            provides.setdefault(key(dist), set()).add(module)
    importable = {}

    def found(module):
        if module not in importable:
            try:
                importable[module] = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError):
                importable[module] = False
        return importable[module]

    packages = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if not name or key(name) in packages:
            continue  # the first of a name on sys.path is the one imported
        # top_level.txt or RECORD when the distribution has them (Debian drops both from its
        # dist-info directories); otherwise the distribution's own name, when it imports.
        modules = {m for m in provides.get(key(name), ()) if found(m)}
        if not modules:
            base = key(name).removeprefix("python-").removesuffix("-py").replace("-", "_")
            modules = {m for m in (key(name).replace("-", "_"), base) if m.isidentifier() and found(m)}
        packages[key(name)] = {"name": name, "version": dist.version, "modules": sorted(modules)}
    return {
        "python": {
            "version": platform.python_version(),
            "implementation": sys.implementation.name,
            "build": sys.version,
        },
        "packages": sorted(packages.values(), key=lambda p: key(p["name"])),
    }
`;

export interface RuntimePackage {
  name: string;
  version: string;
  modules: string[];
}

export interface RuntimePython {
  python: { version: string; implementation: string; build: string };
  packages: RuntimePackage[];
}

/** The limits /runtime reports: its field, the Config field, the setting, what it bounds. */
const LIMITS: ReadonlyArray<readonly [field: string, config: keyof Config, setting: string, description: string]> = [
  ['timeout_ms', 'scriptTimeoutMs', 'SCRIPT_TIMEOUT_MS', 'Wall-clock time of a run, in milliseconds'],
  ['memory_mb', 'scriptMemoryMb', 'SCRIPT_MEMORY_MB', 'Memory of a run, all its processes together, in MiB'],
  ['max_processes', 'scriptMaxProcesses', 'SCRIPT_MAX_PROCESSES', 'Processes and threads a run may have at once'],
  ['max_open_files', 'scriptMaxOpenFiles', 'SCRIPT_MAX_OPEN_FILES', 'Open file descriptors per process'],
  ['max_file_mb', 'scriptMaxFileMb', 'SCRIPT_MAX_FILE_MB', 'Largest file a run may write, in MiB'],
  ['tmp_mb', 'scriptTmpMb', 'SCRIPT_TMP_MB', 'Disk a run may fill in its /tmp, in MiB'],
  ['output_max_bytes', 'outputMaxBytes', 'OUTPUT_MAX_BYTES', 'Captured stdout, and captured stderr, each, in bytes'],
  ['result_max_bytes', 'resultMaxBytes', 'RESULT_MAX_BYTES', "Largest JSON encoding of main()'s return value, in bytes"],
  ['request_max_bytes', 'requestMaxBytes', 'REQUEST_MAX_BYTES', 'Largest request body, in bytes'],
  ['input_files_max', 'inputFilesMax', 'INPUT_FILES_MAX', 'Most files a request may attach'],
  ['input_files_max_bytes', 'inputFilesMaxBytes', 'INPUT_FILES_MAX_BYTES', "Most bytes a request's files may hold together, decoded"],
  ['output_files_max', 'outputFilesMax', 'OUTPUT_FILES_MAX', 'Most files returned from the run'],
  ['output_files_max_bytes', 'outputFilesMaxBytes', 'OUTPUT_FILES_MAX_BYTES', 'Most bytes the returned files may hold together, before base64'],
];

/** The answer of GET /runtime, in the OpenAPI document (openapi.ts) as components.schemas.Runtime. */
export const runtimeSchema = {
  type: 'object',
  required: ['python', 'packages', 'limits', 'sandbox', 'request_id'],
  properties: {
    python: {
      type: 'object',
      description: "The sandbox's interpreter, as it reports itself.",
      required: ['version', 'implementation', 'build'],
      properties: {
        version: { type: 'string', description: 'platform.python_version(), e.g. 3.13.5.' },
        implementation: { type: 'string', description: 'sys.implementation.name (cpython).' },
        build: { type: 'string', description: 'sys.version.' },
      },
    },
    packages: {
      type: 'array',
      description:
        "Every distribution on the sandbox interpreter's import path, as importlib.metadata sees it inside the sandbox (the first of a " +
        'name on sys.path, the one imported), sorted by name: its name, its version, and the top-level modules it provides.',
      items: {
        type: 'object',
        required: ['name', 'version', 'modules'],
        properties: {
          name: { type: 'string' },
          version: { type: 'string' },
          modules: {
            type: 'array',
            items: { type: 'string' },
            description:
              'Its top-level import names that the interpreter finds, e.g. ["dateutil"] for python-dateutil: from its top_level.txt or RECORD, ' +
              "else (Debian drops both from its dist-info directories) its own name when that imports. Empty when neither tells (beautifulsoup4's bs4).",
          },
        },
      },
    },
    limits: {
      type: 'object',
      description: "This instance's effective limits: its configured maxima (a request can only lower the ones it may set).",
      required: LIMITS.map(([field]) => field),
      properties: Object.fromEntries(LIMITS.map(([field, , setting, description]) => [field, { type: 'integer', description: `${description} (${setting}).` }])),
    },
    sandbox: { enum: [...SANDBOX_MODES], description: 'The sandbox mode that runs scripts on this instance (and reported the above).' },
    request_id: { type: 'string' },
  },
} as const;

/** The Python side, by sandbox: one run per instance (the sandbox object lives as long as it). */
const cache = new WeakMap<Sandbox, Promise<RuntimePython>>();

export async function runtime(ctx: ServiceContext, info: RequestInfo): Promise<HandlerResult> {
  const { sandbox, report } = await ctx.probe;
  if (!sandbox) throw new ApiError('sandbox_unavailable', `no sandbox is usable on this instance: ${report.reason}`);
  let python = cache.get(sandbox);
  if (!python) {
    python = inspect(ctx, sandbox);
    cache.set(sandbox, python);
    const attempt = python;
    attempt.catch(() => {
      if (cache.get(sandbox) === attempt) cache.delete(sandbox); // the next request tries again
    });
  }
  const { config } = ctx;
  return {
    status: 200,
    body: {
      ...(await python),
      limits: Object.fromEntries(LIMITS.map(([field, key]) => [field, config[key]])),
      sandbox: sandbox.mode,
      request_id: info.requestId,
    },
  };
}

/** One run of RUNTIME_SCRIPT, in a slot of its own (it waits for one like any request; 429 when none comes). */
async function inspect(ctx: ServiceContext, sandbox: Sandbox): Promise<RuntimePython> {
  const kind = scriptKind(RUNTIME_SCRIPT);
  const lease = await ctx.admission.acquire(undefined, sandbox.readyFor?.(kind));
  try {
    // Not the request's abort signal: the answer is shared by every request waiting for it.
    const run = await sandbox.run({ script: RUNTIME_SCRIPT, kind, args: {}, slot: lease.slot, signal: new AbortController().signal });
    if (run.sandboxFailure) throw new ApiError('sandbox_unavailable', `the sandbox failed to start the runtime inspection: ${run.sandboxFailure}`);
    if (run.channel.kind === 'message' && run.channel.message.status === 'ok') return run.channel.message.result as RuntimePython;
    const why = run.channel.kind === 'message' && run.channel.message.status === 'error' ? run.channel.message.error.message : `exit ${run.exitCode}, signal ${run.signal}`;
    throw new Error(`the runtime inspection failed in the sandbox: ${why}; stderr: ${run.stderr.text.trim().slice(-500)}`);
  } finally {
    lease.release();
  }
}
