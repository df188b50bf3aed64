/**
 * The files a run reads: the runner and the seccomp policy. They are copied once, at start-up, to
 * a root-owned, world-readable directory under the work root, and every run reads them there.
 * The run uids must be able to read them, and the checkout they come from may sit where those
 * uids cannot enter (a 0700 home directory, a `mktemp -d` clone); the service's own files then
 * stay closed to them too.
 */
import { randomBytes } from 'crypto';
import { promises as fs, lstatSync } from 'fs';
import * as path from 'path';
import type { Config } from '../config';
import type { Logger } from '../logging';
import { disposeOf, prepareWorkRoot, type WorkRootCleanup } from './workRoot';

export interface SandboxFiles {
  /** Holds runner/ and seccomp-policy.json, laid out as in sandbox-image/. */
  dir: string;
  runnerDir: string;
  policyFile: string;
  /** The warm path's socket directory: created by its channel server, bound into the zygote's jail. */
  warmDir: string;
  /** What start-up found in the work root and removed or quarantined (already logged when a logger was given). */
  workRootCleanup?: WorkRootCleanup;
}

export async function stageSandboxFiles(config: Config, logger?: Logger): Promise<SandboxFiles> {
  const workRootCleanup = await prepareWorkRoot(config.workRoot, logger);
  const dir = await freshDirectory(config.workRoot, `sandbox-${process.pid}`, logger);
  const runnerDir = path.join(dir, 'runner');
  await fs.mkdir(runnerDir, { mode: 0o755 });
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
    warmDir: await freeName(config.workRoot, `warm-${process.pid}`, logger),
    workRootCleanup,
  };
}

/**
 * A new directory named name in the work root. What an earlier instance with the same pid (pids
 * repeat across container restarts) left under that name is removed or quarantined first; should
 * it still be there (it could be neither removed nor moved), a fresh name with the same prefix is
 * used instead, so start-up never depends on it. Created 0700; the caller sets its mode.
 */
async function freshDirectory(workRoot: string, name: string, logger?: Logger): Promise<string> {
  const dir = path.join(workRoot, name);
  await disposeOf(workRoot, dir, logger);
  try {
    await fs.mkdir(dir, { mode: 0o700 });
    return dir;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
    return fs.mkdtemp(`${dir}-`);
  }
}

/** name, or name-<random> when something that cannot be removed holds name (its creator makes the directory). */
async function freeName(workRoot: string, name: string, logger?: Logger): Promise<string> {
  const dir = path.join(workRoot, name);
  await disposeOf(workRoot, dir, logger);
  try {
    lstatSync(dir);
    return `${dir}-${randomBytes(6).toString('hex')}`;
  } catch {
    return dir;
  }
}
