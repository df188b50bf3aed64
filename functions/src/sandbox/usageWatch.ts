/**
 * Aggregate limits that rlimits cannot give. RLIMIT_AS bounds each process, not a run: a run may
 * fork up to SCRIPT_MAX_PROCESSES processes of SCRIPT_MEMORY_MB each. RLIMIT_FSIZE bounds each
 * file, not how many a run writes into its directory (seccomp mode has no size-capped tmpfs).
 * Where cgroup v2 is usable nsjail enforces memory in the kernel; everywhere else this sampler
 * does it: one walk of /proc per tick for all runs, summing the memory of each run's uid, and a
 * walk of each seccomp-mode run directory. A run over a limit is killed (its uid's processes).
 *
 * A sampler can only notice what already happened: the overshoot is what a run allocates or
 * writes within one tick (TICK_MS), which docs/SECURITY.md states.
 */
import { promises as fs, readFileSync } from 'fs';
import * as path from 'path';
import type { Config } from '../config';
import type { LimitExceeded } from './types';
import { pidsByUid } from './uidReaper';

export const TICK_MS = 100;
const PAGE = 4096;
const MIB = 1024 * 1024;
/** A run directory with more entries than this is treated as over its limit (inode exhaustion). */
export const MAX_DIR_ENTRIES = 10000;

export interface UsageLimits {
  uid: number;
  /** Sum over the uid's processes (anonymous memory, confirmed by PSS). */
  memoryBytes: number;
  /** Seccomp mode: the run's private directory and its size cap. */
  dir?: string;
  dirBytes?: number;
}

interface Watch {
  limits: UsageLimits;
  onExceeded: (reason: LimitExceeded) => void;
  fired: boolean;
}

const watches = new Set<Watch>();
let timer: NodeJS.Timeout | undefined;
let busy = false;

/** A run's limits from configuration: SCRIPT_MEMORY_MB for the uid, SCRIPT_TMP_MB for its directory. */
export function runUsageLimits(config: Config, uid: number, dir?: string): UsageLimits {
  return { uid, memoryBytes: config.scriptMemoryMb * MIB, ...(dir ? { dir, dirBytes: config.scriptTmpMb * MIB } : {}) };
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
    const byUid = pidsByUid(new Set(live.map((w) => w.limits.uid)));
    await Promise.all(live.map((watch) => check(watch, byUid.get(watch.limits.uid) ?? [])));
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
  if (pids.length > 0 && anonymousBytes(pids) > limits.memoryBytes && pssBytes(pids) > limits.memoryBytes) {
    fire({ kind: 'memory', message: `the run's processes together used more than its memory limit of ${limits.memoryBytes >> 20} MiB; all were killed` });
    return;
  }
  if (limits.dir && limits.dirBytes !== undefined) {
    const usage = await directoryUsage(limits.dir);
    if (usage.entries > MAX_DIR_ENTRIES) fire({ kind: 'disk', message: `the run created more than ${MAX_DIR_ENTRIES} files; all its processes were killed` });
    else if (usage.bytes > limits.dirBytes) fire({ kind: 'disk', message: `the run's files took more than ${limits.dirBytes >> 20} MiB; all its processes were killed` });
  }
}

/** statm: resident minus file-backed and shmem pages. Cheap; counts copy-on-write pages once per process. */
function anonymousBytes(pids: number[]): number {
  let total = 0;
  for (const pid of pids) {
    try {
      const [, resident, shared] = readFileSync(`/proc/${pid}/statm`, 'utf8').split(' ').map(Number);
      total += Math.max(0, resident - shared) * PAGE;
    } catch {
      // gone
    }
  }
  return total;
}

/** Proportional set size: pages shared between forked processes count once in total. */
function pssBytes(pids: number[]): number {
  let total = 0;
  for (const pid of pids) {
    try {
      const match = /^Pss:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'));
      if (match) total += Number(match[1]) * 1024;
    } catch {
      // gone
    }
  }
  return total;
}

async function directoryUsage(root: string): Promise<{ bytes: number; entries: number }> {
  let bytes = 0;
  let entries = 0;
  const pending = [root];
  while (pending.length > 0 && entries <= MAX_DIR_ENTRIES) {
    const dir = pending.pop()!;
    let names: string[];
    try {
      names = await fs.readdir(dir);
    } catch {
      continue;
    }
    for (const name of names) {
      if (++entries > MAX_DIR_ENTRIES) break;
      const full = path.join(dir, name);
      try {
        const stat = await fs.lstat(full);
        bytes += stat.blocks * 512;
        if (stat.isDirectory()) pending.push(full);
      } catch {
        // removed meanwhile
      }
    }
  }
  return { bytes, entries };
}
