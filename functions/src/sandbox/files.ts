/**
 * The files a run reads: the runner and the seccomp policy. They are copied once, at start-up, to
 * a root-owned, world-readable directory in the instance's own work directory (workRoot.ts:
 * <work root>/instance-<random>/sandbox/), and every run reads them there.
 * The run uids must be able to read them, and the checkout they come from may sit where those
 * uids cannot enter (a 0700 home directory, a `mktemp -d` clone); the service's own files then
 * stay closed to them too.
 */
import { promises as fs, constants as fsConstants } from 'fs';
import * as path from 'path';
import type { Config } from '../config';
import type { Logger } from '../logging';
import { prepareWorkRoot, type WorkRootCleanup } from './workRoot';

/**
 * The host's interpreter, for the service's own helper only (the cold path's launcher, outside
 * every sandbox, run with -I -S: the standard library and nothing of the host's site-packages).
 * Scripts never run on it: the sandbox's interpreter is SANDBOX_PYTHON inside SANDBOX_ROOTFS.
 */
export const HOST_PYTHON = '/usr/bin/python3';

export interface SandboxFiles {
  /** This instance's own work directory (workRoot.ts): everything below is the instance's alone. */
  workDir: string;
  /** Holds runner/ and seccomp-policy.json, laid out as in sandbox-image/. */
  dir: string;
  runnerDir: string;
  policyFile: string;
  /**
   * The warm path's socket directory, created by its channel server: inside seccomp mode's
   * zygote root (seccomp/slots.ts) at /sandbox/warm, and bound into nsjail mode's zygote jail.
   */
  warmDir: string;
  /** What start-up found in the work root and removed or quarantined (already logged when a logger was given). */
  workRootCleanup?: WorkRootCleanup;
}

export async function stageSandboxFiles(config: Config, logger?: Logger): Promise<SandboxFiles> {
  const work = await prepareWorkRoot(config.workRoot, logger);
  const dir = path.join(work.dir, 'sandbox');
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
    workDir: work.dir,
    dir,
    runnerDir,
    policyFile,
    warmDir: path.join(dir, 'root', 'sandbox', 'warm'),
    workRootCleanup: work.cleanup,
  };
}

/**
 * Why the sandbox's root cannot be used, or undefined when it can: SANDBOX_ROOTFS must hold
 * SANDBOX_PYTHON (a path inside it, under /usr: nsjail mode binds only the root's /usr and /etc).
 * Without it no run starts (503): the host's Python is never used in its place.
 */
export async function sandboxRootProblem(config: Config): Promise<string | undefined> {
  const { sandboxRootfs: root, sandboxPython: python } = config;
  if (!path.isAbsolute(python) || !python.startsWith('/usr/')) return `SANDBOX_PYTHON must be an absolute path under /usr inside SANDBOX_ROOTFS, got "${python}"`;
  try {
    if (!(await fs.stat(root)).isDirectory()) return `SANDBOX_ROOTFS ${root} is not a directory`;
  } catch {
    return `the sandbox's root file system is missing: SANDBOX_ROOTFS ${root} does not exist (scripts/setup.sh builds it: sandbox-image/rootfs/build.sh)`;
  }
  try {
    await fs.access(path.join(root, python), fsConstants.X_OK);
  } catch {
    return `the sandbox's root ${root} has no interpreter at ${python} (SANDBOX_PYTHON)`;
  }
  return undefined;
}
