/**
 * Start-up capability probe. Cloud Run gen2 does not document whether user namespaces, cgroup v2
 * delegation, seccomp or Landlock are available, so each is tried for real (a trial run through
 * the actual sandbox, not a guess from kernel version) and the mode is chosen from the findings:
 * the backend SANDBOX_MODE names, or under `auto` the first of backends.ts's list whose trial ran.
 */
import { randomBytes } from 'crypto';
import type { Config } from '../config';
import type { Logger } from '../logging';
import { BACKENDS, type BackendTrial, type SandboxMode } from './backends';
import { probeCgroups, RunCgroups } from './cgroup/cgroups';
import { stageSandboxFiles, type SandboxFiles } from './files';
import { LimitedSandbox } from './limits';
import { trialRun } from './trial';
import { NOT_TRIED, type Finding, type Sandbox } from './types';
import type { WarmBoundary } from './warm/boundary';
import { WarmSandbox } from './warm/warmSandbox';

export interface ProbeReport {
  mode: SandboxMode | null;
  /** warm: pre-forked children from the zygote; cold: a new interpreter per run. */
  path: 'warm' | 'cold' | null;
  reason: string;
  requested: Config['sandboxMode'];
  /** The host's findings, and each backend's under its mode (and any it adds, such as landlock). */
  capabilities: {
    running_as_root: Finding;
    cgroups: Finding & { version: 'v1' | 'v2' | null; controllers: string[] };
    warm_pool: Finding;
    [backend: string]: Finding;
  };
}

export interface ProbeResult {
  report: ProbeReport;
  sandbox: Sandbox | null;
}

/**
 * Every finding the probe reports, the host's and each backend's, all set to `finding`: what a
 * probe starts from, and what stands in for one that did not run.
 */
export function allCapabilities(finding: Finding): ProbeReport['capabilities'] {
  const backends = BACKENDS.flatMap((backend) => Object.entries(backend.notTried).map(([key, shape]): [string, Finding] => [key, { ...shape, ...finding }]));
  return { running_as_root: finding, ...Object.fromEntries(backends), cgroups: { ...finding, version: null, controllers: [] }, warm_pool: finding };
}

export async function probe(config: Config, logger?: Logger): Promise<ProbeResult> {
  const root = process.getuid?.() === 0;
  const capabilities: ProbeReport['capabilities'] = {
    ...allCapabilities(NOT_TRIED),
    running_as_root: {
      available: root,
      detail: root ? 'each run slot gets its own unprivileged uid' : 'not root: runs share the service uid (no per-run uid, weaker kill and file isolation)',
    },
    warm_pool: config.warmPool ? NOT_TRIED : { available: false, detail: 'WARM_POOL=off' },
  };

  const files = await stageSandboxFiles(config, logger);
  // Every cgroup of this instance is named with a tag of its own: pids repeat across containers.
  const instanceTag = `${process.pid}-${randomBytes(3).toString('hex')}`;
  const cgroupProbe = await probeCgroups(config.sandboxCgroups, instanceTag);
  capabilities.cgroups = {
    available: cgroupProbe.host !== null,
    version: cgroupProbe.host?.version ?? null,
    controllers: cgroupProbe.host?.controllers ?? [],
    detail: cgroupProbe.detail,
  };
  const cgroups = cgroupProbe.host ? new RunCgroups(cgroupProbe.host, instanceTag) : undefined;
  if (!cgroups && config.sandboxCgroups !== 'auto' && config.sandboxCgroups !== 'off') {
    return refuse(config, capabilities, `SANDBOX_CGROUPS=${config.sandboxCgroups} but ${cgroupProbe.detail}`);
  }

  const trials = new Map<SandboxMode, BackendTrial>();
  for (const backend of BACKENDS) {
    if (config.sandboxMode !== 'auto' && config.sandboxMode !== backend.mode && !backend.alwaysTried) continue;
    const trial = await backend.trial({ config, files, cgroups });
    Object.assign(capabilities, trial.findings);
    trials.set(backend.mode, trial);
  }

  const chosen = choose(config.sandboxMode, trials);
  let sandbox = chosen.trial?.cold ?? null;
  if (config.warmPool && chosen.trial?.warm) {
    const warm = await tryWarmPool(config, files, chosen.trial.warm, cgroups, logger);
    capabilities.warm_pool = warm.finding;
    if (warm.sandbox) sandbox = warm.sandbox;
  }
  return { report: { mode: chosen.mode, path: sandbox?.path ?? null, reason: chosen.reason, requested: config.sandboxMode, capabilities }, sandbox };
}

/** The backend SANDBOX_MODE names, or under `auto` the first whose trial ran. */
function choose(requested: Config['sandboxMode'], trials: Map<SandboxMode, BackendTrial>): { mode: SandboxMode | null; reason: string; trial?: BackendTrial } {
  const detail = (mode: SandboxMode) => trials.get(mode)?.findings[mode]?.detail ?? NOT_TRIED.detail;
  if (requested !== 'auto') {
    const trial = trials.get(requested);
    return trial?.cold
      ? { mode: requested, reason: `SANDBOX_MODE=${requested} and its trial run succeeded`, trial }
      : { mode: null, reason: `SANDBOX_MODE=${requested} but ${requested} is not usable: ${detail(requested)}` };
  }
  const unusable: string[] = [];
  for (const { mode } of BACKENDS) {
    const trial = trials.get(mode);
    if (trial?.cold) return { mode, reason: `auto: ${[...unusable, `${mode}'s trial run succeeded`].join('; ')}`, trial };
    unusable.push(`${mode} not usable (${detail(mode)})`);
  }
  return { mode: null, reason: `auto: no sandbox is usable. ${BACKENDS.map(({ mode }) => `${mode}: ${detail(mode)}`).join('. ')}` };
}

/** Starts the zygote and sends one trial run through a warm child; any failure keeps the cold path. */
async function tryWarmPool(
  config: Config,
  files: SandboxFiles,
  boundary: WarmBoundary,
  cgroups: RunCgroups | undefined,
  logger?: Logger,
): Promise<{ finding: Finding; sandbox?: Sandbox }> {
  const warm = new WarmSandbox(config, files, boundary, cgroups, logger);
  const sandbox = new LimitedSandbox(warm, config);
  try {
    await warm.start();
    const trial = await trialRun(sandbox);
    if (trial.ok) return { finding: { available: true, detail: 'zygote started and a trial run through a pre-forked child succeeded' }, sandbox };
    warm.stop();
    return { finding: { available: false, detail: `warm trial run failed, using cold runs: ${trial.detail}` } };
  } catch (error) {
    warm.stop();
    return { finding: { available: false, detail: `the zygote could not start, using cold runs: ${(error as Error).message}` } };
  }
}

/** No sandbox: every run is refused with 503, for the reason given. */
function refuse(config: Config, capabilities: ProbeReport['capabilities'], reason: string): ProbeResult {
  return { report: { mode: null, path: null, reason, requested: config.sandboxMode, capabilities }, sandbox: null };
}
