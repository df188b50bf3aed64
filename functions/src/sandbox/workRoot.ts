/**
 * The work root (SANDBOX_WORK_ROOT) holds what service instances create at run time. Instances on
 * one host may share it (the default is the same path for all), so each works in a directory of
 * its own, made with mkdtemp: instance-<random>/ holds everything the instance makes (files.ts:
 * the staged sandbox files in sandbox/, and below them what its backends make for runs).
 *
 * Whether an instance is alive is never told by its pid: pids repeat in every pid namespace (each
 * container's first process is pid 1) and after every restart. Each work directory holds a lock
 * file, locked by its instance for as long as it lives (locks.ts: released by the kernel when the
 * instance dies, even by SIGKILL). One rule cleans up: an instance removes its own directory when
 * it exits, and at start-up every directory whose lock no live process holds (its instance was
 * killed without a chance to clean up). A directory is only ever named instance-* once its lock
 * is held: it is made as .starting-<random>, locked, then renamed, so a scan never sees a live
 * instance's directory unlocked. Entries of the layout before instance directories
 * (run|sandbox|warm-<pid>...) are still removed by the old rule (their pid is not alive here).
 *
 * Nothing a run leaves can stop that cleanup or the service: entries go through removeTree.ts
 * (descriptor-relative, any depth, never following a symlink, never leaving the filesystem), and
 * what still cannot be removed (an immutable file, a mount point, a removal that ran out of
 * time) is logged and moved into <workRoot>/quarantine/ (0700, the service's only) under
 * <original-name>-<timestamp>, for a person to look at. Neither start-up nor a run's answer
 * ever fails because of a leftover.
 */
import { promises as fs, lstatSync, chmodSync, mkdirSync, readdirSync, readlinkSync, renameSync } from 'fs';
import * as os from 'os';
import * as path from 'path';
import type { Logger } from '../logging';
import { holdLock, isHeld, type HeldLock } from './locks';
import { removeTree, removeTreeSync, type Removal } from './removeTree';

/** The layout before instance directories: entries named by their instance's pid. */
const LEGACY = /^(?:run|sandbox|warm)-(\d+)(?:-|$)/;
const INSTANCE = /^instance-[A-Za-z0-9]+$/;
const STARTING = /^\.starting-[A-Za-z0-9]+$/;
/** The lock file in every instance's work directory. */
export const LOCK_FILE = 'lock';
export const QUARANTINE = 'quarantine';
/**
 * A .starting-* directory is locked within moments of being made; one older than this whose
 * lock is free belongs to an instance that died starting.
 */
const STARTING_GRACE_MS = 5 * 60 * 1000;

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
  /** Other instances' work directories left alone: their locks are held (they are alive). */
  live: number;
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
/** This process's work directories, each with the work root it lies in (where its leftovers are quarantined). */
const ownDirs = new Map<string, string>();

/** An instance's own work directory in the work root, and the lock that says it lives. */
export interface WorkDir {
  workRoot: string;
  dir: string;
  lock: HeldLock;
  /** What start-up found of other instances in the work root (already logged when a logger was given). */
  cleanup: WorkRootCleanup;
}

/**
 * Makes the work root (if needed), claims this instance's own work directory in it (removed when
 * the process exits), and removes what dead instances left there.
 */
export async function prepareWorkRoot(workRoot: string, log?: Logger): Promise<WorkDir> {
  if (log) logger = log;
  await fs.mkdir(workRoot, { recursive: true, mode: 0o711 });
  // Run uids must pass through it to their directories and to the staged runner (an existing
  // 0700 directory would lock them out); only search permission is added, nothing is taken away.
  const { mode } = await fs.stat(workRoot);
  if ((mode & 0o011) !== 0o011) await fs.chmod(workRoot, (mode & 0o7777) | 0o011);
  const { dir, lock } = await claimWorkDir(workRoot);
  ownDirs.set(dir, workRoot);
  if (ownDirs.size === 1) process.once('exit', removeOwnDirs);
  lock.onLost = (reason) =>
    report(logger, 'error', `work root: the lock of this instance's work directory ${dir} was lost (${reason}); another instance starting now would remove it`, {
      event: 'work_dir_lock_lost',
      work_dir: dir,
    });
  const cleanup = await removeStale(workRoot, dir, log);
  return { workRoot, dir, lock, cleanup };
}

/**
 * A new work directory for this instance, locked: made as .starting-<random>, its lock file
 * locked, then renamed to instance-<random>. The lock follows the file through the rename.
 */
