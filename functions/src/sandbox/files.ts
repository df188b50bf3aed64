/**
 * The files a run reads: the runner and the seccomp policy. They are copied once, at start-up, to
 * a root-owned, world-readable directory under the work root, and every run reads them there.
 * The run uids must be able to read them, and the checkout they come from may sit where those
 * uids cannot enter (a 0700 home directory, a `mktemp -d` clone); the service's own files then
 * stay closed to them too.
 */
import { promises as fs } from 'fs';
import * as path from 'path';
import type { Config } from '../config';
import { prepareWorkRoot } from './workRoot';

export interface SandboxFiles {
  /** Holds runner/ and seccomp-policy.json, laid out as in sandbox-image/. */
  dir: string;
  runnerDir: string;
  policyFile: string;
  /** nsjail's config templates (sandbox-image/nsjail/), read by the service (root) only. */
  nsjailDir: string;
  /** The warm path's socket directory: created by its channel server, bound into the zygote's jail. */
  warmDir: string;
}

export async function stageSandboxFiles(config: Config): Promise<SandboxFiles> {
  await prepareWorkRoot(config.workRoot);
  const dir = path.join(config.workRoot, `sandbox-${process.pid}`);
  await fs.rm(dir, { recursive: true, force: true });
  const runnerDir = path.join(dir, 'runner');
  await fs.mkdir(runnerDir, { recursive: true, mode: 0o755 });
  await fs.chmod(dir, 0o755);
  const source = path.join(config.sandboxDir, 'runner');
  for (const name of await fs.readdir(source)) {
    if (!name.endsWith('.py')) continue;
    await fs.copyFile(path.join(source, name), path.join(runnerDir, name));
    await fs.chmod(path.join(runnerDir, name), 0o644);
  }
  const policyFile = path.join(dir, 'seccomp-policy.json');
  await fs.copyFile(path.join(config.sandboxDir, 'seccomp-policy.json'), policyFile);
  await fs.chmod(policyFile, 0o644);
  return {
    dir,
    runnerDir,
    policyFile,
    nsjailDir: path.join(config.sandboxDir, 'nsjail'),
    warmDir: path.join(config.workRoot, `warm-${process.pid}`),
  };
}
