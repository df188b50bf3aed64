/**
 * Start-up capability probe. Cloud Run gen2 does not document whether user namespaces, cgroup v2
 * delegation, seccomp or Landlock are available, so each is tried for real (a trial run through
 * the actual sandbox, not a guess from kernel version) and the mode is chosen from the findings.
 */
import { randomBytes } from 'crypto';
import { promises as fs, constants as fsConstants } from 'fs';
import * as path from 'path';
import type { Config } from '../config';
import { probeCgroups, RunCgroups } from './cgroup/cgroups';
import { NsjailSandbox } from './nsjailSandbox';
import { stageSandboxFiles, type SandboxFiles } from './files';
import { writeNsjailConfigs } from './nsjailConfig';
import { SeccompSandbox } from './seccompSandbox';
import type { RunReport, Sandbox, SandboxMode } from './types';
import { nsjailBoundary, seccompBoundary, type WarmBoundary } from './warm/boundary';
import { WarmSandbox } from './warm/warmSandbox';
import type { Logger } from '../logging';

export interface Finding {
  available: boolean;
  detail: string;
}

export interface ProbeReport {
  mode: SandboxMode | null;
  /** warm: pre-forked children from the zygote; cold: a new interpreter per run. */
  path: 'warm' | 'cold' | null;
  reason: string;
  requested: Config['sandboxMode'];
  capabilities: {
    running_as_root: Finding;
    seccomp: Finding;
    landlock: Finding & { abi: number };
    nsjail: Finding & { path?: string };
    cgroups: Finding & { version: 'v1' | 'v2' | null; controllers: string[] };
    warm_pool: Finding;
  };
}

export interface ProbeResult {
  report: ProbeReport;
  sandbox: Sandbox | null;
}

const TRIAL_SCRIPT = 'def main():\n    return 42\n';

export async function trialRun(sandbox: Sandbox, slot = 0): Promise<{ ok: boolean; detail: string; report: RunReport }> {
  const report = await sandbox.run({ script: TRIAL_SCRIPT, args: {}, slot, signal: new AbortController().signal });
  if (report.sandboxFailure) return { ok: false, detail: report.sandboxFailure, report };
  if (report.channel.kind === 'message') {
    const message = report.channel.message;
    if (message.status === 'ok' && message.result === 42) return { ok: true, detail: 'trial run returned the expected result', report };
    if (message.status === 'error') return { ok: false, detail: message.error.message, report };
  }
  const tail = report.stderr.text.trim().split('\n').slice(-3).join(' | ');
  return { ok: false, detail: `trial run failed (exit ${report.exitCode}, signal ${report.signal}): ${tail}`, report };
}

