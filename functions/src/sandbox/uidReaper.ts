/**
 * Ends every process of a run's uid and removes what it left in world-writable places. Each run
 * slot has its own uid, so "every process of this uid" is exactly "every process of this run",
 * however it daemonized (double fork, setsid).
 */
import { spawn } from 'child_process';
import { lstatSync, readdirSync, readFileSync, statSync } from 'fs';
import * as path from 'path';
import { removeTree } from './removeTree';

const WORLD_WRITABLE = ['/tmp', '/var/tmp', '/dev/shm'];

/**
 * The pids of each of the given uids, from one walk of /proc. Synchronous on purpose: a container
 * has tens of processes, and one blocking walk (well under a millisecond) is cheaper than a
 * thread-pool round trip per entry, on the path of every answer and every sampler tick.
 */
export function pidsByUid(uids: Set<number>): Map<number, number[]> {
  const found = new Map<number, number[]>();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const { uid } = statSync(`/proc/${entry}`);
      if (!uids.has(uid)) continue;
      const list = found.get(uid) ?? [];
      list.push(Number(entry));
      found.set(uid, list);
    } catch {
      // exited while we looked
    }
  }
  return found;
}

/** The pids of the uid; with ignoreExiting, those that can still run code. */
export function processesOfUid(uid: number, options: { ignoreExiting?: boolean } = {}): number[] {
  const pids = pidsByUid(new Set([uid])).get(uid) ?? [];
  return options.ignoreExiting ? pids.filter((pid) => !isExiting(pid)) : pids;
}

/**
 * True when no thread of the process can run code any more. /proc/<pid>/stat describes only the
 * thread-group leader, which a script can end alone (the raw exit syscall) while its other
 * threads run on: every thread in /proc/<pid>/task is checked.
 */
function isExiting(pid: number): boolean {
  let threads: string[];
  try {
    threads = readdirSync(`/proc/${pid}/task`);
  } catch {
    return true; // already gone
  }
  return threads.every((tid) => threadIsExiting(`/proc/${pid}/task/${tid}/stat`));
}

/** PF_EXITING in the thread's stat flags (field 9), or a zombie: it will run no more code. */
const PF_EXITING = 0x4;
function threadIsExiting(statPath: string): boolean {
  let stat: string;
  try {
    stat = readFileSync(statPath, 'utf8');
  } catch {
    return true; // already gone
  }
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return fields[0] === 'Z' || fields[0] === 'X' || (Number(fields[6]) & PF_EXITING) !== 0;
}

/** True when none of the processes can still run code (each is gone, a zombie, or exiting). */
export function allExiting(pids: number[]): boolean {
  return pids.every(isExiting);
}

/**
 * SIGKILL to every process of the uid, until none is left. First directly, by pid (no process
 * to spawn: this sits on the answer's path); if processes keep appearing (a fork bomb racing
 * the scan), kill(-1, SIGKILL) run as the uid, which the kernel applies to all of them at once.
 */
export async function killAllOfUid(uid: number, options: { ignoreExiting?: boolean } = {}): Promise<void> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const left = processesOfUid(uid, options);
    if (left.length === 0) return;
    if (attempt >= 2) await killAsUid(uid);
    for (const pid of left) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    if (attempt > 0) await new Promise((resolve) => setTimeout(resolve, 2 * attempt));
  }
}

function killAsUid(uid: number): Promise<void> {
  return new Promise<void>((resolve) => {
    const killer = spawn('/bin/kill', ['-KILL', '-1'], { uid, gid: uid, stdio: 'ignore', env: {} });
    killer.on('error', () => resolve());
    killer.on('close', () => resolve());
  });
}

/** Deletes entries the uid created at the top of /tmp, /var/tmp and /dev/shm. */
export function removeFilesOfUid(uid: number, places: string[] = WORLD_WRITABLE): Promise<string[]> {
  return removeFilesOfUids(new Set([uid]), places);
}

/** Deletes entries any of the uids created at the top of /tmp, /var/tmp and /dev/shm. */
export async function removeFilesOfUids(uids: ReadonlySet<number>, places: string[] = WORLD_WRITABLE): Promise<string[]> {
  const removed: string[] = [];
  for (const place of places) {
    let entries: string[];
    try {
      entries = readdirSync(place);
    } catch {
      continue;
    }
    for (const entry of entries) {
      const full = path.join(place, entry);
      try {
        if (!uids.has(lstatSync(full).uid)) continue;
        // Descriptor-relative (any depth, never through a symlink): a run may nest a tree far
        // deeper than a path can name, and whatever stayed would be the next run's of this uid.
        if ((await removeTree(full)).removed) removed.push(full);
      } catch {
        // raced with another cleanup
      }
    }
  }
  return removed;
}

/**
 * Cleanups that run after their run's answer, by the run's uid: a uid is one run slot's, on the
 * cold and the warm path alike, and a run's leftovers (its slot's /tmp, files of its uid, its
 * cgroup) are only ever touched by its own slot's cleanup. A run's answer leaves once none of its
 * processes can execute any more; what is left is removal, which cannot change the answer. The
 * uid's next run waits for it (cleanedUp) before anything of that run is set up, so a cleanup
 * never removes what a later run made, and no run ever sees what an earlier one left.
 */
const cleanups = new Map<number, Promise<void>>();

/** Starts `work` for the uid, after any cleanup of the uid still under way. Never rejects. */
export function cleanUpAfterAnswer(uid: number, work: () => Promise<void>): Promise<void> {
  const done = cleanedUp(uid)
    .then(work)
    .catch((error: unknown) => {
      process.stderr.write(`cleaning up after a run of uid ${uid} failed: ${(error as Error).message}\n`);
    })
    .finally(() => {
      if (cleanups.get(uid) === done) cleanups.delete(uid);
    });
  cleanups.set(uid, done);
  return done;
}

/** Resolves once no cleanup of the uid is under way (at once when there is none). Never rejects. */
export function cleanedUp(uid: number): Promise<void> {
  return cleanups.get(uid) ?? Promise.resolve();
}

/** Resolves once every cleanup under way now is over (shutdown waits for them). Never rejects. */
export async function allCleanedUp(): Promise<void> {
  await Promise.all(cleanups.values());
}
