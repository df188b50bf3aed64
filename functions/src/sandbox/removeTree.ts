/**
 * Removes a directory tree whatever a run left in it: thousands of levels (paths far beyond
 * PATH_MAX), long names, directories of mode 000, symlinks to anywhere. It never throws; what it
 * could not remove is reported with a reason, for the caller to quarantine (workRoot.ts).
 *
 * Why GNU rm. Node's fs has no openat/unlinkat: fs.rm builds every path from the top and fails
 * with ENAMETOOLONG once a tree is deeper than PATH_MAX (about 2,000 levels of one-letter names),
 * leaving the rest on disk. coreutils' `rm -rf` walks the tree with fts in FTS_CWDFD mode, i.e.
 * descriptor-relative (openat/unlinkat on a small ring of directory descriptors), so neither
 * PATH_MAX nor a stack bounds the depth (a 5,000-level tree goes in about 0.3 s; the tests check
 * it); it never follows a symlink, neither the argument nor any it meets; --one-file-system keeps
 * it off other devices. It is in every Debian image (coreutils is Essential), the runtime image
 * included. The alternatives were weaker: Python's os.fwalk and shutil.rmtree recurse once per
 * level in the interpreter (Debian 12's 3.11: a recursion limit of 1,000) and os.fwalk keeps one
 * descriptor open per level; a native addon would be new code to trust.
 *
 * What rm does not do, done here:
 * - --one-file-system compares device numbers only, so it walks into a bind mount of the same
 *   filesystem and empties its source (tried: it does). A tree with any mount point at or below
 *   it (/proc/self/mountinfo) is not entered at all. Runs cannot mount; this guards against an
 *   operator's or a crashed tool's leftovers.
 * - Without root (no CAP_DAC_OVERRIDE) a directory of mode 000 cannot be read or emptied: after a
 *   failed rm, `chmod -R u+rwx` (which also never follows symlinks, and only runs once no mount
 *   point is below) and a second rm. As root it is never needed, and never done: chmod would
 *   change the mode of whatever file a run hard-linked into its directory.
 * - A bound on time: each command is killed after timeoutMs; the rest is reported, not waited for.
 *
 * The few single-syscall steps (rmdir, lstat, unlink, readdir) are synchronous on purpose, as in
 * uidReaper.ts: cheaper than a thread-pool round trip. The common cases spawn nothing: an empty
 * run directory is one rmdir; one holding only a few files, one level of unlinks.
 */
import { spawn, spawnSync } from 'child_process';
import { accessSync, constants, lstatSync, opendirSync, readFileSync, realpathSync, rmdirSync, unlinkSync, type Dirent } from 'fs';
import * as path from 'path';

export interface Removal {
  removed: boolean;
  /** Why not, when not removed. */
  reason?: string;
}

export interface RemoveOptions {
  /** Bound on each rm (and chmod) command; killed with SIGKILL after it. */
  timeoutMs?: number;
}

export const DEFAULT_REMOVE_TIMEOUT_MS = 120_000;
/** How much of a failing command's stderr is kept for the reason. */
const STDERR_KEEP = 2048;

interface Step {
  command: string;
  args: string[];
}

interface StepResult {
  ok: boolean;
  timedOut: boolean;
  detail: string;
}

/** Removes target (a directory tree, a file or a symlink, never what a symlink points to). Never throws. */
export async function removeTree(target: string, options: RemoveOptions = {}): Promise<Removal> {
  const timeoutMs = options.timeoutMs ?? DEFAULT_REMOVE_TIMEOUT_MS;
  try {
    const steps = removal(target);
    let next = steps.next();
    while (!next.done) next = steps.next(await runStep(next.value, timeoutMs));
    return next.value;
  } catch (error) {
    return { removed: false, reason: `unexpected: ${message(error)}` };
  }
}

/** The same, blocking: for the process's 'exit' handler, where nothing asynchronous runs any more. */
export function removeTreeSync(target: string, options: RemoveOptions = {}): Removal {
  const timeoutMs = options.timeoutMs ?? DEFAULT_REMOVE_TIMEOUT_MS;
  try {
    const steps = removal(target);
    let next = steps.next();
    while (!next.done) next = steps.next(runStepSync(next.value, timeoutMs));
    return next.value;
  } catch (error) {
    return { removed: false, reason: `unexpected: ${message(error)}` };
  }
}

