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
import { sandboxRootProblem, stageSandboxFiles, type SandboxFiles } from './files';
import { claimUidRange, uidRangeFinding } from './instance';
import { reportQuarantinesTo } from './uidReaper';
import { LimitedSandbox } from './limits';
import { trialRun } from './trial';
import { failedRun, NOT_TRIED, type Finding, type RunOrder, type RunReport, type Sandbox } from './types';
import type { WarmBoundary } from './warm/boundary';
import { WarmSandbox } from './warm/warmSandbox';
import { workRootFull } from './workRoot';

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
    /** This instance's own directory in the work root (workRoot.ts). */
    work_dir: Finding & { path: string | null };
    /** The uids this instance's runs execute as, claimed host-wide (instance.ts). */
    uid_range: Finding & { base: number | null; first: number | null; last: number | null };
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
  return {
    running_as_root: finding,
    ...Object.fromEntries(backends),
    cgroups: { ...finding, version: null, controllers: [] },
    warm_pool: finding,
    work_dir: { ...finding, path: null },
    uid_range: { ...finding, base: null, first: null, last: null },
  };
}

export async function probe(configured: Config, logger?: Logger): Promise<ProbeResult> {
  // A uid whose processes survive its kills is logged as it is quarantined and as it recovers.
  if (logger) reportQuarantinesTo(logger);
  // The uids this instance's runs execute as, claimed host-wide before anything runs (instance.ts):
  // with the default SANDBOX_UID_BASE, possibly another range than the configured one. Claimed
  // first, so that what a dead instance's runs left running is gone before the work root is cleaned.
  const uids = await claimUidRange(configured, logger);
  const config: Config = uids.ok ? { ...configured, sandboxUidBase: uids.range.base } : configured;
  const root = process.getuid?.() === 0;
  const capabilities: ProbeReport['capabilities'] = {
    ...allCapabilities(NOT_TRIED),
    running_as_root: {
      available: root,
      detail: root ? 'each run slot gets its own unprivileged uid' : 'not root: runs share the service uid (no per-run uid, weaker kill and file isolation)',
    },
    warm_pool: config.warmPool ? NOT_TRIED : { available: false, detail: 'WARM_POOL=off' },
    uid_range: uidRangeFinding(uids, configured) as ProbeReport['capabilities']['uid_range'],
  };

  const files = await stageSandboxFiles(config, logger);
  const others = files.workRootCleanup?.live ?? 0;
  capabilities.work_dir = {
    available: true,
    detail: `this instance's own directory in SANDBOX_WORK_ROOT, locked while it lives (${others} other live instance${others === 1 ? '' : 's'} in the work root at start-up)`,
    path: files.workDir,
  };
  if (!uids.ok) return refuse(config, capabilities, uids.reason);
  // Every mode and path runs Python only inside the sandbox's root: without it, no sandbox.
  const noRoot = await sandboxRootProblem(config);
  if (noRoot) return refuse(config, capabilities, noRoot);
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
  if (sandbox) sandbox = new WorkRootAware(sandbox, config.workRoot);
  return { report: { mode: chosen.mode, path: sandbox?.path ?? null, reason: chosen.reason, requested: config.sandboxMode, capabilities }, sandbox };
}

const SPACE_ERROR = /ENOSPC|EDQUOT|No space left|Disk quota exceeded|No space/;

/**
 * The chosen sandbox, telling a run that could not be set up because the work root's file system
 * is full apart from any other failure: the answer (503 sandbox_unavailable) says so, whichever
 * step of which backend hit it, and a step that threw ENOSPC is answered so too (not as an
 * internal error). Runs need nothing more: each sets its own place up again once space returns.
 */
class WorkRootAware implements Sandbox {
  readonly mode: Sandbox['mode'];
  readonly path: Sandbox['path'];
  readonly waiting?: Sandbox['waiting'];
  readonly readyFor?: Sandbox['readyFor'];
  readonly close?: () => Promise<void>;

  constructor(
    private readonly inner: Sandbox,
    private readonly workRoot: string,
  ) {
    this.mode = inner.mode;
    this.path = inner.path;
    if (inner.waiting) this.waiting = inner.waiting.bind(inner);
    if (inner.readyFor) this.readyFor = inner.readyFor.bind(inner);
    if (inner.close) this.close = inner.close.bind(inner);
  }

  async run(order: RunOrder): Promise<RunReport> {
    let report: RunReport;
    try {
      report = await this.inner.run(order);
    } catch (error) {
      const full = await workRootFull(this.workRoot);
      const message = (error as Error).message ?? String(error);
      if (!full && !SPACE_ERROR.test(message)) throw error;
      return failedRun(this.mode, `the run could not be set up: ${message}${full ? `; ${full}` : ''}`);
    }
    if (report.sandboxFailure) {
      const full = await workRootFull(this.workRoot);
      if (full) return { ...report, sandboxFailure: `${report.sandboxFailure}; ${full}` };
    }
    return report;
  }
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

/**
 * Starts the zygotes and sends a trial run through a warm child; any failure keeps the cold path.
 * With WARM_LEAN the same (lean) trial script goes twice through slot 0: first through the full
 * child every slot starts with, then through the lean child that replaced it, so both zygotes are
 * proven.
 */
async function tryWarmPool(config: Config, files: SandboxFiles, boundary: WarmBoundary, cgroups: RunCgroups | undefined, logger?: Logger): Promise<{ finding: Finding; sandbox?: Sandbox }> {
  const warm = new WarmSandbox(config, files, boundary, cgroups, logger);
  const sandbox = new LimitedSandbox(warm, config);
  try {
    await warm.start();
    let trial = await trialRun(sandbox);
    if (trial.ok && config.warmLean) trial = await trialRun(sandbox);
    const zygotes = config.warmLean ? 'full and lean zygotes started and trial runs through pre-forked children' : 'zygote started and a trial run through a pre-forked child';
    if (trial.ok) return { finding: { available: true, detail: `${zygotes} succeeded` }, sandbox };
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
