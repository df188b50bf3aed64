/**
 * Aggregate limits that rlimits cannot give, watched every TICK_MS for all runs at once.
 *
 * With a run cgroup the kernel enforces memory and tasks itself; the sampler only notices the
 * kernel's OOM kills (so the whole run ends and is reported as memory_limit) and, in seccomp mode,
 * the disk the run fills (its directory, and files it holds open or mapped after unlinking them).
 * Without a cgroup the sampler is the only aggregate memory limit: it sums the memory of the run
 * uid's processes (processUsage.ts: private memory counted once, shared memory and memfds by
 * inode) and kills the run over its limit. A sampler can only notice what already happened: the
 * overshoot is what a run allocates within one tick, which docs/SECURITY.md states.
 */
import { execFile } from 'child_process';
import { promises as fs } from 'fs';
import * as path from 'path';
import { promisify } from 'util';
import type { RunCgroup } from './cgroup/cgroups';
import type { RunLimits } from './limits';
import { measureProcesses } from './processUsage';
import type { LimitExceeded } from './types';
import { pidsByUid } from './uidReaper';

const execFileAsync = promisify(execFile);

export const TICK_MS = 100;
/** A run directory with more entries than this is treated as over its limit (inode exhaustion). */
export const MAX_DIR_ENTRIES = 10000;

export interface UsageLimits {
  /** The run's cgroup, where the host has one: the kernel holds memory, the sampler reads its verdict. */
  cgroup?: RunCgroup;
  /** Without a cgroup: the run's processes are those of its uid. */
  uid?: number;
  memoryBytes: number;
  /** Seccomp mode: the run's private directory and its size cap. */
  dir?: WatchedDir;
}

export interface WatchedDir {
  path: string;
  maxBytes: number;
}

interface Watch {
  limits: UsageLimits;
  onExceeded: (reason: LimitExceeded) => void;
  fired: boolean;
}

const watches = new Set<Watch>();
let timer: NodeJS.Timeout | undefined;
let busy = false;

/** What to watch of a run: its memory limit, and (seccomp mode) its directory. */
export function usageLimits(limits: RunLimits, run: { cgroup?: RunCgroup; uid?: number; dir?: WatchedDir }): UsageLimits | undefined {
  if (!run.cgroup && run.uid === undefined) return undefined; // nothing identifies the run's processes
  return { cgroup: run.cgroup, uid: run.uid, memoryBytes: limits.memoryBytes, dir: run.dir };
}

/** The kernel ended a process of the run for memory: the run is over its limit. */
export function memoryVerdict(limits: UsageLimits | undefined): LimitExceeded | undefined {
  if (!limits?.cgroup || limits.cgroup.oomKills() === 0) return undefined;
  return { kind: 'memory', message: `the run's processes together reached its memory limit of ${limits.memoryBytes >> 20} MiB (the kernel's limit for its cgroup); all were killed` };
}

/** Starts watching a run; returns the function that stops it. */
export function watchUsage(limits: UsageLimits, onExceeded: (reason: LimitExceeded) => void): () => void {
  const watch: Watch = { limits, onExceeded, fired: false };
  watches.add(watch);
  if (!timer) {
    timer = setInterval(() => void tick(), TICK_MS);
    timer.unref();
  }
  return () => {
    watches.delete(watch);
    if (watches.size === 0 && timer) {
      clearInterval(timer);
      timer = undefined;
    }
  };
}

async function tick(): Promise<void> {
  if (busy) return;
  busy = true;
  try {
    const live = [...watches].filter((w) => !w.fired);
    if (live.length === 0) return;
    // One walk of /proc for every run that has no cgroup to list its processes.
    const uids = new Set(live.filter((w) => !w.limits.cgroup && w.limits.uid !== undefined).map((w) => w.limits.uid!));
    const byUid = uids.size > 0 ? pidsByUid(uids) : new Map<number, number[]>();
    await Promise.all(live.map((watch) => check(watch, watch.limits.cgroup ? watch.limits.cgroup.pids() : (byUid.get(watch.limits.uid!) ?? []))));
  } catch {
    // a failed sample is skipped; the next tick tries again
  } finally {
    busy = false;
  }
}