/** The removal as a sequence of commands to run, shared by the asynchronous and the blocking driver. */
function* removal(target: string): Generator<Step, Removal, StepResult> {
  // Fast path: most run directories are empty.
  try {
    rmdirSync(target);
    return { removed: true };
  } catch (error) {
    if (code(error) === 'ENOENT') return { removed: true };
  }
  let stat;
  try {
    stat = lstatSync(target);
  } catch (error) {
    return code(error) === 'ENOENT' ? { removed: true } : { removed: false, reason: `lstat: ${message(error)}` };
  }
  if (!stat.isDirectory()) {
    // A file, or a symlink (lstat: the link itself, never its target).
    try {
      unlinkSync(target);
      return { removed: true };
    } catch (error) {
      return gone(target) ? { removed: true } : { removed: false, reason: `unlink: ${message(error)}` };
    }
  }
  const mounts = mountPointsAtOrBelow(target);
  if (mounts.length > 0) {
    return { removed: false, reason: `holds a mount point (${mounts.slice(0, 3).join(', ')}${mounts.length > 3 ? ', ...' : ''}); not entered` };
  }
  if (removeFlat(target)) return { removed: true };
  let result = yield rmStep(target);
  if (gone(target)) return { removed: true };
  if (!isRoot() && !result.timedOut) {
    const chmod = yield { command: tool('chmod'), args: ['-R', 'u+rwx', '--', target] };
    if (!chmod.timedOut) {
      result = yield rmStep(target);
      if (gone(target)) return { removed: true };
    } else {
      result = chmod;
    }
  }
  return { removed: false, reason: result.detail };
}

/**
 * The next most common case, without a process to spawn: a few files (or symlinks) and no
 * subdirectory. Each path is the directory's plus one name, so never long. Anything else, or any
 * error, is left to rm. Entries are read one at a time and the reading stops at the first
 * directory or past FLAT_MAX_ENTRIES: a directory of millions of files is never listed whole on
 * the event loop (rm walks it instead).
 */
const FLAT_MAX_ENTRIES = 64;
function removeFlat(dir: string): boolean {
  try {
    const names: string[] = [];
    const listing = opendirSync(dir);
    try {
      for (let entry = listing.readSync(); entry; entry = listing.readSync()) {
        if (entry.isDirectory() || names.length >= FLAT_MAX_ENTRIES) return false;
        names.push(entry.name);
      }
    } finally {
      listing.closeSync();
    }
    for (const name of names) unlinkSync(path.join(dir, name));
    rmdirSync(dir);
    return true;
  } catch {
    return false;
  }
}

function rmStep(target: string): Step {
  return { command: tool('rm'), args: ['-rf', '--one-file-system', '--', target] };
}

function runStep(step: Step, timeoutMs: number): Promise<StepResult> {
  return new Promise((resolve) => {
    let stderr = '';
    let lines = 0;
    let timedOut = false;
    const child = spawn(step.command, step.args, { stdio: ['ignore', 'ignore', 'pipe'], env: { LC_ALL: 'C' } });
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.stderr.on('data', (chunk: Buffer) => {
      const text = chunk.toString('utf8');
      lines += text.split('\n').length - 1;
      if (stderr.length < STDERR_KEEP) stderr += text.slice(0, STDERR_KEEP - stderr.length);
    });
    child.on('error', (error) => {
      clearTimeout(timer);
      resolve({ ok: false, timedOut: false, detail: `could not run ${step.command}: ${error.message}` });
    });
    child.on('close', (exitCode, signal) => {
      clearTimeout(timer);
      if (timedOut) resolve({ ok: false, timedOut: true, detail: `${step.command} did not finish within ${timeoutMs} ms` });
      else resolve({ ok: exitCode === 0, timedOut: false, detail: describe(exitCode, signal, stderr, lines) });
    });
  });
}

function runStepSync(step: Step, timeoutMs: number): StepResult {
  const result = spawnSync(step.command, step.args, {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { LC_ALL: 'C' },
    timeout: timeoutMs,
    killSignal: 'SIGKILL',
    maxBuffer: 16 * 1024 * 1024,
  });
  const stderr = result.stderr ? result.stderr.toString('utf8') : '';
  if (result.error) {
    const timedOut = code(result.error) === 'ETIMEDOUT';
    return { ok: false, timedOut, detail: timedOut ? `${step.command} did not finish within ${timeoutMs} ms` : `${step.command}: ${result.error.message}` };
  }
  return { ok: result.status === 0, timedOut: false, detail: describe(result.status, result.signal, stderr.slice(0, STDERR_KEEP), stderr.split('\n').length - 1) };
}