async function claimWorkDir(workRoot: string): Promise<{ dir: string; lock: HeldLock }> {
  const starting = await fs.mkdtemp(path.join(workRoot, '.starting-'));
  try {
    const lockFile = path.join(starting, LOCK_FILE);
    // Who holds it, for a person looking at the directory; nothing reads it.
    const owner = { pid: process.pid, hostname: os.hostname(), started: new Date().toISOString(), pid_namespace: pidNamespace() };
    await fs.writeFile(lockFile, `${JSON.stringify(owner)}\n`, { mode: 0o600 });
    const lock = await holdLock(lockFile);
    if (!lock) throw new Error(`the lock of a new work directory (${lockFile}) is held by another process`);
    const suffix = path.basename(starting).slice('.starting-'.length);
    for (let attempt = 0; ; attempt++) {
      const dir = path.join(workRoot, `instance-${suffix}${attempt === 0 ? '' : attempt}`);
      // rename would replace an empty directory of that name: only a free name is taken.
      if (exists(dir)) continue;
      await fs.rename(starting, dir);
      await fs.chmod(dir, 0o711);
      return { dir, lock };
    }
  } catch (error) {
    await removeTree(starting);
    throw error;
  }
}

/** Removes (or quarantines) what dead instances left in the work root; never touches a live one's. */
async function removeStale(workRoot: string, own: string, log?: Logger): Promise<WorkRootCleanup> {
  const cleanup: WorkRootCleanup = { workRoot, live: 0, removed: [], quarantined: [], left: [], quarantineHolds: 0 };
  let entries: string[];
  try {
    entries = readdirSync(workRoot);
  } catch {
    entries = [];
  }
  for (const entry of entries) {
    const target = path.join(workRoot, entry);
    if (target === own) continue;
    let stale: boolean;
    const legacy = LEGACY.exec(entry);
    if (legacy) stale = !alive(Number(legacy[1]));
    else if (INSTANCE.test(entry)) stale = (await isHeld(path.join(target, LOCK_FILE))) === false;
    else if (STARTING.test(entry)) stale = olderThan(target, STARTING_GRACE_MS) && (await isHeld(path.join(target, LOCK_FILE))) !== true;
    else continue;
    if (!stale) {
      if (INSTANCE.test(entry)) cleanup.live++;
      continue;
    }
    const disposal = await disposeOf(workRoot, target, log);
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
    `work root ${workRoot}: ${cleanup.removed.length} stale entries removed, ${cleanup.quarantined.length} quarantined, ${cleanup.left.length} left in place; ${cleanup.live} other live instances; the quarantine holds ${cleanup.quarantineHolds}`,
    {
      event: 'work_root_cleaned',
      work_root: workRoot,
      work_dir: own,
      live_instances: cleanup.live,
      removed: cleanup.removed.length,
      quarantined: cleanup.quarantined.length,
      left: cleanup.left.length,
      quarantine_holds: cleanup.quarantineHolds,
      removed_entries: cleanup.removed.slice(0, 50),
    },
  );
  return cleanup;
}

/**
 * At exit: this process's work directories go, whole (or into quarantine). Passes until nothing
 * is left: a run directory whose mkdtemp was still in the thread pool (the warm pool refilling
 * at shutdown) can appear while the first pass removes the rest.
 */
function removeOwnDirs(): void {
  for (const [dir, workRoot] of ownDirs) {
    for (let pass = 0; pass < 5 && exists(dir); pass++) disposeOfSync(workRoot, dir, logger);
  }
}

/**
 * A run's private directory in this instance's work directory (workDir): fresh, 0700 (mkdtemp's
 * mode), owned by the run's uid (when there is one).
 */
export async function makeRunDir(workDir: string, slot: number, uid: number | undefined): Promise<string> {
  const dir = await fs.mkdtemp(path.join(workDir, `run-${slot}-`));
  if (uid !== undefined) await fs.chown(dir, uid, uid);
  return dir;
}

/**
 * After a run: one rmdir when it left nothing (most runs), removeTree when it did; quarantined
 * when even that fails. Never throws: a run's leftovers never turn its answer into an error.
 */
export async function removeRunDir(dir: string): Promise<void> {
  const parent = path.dirname(dir);
  try {
    // Quarantined into the work root's quarantine, never into the instance's own directory (which goes at exit).
    await disposeOf(ownDirs.get(parent) ?? parent, dir, logger);
  } catch (error) {
    report(logger, 'error', `removing run directory ${dir} failed unexpectedly: ${(error as Error).message}`, { event: 'work_root_leftover', entry: path.basename(dir) });
  }
}

/**
 * What stops the work root's file system from taking more, or undefined: no block left for the
 * runs (they write as unprivileged uids: blocks reserved for root do not count) or no inode left.
 * Never throws.
 */
export async function workRootFull(workRoot: string): Promise<string | undefined> {
  try {
    const stat = await fs.statfs(workRoot);
    const lacking = [stat.bavail === 0 ? 'no free space' : '', stat.ffree === 0 ? 'no free inodes' : ''].filter(Boolean);
    if (lacking.length === 0) return undefined;
    return `SANDBOX_WORK_ROOT's file system (${workRoot}) is full (${lacking.join(', ')}); runs that need room there fail until space is freed`;
  } catch {
    return undefined;
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

function olderThan(target: string, ms: number): boolean {
  try {
    return Date.now() - lstatSync(target).mtimeMs > ms;
  } catch {
    return false;
  }
}

function pidNamespace(): string | undefined {
  try {
    return readlinkSync('/proc/self/ns/pid');
  } catch {
    return undefined;
  }
}
