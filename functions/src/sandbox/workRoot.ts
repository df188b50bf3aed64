/**
 * The work root (SANDBOX_WORK_ROOT) holds what a service instance creates at run time: the staged
 * sandbox files (sandbox-<pid>), the warm path's socket directory (warm-<pid>) and each run's
 * private directory (run-<pid>-<slot>-<random>). Every name carries the creating service's pid,
 * so one rule cleans up all of it: an instance removes its own entries when it exits, and at
 * start-up the entries of instances that are gone (killed without a chance to clean up).
 *
 * Nothing a run leaves can stop that cleanup or the service: entries go through removeTree.ts
 * (descriptor-relative, any depth, never following a symlink, never leaving the filesystem), and
 * what still cannot be removed (an immutable file, a mount point, a removal that ran out of
 * time) is logged and moved into <workRoot>/quarantine/ (0700, the service's only) under
 * <original-name>-<timestamp>, for a person to look at. Neither start-up nor a run's answer
 * ever fails because of a leftover.
 */
import { promises as fs, lstatSync, chmodSync, mkdirSync, readdirSync, renameSync } from 'fs';
import * as path from 'path';
import type { Logger } from '../logging';
import { removeTree, removeTreeSync, type Removal } from './removeTree';

const OWNED = /^(?:run|sandbox|warm)-(\d+)(?:-|$)/;
export const QUARANTINE = 'quarantine';

export interface Leftover {
  /** The entry's name in the work root. */
  entry: string;
  /** Why it could not be removed. */
  reason: string;
  /** Where it was moved to (quarantined), or why it could not be moved (left in place). */
  quarantinedAs?: string;
  quarantineError?: string;
}

export interface WorkRootCleanup {
  workRoot: string;
  /** Stale entries removed. */
  removed: string[];
  /** Stale entries that could not be removed and were moved into the quarantine directory. */
  quarantined: Leftover[];
  /** Stale entries that could be neither removed nor moved (still in place; a later start tries again). */
  left: Leftover[];
  /** Entries in the quarantine directory after this cleanup (left there for a person). */
  quarantineHolds: number;
}

export type Disposal = { outcome: 'removed' } | { outcome: 'quarantined'; leftover: Leftover } | { outcome: 'left'; leftover: Leftover };

/** Set by prepareWorkRoot: where removeRunDir and the exit handler log what they quarantine. */
let logger: Logger | undefined;

export async function prepareWorkRoot(workRoot: string, log?: Logger): Promise<WorkRootCleanup> {
  if (log) logger = log;
  await fs.mkdir(workRoot, { recursive: true, mode: 0o711 });
  // Run uids must pass through it to their directories and to the staged runner (an existing
  // 0700 directory would lock them out); only search permission is added, nothing is taken away.
  const { mode } = await fs.stat(workRoot);
  if ((mode & 0o011) !== 0o011) await fs.chmod(workRoot, (mode & 0o7777) | 0o011);
  process.once('exit', () => {
    // Passes until one finds nothing new: a run directory whose mkdtemp was still in the thread
    // pool (the warm pool refilling at shutdown) can appear while the first pass removes others.
    const seen = new Set<string>();
    for (let pass = 0; pass < 5; pass++) {
      const fresh = ownedEntries(workRoot, (pid) => pid === process.pid).filter((entry) => !seen.has(entry));
      if (fresh.length === 0) break;
      for (const entry of fresh) {
        seen.add(entry);
        disposeOfSync(workRoot, path.join(workRoot, entry), logger);
      }
    }
  });
  const cleanup: WorkRootCleanup = { workRoot, removed: [], quarantined: [], left: [], quarantineHolds: 0 };
  for (const entry of ownedEntries(workRoot, (pid) => pid !== process.pid && !alive(pid))) {
    const disposal = await disposeOf(workRoot, path.join(workRoot, entry), log);
    if (disposal.outcome === 'removed') cleanup.removed.push(entry);
    else if (disposal.outcome === 'quarantined') cleanup.quarantined.push(disposal.leftover);
    else cleanup.left.push(disposal.leftover);
  }
  try {
    cleanup.quarantineHolds = readdirSync(path.join(workRoot, QUARANTINE)).length;
  } catch {
    // no quarantine directory
  }
  log?.info(
    `work root ${workRoot}: ${cleanup.removed.length} stale entries removed, ${cleanup.quarantined.length} quarantined, ${cleanup.left.length} left in place; the quarantine holds ${cleanup.quarantineHolds}`,
    {
      event: 'work_root_cleaned',
      work_root: workRoot,
      removed: cleanup.removed.length,
      quarantined: cleanup.quarantined.length,
      left: cleanup.left.length,
      quarantine_holds: cleanup.quarantineHolds,
      removed_entries: cleanup.removed.slice(0, 50),
    },
  );
  return cleanup;
}

