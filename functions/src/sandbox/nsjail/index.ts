/**
 * The nsjail backend: each run in a jail of Linux namespaces (sandbox-image/nsjail/), with the
 * runner's own confinement on top. Its cold path is coldSandbox.ts, its warm path's boundary
 * warmBoundary.ts, the jails' rendering config.ts and their paths and per-run flags jail.ts.
 */
import { promises as fs, constants as fsConstants } from 'fs';
import * as path from 'path';
import type { Backend } from '../backends';
import { LimitedSandbox } from '../limits';
import { trialRun } from '../trial';
import { NOT_TRIED } from '../types';
import { NsjailSandbox } from './coldSandbox';
import { writeNsjailConfigs } from './config';
import { nsjailBoundary } from './warmBoundary';

export const nsjailBackend: Backend<'nsjail'> = {
  mode: 'nsjail',
  notTried: { nsjail: NOT_TRIED },
  alwaysTried: false,
  async trial({ config, files, cgroups }) {
    const binary = await findExecutable(config.nsjailPath);
    if (!binary) return { findings: { nsjail: { available: false, detail: `no nsjail binary at "${config.nsjailPath}" (NSJAIL_PATH or PATH)` } } };
    try {
      const configs = await writeNsjailConfigs(config, files);
      const cold = new LimitedSandbox(new NsjailSandbox(config, files, { binary, configFile: configs.run }, cgroups), config);
      const trial = await trialRun(cold);
      return {
        findings: { nsjail: { available: trial.ok, path: binary, detail: trial.ok ? 'a trial jail ran (user, pid, mount, net, ipc, uts namespaces usable)' : trial.detail } },
        cold: trial.ok ? cold : undefined,
        warm: nsjailBoundary(config, { binary, zygoteConfig: configs.zygote }),
      };
    } catch (error) {
      return { findings: { nsjail: { available: false, path: binary, detail: `setting up nsjail failed: ${(error as Error).message}` } } };
    }
  },
};

async function findExecutable(name: string): Promise<string | undefined> {
  const candidates = name.includes('/')
    ? [name]
    : (process.env.PATH ?? '')
        .split(':')
        .filter(Boolean)
        .map((dir) => path.join(dir, name));
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
