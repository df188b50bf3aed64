/**
 * The work root (SANDBOX_WORK_ROOT) holds what a service instance creates at run time: the staged
 * sandbox files (sandbox-<pid>), the warm path's socket directory (warm-<pid>) and each run's
 * private directory (run-<pid>-<slot>-<random>). Every name carries the creating service's pid,
 * so one rule cleans up all of it: an instance removes its own entries when it exits, and at
 * start-up the entries of instances that are gone (killed without a chance to clean up).
 */
import { promises as fs, readdirSync, rmSync } from 'fs';
import * as path from 'path';

const OWNED = /^(?:run|sandbox|warm)-(\d+)(?:-|$)/;

export async function prepareWorkRoot(workRoot: string): Promise<void> {
  await fs.mkdir(workRoot, { recursive: true, mode: 0o711 });
  // Run uids must pass through it to their directories and to the staged runner (an existing
  // 0700 directory would lock them out); only search permission is added, nothing is taken away.
  const { mode } = await fs.stat(workRoot);
  if ((mode & 0o011) !== 0o011) await fs.chmod(workRoot, (mode & 0o7777) | 0o011);
  removeEntries(workRoot, (pid) => pid !== process.pid && !alive(pid));
  process.once('exit', () => removeEntries(workRoot, (pid) => pid === process.pid));
}

/** A run's private directory: fresh, 0700 (mkdtemp's mode), owned by the run's uid (when there is one). */
export async function makeRunDir(workRoot: string, slot: number, uid: number | undefined): Promise<string> {
  const dir = await fs.mkdtemp(path.join(workRoot, `run-${process.pid}-${slot}-`));
  if (uid !== undefined) await fs.chown(dir, uid, uid);
  return dir;
}

/** Most runs leave their directory empty: one rmdir, and the recursive removal only if not. */
export async function removeRunDir(dir: string): Promise<void> {
  try {
    await fs.rmdir(dir);
  } catch {
    await fs.rm(dir, { recursive: true, force: true });
  }
}

function removeEntries(workRoot: string, shouldRemove: (pid: number) => boolean): void {
  let entries: string[];
  try {
    entries = readdirSync(workRoot);
  } catch {
    return;
  }
  for (const entry of entries) {
    const owner = OWNED.exec(entry);
    if (owner && shouldRemove(Number(owner[1]))) rmSync(path.join(workRoot, entry), { recursive: true, force: true });
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}