/** A run's private directory: fresh, 0700 (mkdtemp's mode), owned by the run's uid (when there is one). */
export async function makeRunDir(workRoot: string, slot: number, uid: number | undefined): Promise<string> {
  const dir = await fs.mkdtemp(path.join(workRoot, `run-${process.pid}-${slot}-`));
  if (uid !== undefined) await fs.chown(dir, uid, uid);
  return dir;
}

/**
 * After a run: one rmdir when it left nothing (most runs), removeTree when it did; quarantined
 * when even that fails. Never throws: a run's leftovers never turn its answer into an error.
 */
export async function removeRunDir(dir: string): Promise<void> {
  try {
    await disposeOf(path.dirname(dir), dir, logger);
  } catch (error) {
    report(logger, 'error', `removing run directory ${dir} failed unexpectedly: ${(error as Error).message}`, { event: 'work_root_leftover', entry: path.basename(dir) });
  }
}

/** Removes target (an entry of workRoot), or quarantines it, or (neither possible) logs it. Never throws. */
export async function disposeOf(workRoot: string, target: string, log?: Logger): Promise<Disposal> {
  return settle(workRoot, target, await removeTree(target), log);
}

function disposeOfSync(workRoot: string, target: string, log?: Logger): Disposal {
  return settle(workRoot, target, removeTreeSync(target), log);
}

function settle(workRoot: string, target: string, removal: Removal, log: Logger | undefined): Disposal {
  if (removal.removed) return { outcome: 'removed' };
  const entry = path.basename(target);
  const reason = removal.reason ?? 'unknown';
  const moved = quarantine(workRoot, target);
  if ('to' in moved) {
    const leftover: Leftover = { entry, reason, quarantinedAs: moved.to };
    report(log, 'warn', `work root: could not remove ${entry} (${reason}); quarantined as ${moved.to}`, {
      event: 'work_root_quarantined',
      work_root: workRoot,
      entry,
      reason,
      quarantined_as: moved.to,
    });
    return { outcome: 'quarantined', leftover };
  }
  const leftover: Leftover = { entry, reason, quarantineError: moved.error };
  report(log, 'error', `work root: could not remove ${entry} (${reason}) nor move it into quarantine (${moved.error}); left in place`, {
    event: 'work_root_leftover',
    work_root: workRoot,
    entry,
    reason,
    quarantine_error: moved.error,
  });
  return { outcome: 'left', leftover };
}

/**
 * Moves target into <workRoot>/quarantine/<name>-<timestamp>: same filesystem, so one rename,
 * and the name is free again. The quarantine directory is 0700: run uids cannot reach what is in
 * it, whatever modes it carries.
 */
function quarantine(workRoot: string, target: string): { to: string } | { error: string } {
  const holder = path.join(workRoot, QUARANTINE);
  try {
    try {
      mkdirSync(holder, { mode: 0o700 });
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
    }
    const stat = lstatSync(holder);
    if (!stat.isDirectory()) throw new Error(`${holder} is not a directory`);
    if ((stat.mode & 0o777) !== 0o700 && stat.uid === process.getuid?.()) chmodSync(holder, 0o700);
    const base = `${path.basename(target).slice(0, 200)}-${new Date().toISOString().replace(/[-:.]/g, '')}`;
    for (let n = 0; n < 100; n++) {
      const to = path.join(holder, n === 0 ? base : `${base}-${n}`);
      if (exists(to)) continue; // rename would replace an empty directory there
      renameSync(target, to);
      return { to };
    }
    throw new Error('no free name in the quarantine directory');
  } catch (error) {
    return { error: (error as Error).message };
  }
}

function report(log: Logger | undefined, severity: 'warn' | 'error', message: string, fields: Record<string, unknown>): void {
  if (log) log[severity](message, fields);
  else process.stderr.write(`${message}\n`);
}

function ownedEntries(workRoot: string, stale: (pid: number) => boolean): string[] {
  let entries: string[];
  try {
    entries = readdirSync(workRoot);
  } catch {
    return [];
  }
  return entries.filter((entry) => {
    const owner = OWNED.exec(entry);
    return owner !== null && stale(Number(owner[1]));
  });
}

function exists(target: string): boolean {
  try {
    lstatSync(target);
    return true;
  } catch {
    return false;
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