export async function probe(config: Config, logger?: Logger): Promise<ProbeResult> {
  const root = process.getuid?.() === 0;
  const capabilities: ProbeReport['capabilities'] = {
    running_as_root: {
      available: root,
      detail: root ? 'each run slot gets its own unprivileged uid' : 'not root: runs share the service uid (no per-run uid, weaker kill and file isolation)',
    },
    seccomp: { available: false, detail: 'not tried' },
    landlock: { available: false, abi: 0, detail: 'not tried' },
    nsjail: { available: false, detail: 'not tried' },
    cgroups: { available: false, version: null, controllers: [], detail: 'not tried' },
    warm_pool: { available: false, detail: config.warmPool ? 'not tried' : 'WARM_POOL=off' },
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
  const cgroups = cgroupProbe.host
    ? new RunCgroups(cgroupProbe.host, instanceTag, {
        memoryBytes: config.scriptMemoryMb * 1024 * 1024,
        // One task more than a run may have: nsjail's own process, in nsjail mode.
        maxTasks: config.scriptMaxProcesses + 1,
      })
    : undefined;
  if (!cgroups && config.sandboxCgroups !== 'auto' && config.sandboxCgroups !== 'off') {
    return refuse(config, capabilities, `SANDBOX_CGROUPS=${config.sandboxCgroups} but ${cgroupProbe.detail}`);
  }
  const seccomp = new SeccompSandbox(config, files, cgroups);
  const seccompTrial = await trialRun(seccomp);
  capabilities.seccomp = { available: seccompTrial.ok, detail: seccompTrial.detail };
  const layers = seccompTrial.report.channel.kind === 'message' ? seccompTrial.report.channel.message.layers : undefined;
  const abi = layers?.landlock_abi ?? 0;
  capabilities.landlock = {
    available: abi > 0,
    abi,
    detail: !layers
      ? 'unknown: the trial run that reports it failed'
      : abi > 0
        ? `Landlock ABI ${abi}: writes only to the run's directory, reads only system files`
        : 'the kernel offers no Landlock; file access rests on uid permissions',
  };

  let nsjail: Sandbox | null = null;
  let nsjailWarm: WarmBoundary | undefined;
  if (config.sandboxMode !== 'seccomp') {
    const binary = await findExecutable(config.nsjailPath);
    if (!binary) {
      capabilities.nsjail = { available: false, detail: `no nsjail binary at "${config.nsjailPath}" (NSJAIL_PATH or PATH)` };
    } else {
      try {
        const configs = await writeNsjailConfigs(config, files);
        const candidate = new NsjailSandbox(config, files, { binary, configFile: configs.run }, cgroups);
        const trial = await trialRun(candidate);
        capabilities.nsjail = { available: trial.ok, path: binary, detail: trial.ok ? 'a trial jail ran (user, pid, mount, net, ipc, uts namespaces usable)' : trial.detail };
        if (trial.ok) nsjail = candidate;
        nsjailWarm = nsjailBoundary(config, { binary, zygoteConfig: configs.zygote });
      } catch (error) {
        capabilities.nsjail = { available: false, path: binary, detail: `setting up nsjail failed: ${(error as Error).message}` };
      }
    }
  }

  const choose = (): { mode: SandboxMode | null; reason: string; sandbox: Sandbox | null } => {
    const seccompUsable = seccompTrial.ok;
    switch (config.sandboxMode) {
      case 'nsjail':
        return nsjail
          ? { mode: 'nsjail', reason: 'SANDBOX_MODE=nsjail and a trial jail ran', sandbox: nsjail }
          : { mode: null, reason: `SANDBOX_MODE=nsjail but nsjail is not usable: ${capabilities.nsjail.detail}`, sandbox: null };
      case 'seccomp':
        return seccompUsable
          ? { mode: 'seccomp', reason: 'SANDBOX_MODE=seccomp and a trial run succeeded', sandbox: seccomp }
          : { mode: null, reason: `SANDBOX_MODE=seccomp but the seccomp sandbox is not usable: ${capabilities.seccomp.detail}`, sandbox: null };
      default:
        if (nsjail) return { mode: 'nsjail', reason: 'auto: nsjail is present and a trial jail ran', sandbox: nsjail };
        if (seccompUsable) return { mode: 'seccomp', reason: `auto: nsjail not usable (${capabilities.nsjail.detail}); seccomp trial run succeeded`, sandbox: seccomp };
        return { mode: null, reason: `auto: no sandbox is usable. nsjail: ${capabilities.nsjail.detail}. seccomp: ${capabilities.seccomp.detail}`, sandbox: null };
    }
  };
  const chosen = choose();
  let sandbox = chosen.sandbox;
  if (chosen.mode && config.warmPool) {
    const boundary = chosen.mode === 'nsjail' ? nsjailWarm! : seccompBoundary(config, files);
    const warm = await tryWarmPool(config, files, boundary, cgroups, logger);
    capabilities.warm_pool = warm.finding;
    if (warm.sandbox) sandbox = warm.sandbox;
  }
  return { report: { mode: chosen.mode, path: sandbox?.path ?? null, reason: chosen.reason, requested: config.sandboxMode, capabilities }, sandbox };
}

/** Starts the zygote and sends one trial run through a warm child; any failure keeps the cold path. */
async function tryWarmPool(
  config: Config,
  files: SandboxFiles,
  boundary: WarmBoundary,
  cgroups: RunCgroups | undefined,
  logger?: Logger,
): Promise<{ finding: Finding; sandbox?: WarmSandbox }> {
  const warm = new WarmSandbox(config, files, boundary, cgroups, logger);
  try {
    await warm.start();
    const trial = await trialRun(warm);
    if (trial.ok) return { finding: { available: true, detail: 'zygote started and a trial run through a pre-forked child succeeded' }, sandbox: warm };
    warm.stop();
    return { finding: { available: false, detail: `warm trial run failed, using cold runs: ${trial.detail}` } };
  } catch (error) {
    warm.stop();
    return { finding: { available: false, detail: `the zygote could not start, using cold runs: ${(error as Error).message}` } };
  }
}

async function findExecutable(name: string): Promise<string | undefined> {
  const candidates = name.includes('/') ? [name] : (process.env.PATH ?? '').split(':').filter(Boolean).map((dir) => path.join(dir, name));
  for (const candidate of candidates) {
    try {
      await fs.access(candidate, fsConstants.X_OK);
      if ((await fs.stat(candidate)).isFile()) return path.resolve(candidate);
    } catch {
      // not here
    }
  }
  return undefined;
}

/** No sandbox: every run is refused with 503, for the reason given. */
function refuse(config: Config, capabilities: ProbeReport['capabilities'], reason: string): ProbeResult {
  return { report: { mode: null, path: null, reason, requested: config.sandboxMode, capabilities }, sandbox: null };
}
