/**
 * What bounds one run, derived in one place and carried in its RunRequest to everything that
 * enforces it: the watchdog and the output caps (processRun.ts, warm/warmSandbox.ts), the rlimits
 * in the runner's job (protocol.ts), the run's cgroup (cgroup/cgroups.ts), the usage sampler
 * (usageWatch.ts) and nsjail's flags (nsjail/jail.ts).
 *
 * The configured limits are each run's maxima and defaults; a request may lower its time and
 * memory limits (RequestedLimits, checked against the maxima by validation.ts). A warm child is
 * confined before its run exists, with the configured limits: its job carries the run's own, and
 * it lowers its rlimits before any user code, as the service lowers its cgroup before the job
 * (warm/warmSandbox.ts).
 *
 * Not here, because they are per instance: the size of a run's writable space (SCRIPT_TMP_MB),
 * which nsjail can only take from its rendered python.cfg (a tmpfs mounted from its command line
 * cannot be nosuid and nodev), and the zygote's own limits.
 */
import type { Config } from '../config';
import type { RunOrder, RunReport, Sandbox, SandboxPath } from './types';

export const MIB = 1024 * 1024;

export interface RunLimits {
  /** Wall clock, queue time not included: the service's watchdog (and nsjail's, a second later). */
  timeoutMs: number;
  /** RLIMIT_CPU. */
  cpuSeconds: number;
  /** RLIMIT_AS of each process, and the whole run's memory (its cgroup, or the usage sampler). */
  memoryBytes: number;
  /** RLIMIT_NPROC, and the run cgroup's pids limit. */
  maxProcesses: number;
  /** RLIMIT_NOFILE. */
  maxOpenFiles: number;
  /** RLIMIT_FSIZE. */
  maxFileBytes: number;
  /** Captured stdout, and captured stderr, each. */
  outputMaxBytes: number;
  /** The JSON of main()'s return value. */
  resultMaxBytes: number;
  /** Files returned from the run's out/ directory: how many, and their bytes together. */
  outputFilesMax: number;
  outputFilesMaxBytes: number;
}

/** What a request asked for (its `limits`), at most the configured maxima (validation.ts checks). */
export interface RequestedLimits {
  timeoutMs?: number;
  memoryMb?: number;
}

/** The limits of one run: the configuration's, lowered where the request asked. */
export function runLimits(config: Config, requested: RequestedLimits = {}): RunLimits {
  const timeoutMs = Math.min(requested.timeoutMs ?? config.scriptTimeoutMs, config.scriptTimeoutMs);
  const memoryMb = Math.min(requested.memoryMb ?? config.scriptMemoryMb, config.scriptMemoryMb);
  return {
    timeoutMs,
    // CPU time: the wall-clock limit's seconds, rounded up.
    cpuSeconds: Math.ceil(timeoutMs / 1000),
    memoryBytes: memoryMb * MIB,
    maxProcesses: config.scriptMaxProcesses,
    maxOpenFiles: config.scriptMaxOpenFiles,
    maxFileBytes: config.scriptMaxFileMb * MIB,
    outputMaxBytes: config.outputMaxBytes,
    resultMaxBytes: config.resultMaxBytes,
    outputFilesMax: config.outputFilesMax,
    outputFilesMaxBytes: config.outputFilesMaxBytes,
  };
}

/** The limits a response echoes (`limits`). */
export function publicLimits(limits: RunLimits): { timeout_ms: number; memory_mb: number } {
  return { timeout_ms: limits.timeoutMs, memory_mb: Math.round(limits.memoryBytes / MIB) };
}

/**
 * The sandbox the service runs scripts with (the start-up probe's choice): a backend on its warm
 * or cold path, whose every run, trial runs included, gets its limits here.
 */
export class LimitedSandbox implements Sandbox {
  readonly mode: SandboxPath['mode'];
  readonly path: SandboxPath['path'];
  readonly waiting?: Sandbox['waiting'];
  readonly readyFor?: Sandbox['readyFor'];
  readonly close?: () => Promise<void>;

  constructor(
    private readonly inner: SandboxPath,
    private readonly config: Config,
  ) {
    this.mode = inner.mode;
    this.path = inner.path;
    if (inner.waiting) this.waiting = inner.waiting.bind(inner);
    if (inner.readyFor) this.readyFor = inner.readyFor.bind(inner);
    if (inner.close) this.close = inner.close.bind(inner);
  }

  run(order: RunOrder): Promise<RunReport> {
    return this.inner.run({ ...order, files: order.files ?? [], limits: runLimits(this.config, order.limits) });
  }
}