function describe(exitCode: number | null, signal: string | null, stderr: string, lines: number): string {
  const first = stderr.split('\n').find(Boolean)?.trim();
  const status = signal ? `killed by ${signal}` : `exit ${exitCode}`;
  if (!first) return status;
  return lines > 1 ? `${first} (and ${lines - 1} more messages; ${status})` : `${first} (${status})`;
}

/**
 * Mount points (in this process's mount namespace) equal to the directory or below it. An
 * unreadable mountinfo gives none: rm's --one-file-system still keeps to the device.
 */
export function mountPointsAtOrBelow(dir: string): string[] {
  let real: string;
  let table: string;
  try {
    real = realpathSync(dir);
    table = readFileSync('/proc/self/mountinfo', 'utf8');
  } catch {
    return [];
  }
  const prefix = real.endsWith('/') ? real : `${real}/`;
  const found: string[] = [];
  for (const line of table.split('\n')) {
    const field = line.split(' ')[4];
    if (!field) continue;
    // mountinfo escapes space, tab, newline and backslash as octal (\040 ...).
    const mountPoint = field.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8)));
    if (mountPoint === real || mountPoint.startsWith(prefix)) found.push(mountPoint);
  }
  return found;
}

/** coreutils by absolute path: the service's PATH is not what decides which binary deletes trees. */
const tools = new Map<string, string>();
function tool(name: 'rm' | 'chmod'): string {
  let found = tools.get(name);
  if (!found) {
    found =
      [`/usr/bin/${name}`, `/bin/${name}`].find((candidate) => {
        try {
          accessSync(candidate, constants.X_OK);
          return true;
        } catch {
          return false;
        }
      }) ?? name;
    tools.set(name, found);
  }
  return found;
}

function gone(target: string): boolean {
  try {
    lstatSync(target);
    return false;
  } catch (error) {
    return code(error) === 'ENOENT';
  }
}

function isRoot(): boolean {
  return process.getuid?.() === 0;
}

function code(error: unknown): string | undefined {
  return (error as NodeJS.ErrnoException | undefined)?.code;
}

function message(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** What emptyShallowTree removes at most: entries in all, and directory levels below dir. */
const SHALLOW_MAX_ENTRIES = 64;
const SHALLOW_MAX_DEPTH = 3;

/**
 * Empties dir, synchronously and spawning nothing, when it holds what a run usually leaves: a few
 * files and symlinks, and directories a few levels deep (every run leaves its empty `out/`).
 * Anything larger or deeper, a mount point at or below dir, and any error (a file system without d_type), stops
 * it: returns false, with part of the tree maybe removed, and the slot's resetTmp removes the rest
 * (removeTree: rm, descriptor-relative, any depth). Without it, every run's `out/` would cost a
 * `rm -rf` process (tens of milliseconds of the slot's turn-around on a loaded host). Called once
 * no process of the run's uid is left, so nothing changes the tree meanwhile; names are joined
 * below dir at most SHALLOW_MAX_DEPTH levels deep, so no path is long; a symlink is removed
 * itself (a dirent's type is lstat's), never followed.
 */
export function emptyShallowTree(dir: string): boolean {
  let budget = SHALLOW_MAX_ENTRIES;
  const empty = (at: string, depth: number): boolean => {
    // Read one entry at a time and stop past the budget: a directory of millions of empty files
    // must not be listed whole on the event loop.
    const entries: Dirent[] = [];
    const listing = opendirSync(at);
    try {
      for (let entry = listing.readSync(); entry; entry = listing.readSync()) {
        entries.push(entry);
        if (--budget < 0) return false;
      }
    } finally {
      listing.closeSync();
    }
    for (const entry of entries) {
      const full = path.join(at, entry.name);
      if (entry.isDirectory()) {
        if (depth >= SHALLOW_MAX_DEPTH || !empty(full, depth + 1)) return false;
        rmdirSync(full);
      } else {
        unlinkSync(full); // a file, a symlink, a socket or fifo (never a directory: rmdir's, above)
      }
    }
    return true;
  };
  try {
    // As removeTree: never into a mount point (an operator's leftover; runs cannot mount).
    return mountPointsAtOrBelow(dir).length === 0 && empty(dir, 1);
  } catch {
    return false;
  }
}