async function check(watch: Watch, pids: number[]): Promise<void> {
  const { limits } = watch;
  const fire = (reason: LimitExceeded) => {
    if (watch.fired || !watches.has(watch)) return;
    watch.fired = true;
    watch.onExceeded(reason);
  };
  const verdict = memoryVerdict(limits);
  if (verdict) return fire(verdict);
  const needsMeasure = !limits.cgroup || limits.dir !== undefined;
  // With a cgroup the kernel holds memory: only the hidden files are measured. Without one, the
  // exact (costly) figures are read only when a cheap upper bound is over the limit.
  const measured = needsMeasure && pids.length > 0 ? measureProcesses(pids, limits.cgroup ? { memory: false } : { exactAbove: limits.memoryBytes }) : { memoryBytes: 0, hiddenFileBytes: 0 };
  if (!limits.cgroup && measured.memoryBytes > limits.memoryBytes) {
    return fire({ kind: 'memory', message: `the run's processes together used more than its memory limit of ${limits.memoryBytes >> 20} MiB; all were killed` });
  }
  if (limits.dir) {
    const usage = await directoryUsage(limits.dir.path);
    if (usage.entries > MAX_DIR_ENTRIES) fire({ kind: 'disk', message: `the run created more than ${MAX_DIR_ENTRIES} files; all its processes were killed` });
    else if (usage.bytes + measured.hiddenFileBytes > limits.dir.maxBytes)
      fire({ kind: 'disk', message: `the run's files took more than ${limits.dir.maxBytes >> 20} MiB; all its processes were killed` });
  }
}

/**
 * Size and entries of a run's directory, walked by path: cheap, and enough for nearly every run.
 * What lies deeper than PATH_MAX cannot be reached by path (ENAMETOOLONG); for such a tree the
 * count is taken again by coreutils du, which walks descriptor-relative, so nesting cannot hide
 * files from the limit.
 */
async function directoryUsage(root: string): Promise<{ bytes: number; entries: number }> {
  let bytes = 0;
  let entries = 0;
  let tooDeep = false;
  const pending = [root];
  while (pending.length > 0 && entries <= MAX_DIR_ENTRIES) {
    const dir = pending.pop()!;
    let names: string[];
    try {
      names = await fs.readdir(dir);
    } catch (error) {
      tooDeep ||= (error as NodeJS.ErrnoException).code === 'ENAMETOOLONG';
      continue;
    }
    for (const name of names) {
      if (++entries > MAX_DIR_ENTRIES) break;
      const full = path.join(dir, name);
      try {
        const stat = await fs.lstat(full);
        bytes += stat.blocks * 512;
        if (stat.isDirectory()) pending.push(full);
      } catch (error) {
        tooDeep ||= (error as NodeJS.ErrnoException).code === 'ENAMETOOLONG'; // else removed meanwhile
      }
    }
  }
  return tooDeep ? deepUsage(root) : { bytes, entries };
}

/** du's count of a tree of any depth (one file system, never through a symlink). */
async function deepUsage(root: string): Promise<{ bytes: number; entries: number }> {
  const du = async (flags: string[]) => {
    const { stdout } = await execFileAsync('du', ['-s', '-x', ...flags, '--', root], { timeout: 5000 }).catch((error: { stdout?: string }) => ({ stdout: error.stdout ?? '' }));
    return Number(/^(\d+)/.exec(stdout)?.[1] ?? 0);
  };
  const [bytes, entries] = await Promise.all([du(['-B1']), du(['--inodes'])]);
  return { bytes, entries: Math.max(0, entries - 1) }; // du counts the root itself
}
