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

/** A uid whose processes survived every kill: it is quarantined (see below) until they are gone. */
export class UidNotEmptyError extends Error {
  constructor(
    readonly uid: number,
    /** Its processes that could still run code after the last kill. */
    readonly pids: number[],
  ) {
    super(`${pids.length} process${pids.length === 1 ? '' : 'es'} of uid ${uid} survived SIGKILL (${describePids(pids)})`);
    this.name = 'UidNotEmptyError';
  }
}

/**
 * SIGKILL to every process of the uid, until none is left. First directly, by pid (no process
 * to spawn: this sits on the answer's path); if processes keep appearing (a fork bomb racing
 * the scan), kill(-1, SIGKILL) run as the uid, which the kernel applies to all of them at once.
 *
 * Throws UidNotEmptyError when, after every attempt, a process of the uid can still run code (one
 * in uninterruptible sleep, in a frozen cgroup, a fork bomb out-racing the kills), and the uid is
 * quarantined first: its next run is refused (uidRefusal), and its cleanups wait, until a retry
 * with backoff finds none left. Processes left only as zombies or already exiting run no more
 * code: that is success.
 */
export async function killAllOfUid(uid: number, options: { ignoreExiting?: boolean } = {}): Promise<void> {
  const left = await killAttempts(uid, options);
  if (left.length === 0) return;
  quarantine(uid, left);
  throw new UidNotEmptyError(uid, left);
}

/**
 * Before a run's answer: every process of the run killed, through its cgroup when it has one and
 * then by its uid (which also catches what a cgroup kill that gave up left; one walk of /proc when
 * none is left). Returns why some survived (their uid is quarantined then), or undefined.
 */
export async function endRun(uid: number, cgroup?: { kill(): Promise<void> }): Promise<string | undefined> {
  await cgroup?.kill().catch(() => undefined);
  try {
    await killAllOfUid(uid);
    return undefined;
  } catch (error) {
    return (error as Error).message;
  }
}

/** Kills as killAllOfUid does; returns the processes of the uid that can still run code afterwards. */
async function killAttempts(uid: number, options: { ignoreExiting?: boolean }): Promise<number[]> {
  for (let attempt = 0; attempt < KILL_ATTEMPTS; attempt++) {
    const left = processesOfUid(uid, options);
    if (left.length === 0) return [];
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
  return processesOfUid(uid, { ignoreExiting: true });
}

const KILL_ATTEMPTS = 20;

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

/**
 * Resolves once no cleanup of the uid is under way (at once when there is none). Never rejects.
 * A quarantined uid's recovery is one of its cleanups: this waits for it too (uidReady does not).
 */
export function cleanedUp(uid: number): Promise<void> {
  return cleanups.get(uid) ?? Promise.resolve();
}

/** Resolves once every cleanup under way now is over (shutdown waits for them). Never rejects. */
export async function allCleanedUp(): Promise<void> {
  await Promise.all(cleanups.values());
}

/**
 * Quarantine: a uid some of whose processes survived every kill (killAllOfUid). A new run must
 * never meet them (they could read or change what it writes, or, going by path, turn root's
 * cleanup against the host), so the uid is out of use: its slot's runs are refused at once with
 * the reason (uidReady, uidRefusal), and its cleanups (cleanUpAfterAnswer) wait behind its
 * recovery. The recovery tries the kill again with backoff (QUARANTINE_RETRY_MS, doubling up to
 * QUARANTINE_RETRY_MAX_MS), for as long as the instance lives; once nothing of the uid can run
 * code any more the uid is back in use. Each step is logged: quarantined, still (at most every
 * QUARANTINE_REMIND_MS), recovered. The instance itself stays up and serves its other slots.
 */
export interface UidQuarantine {
  uid: number;
  /** When the kill first failed. */
  since: Date;
  /** The processes that survived the last kill. */
  pids: number[];
  /** How they were when last looked at: pid, name, state. */
  detail: string;
}

const quarantines = new Map<number, UidQuarantine>();
const QUARANTINE_RETRY_MS = 250;
const QUARANTINE_RETRY_MAX_MS = 30_000;
const QUARANTINE_REMIND_MS = 5 * 60_000;

/** Where quarantines are reported: the service's structured logger, once it has one (stderr until then). */
export interface ReaperLog {
  error(message: string, fields?: Record<string, unknown>): void;
  info(message: string, fields?: Record<string, unknown>): void;
}
let log: ReaperLog = {
  error: (message) => process.stderr.write(`${message}\n`),
  info: (message) => process.stderr.write(`${message}\n`),
};

export function reportQuarantinesTo(logger: ReaperLog): void {
  log = logger;
}

/** The uids out of use now (for /health and for tests). */
export function quarantinedUids(): UidQuarantine[] {
  return [...quarantines.values()].map((entry) => ({ ...entry, pids: [...entry.pids] }));
}

/** Why the uid must not get a run now (it is quarantined), or undefined. */
export function uidRefusal(uid: number): string | undefined {
  const entry = quarantines.get(uid);
  if (!entry) return undefined;
  return (
    `uid ${uid} is out of use: ${entry.pids.length} process${entry.pids.length === 1 ? '' : 'es'} of an earlier run survived SIGKILL ` +
    `(${entry.detail}) since ${entry.since.toISOString()}; it returns to use once they are gone`
  );
}

/**
 * For a run about to start on the uid: waits for the uid's cleanups, and resolves with the reason
 * the run must be refused when the uid is (or becomes) quarantined, at once and without waiting
 * for the recovery; undefined when the uid is clear. Never rejects.
 */
export async function uidReady(uid: number): Promise<string | undefined> {
  for (;;) {
    const refusal = uidRefusal(uid);
    if (refusal) return refusal;
    const pending = cleanups.get(uid);
    if (!pending) return undefined;
    await pending;
  }
}

/** Puts the uid out of use (see above) and starts its recovery; a uid already quarantined gets its pids updated. */
function quarantine(uid: number, pids: number[]): void {
  const found = quarantines.get(uid);
  if (found) {
    found.pids = pids;
    found.detail = describePids(pids);
    return;
  }
  const entry: UidQuarantine = { uid, since: new Date(), pids, detail: describePids(pids) };
  quarantines.set(uid, entry);
  log.error(`uid ${uid} quarantined: its processes survived SIGKILL (${entry.detail}); its slot refuses runs until they are gone, retried with backoff`, {
    event: 'uid_quarantined',
    uid,
    pids,
  });
  // The uid's recovery is one of its cleanups: every cleanup chained after it waits for it.
  void cleanUpAfterAnswer(uid, () => recover(entry));
}

async function recover(entry: UidQuarantine): Promise<void> {
  let delay = QUARANTINE_RETRY_MS;
  let reminded = Date.now();
  for (;;) {
    await new Promise((resolve) => setTimeout(resolve, delay).unref());
    const left = await killAttempts(entry.uid, {});
    if (left.length === 0) break;
    entry.pids = left;
    entry.detail = describePids(left);
    if (Date.now() - reminded >= QUARANTINE_REMIND_MS) {
      reminded = Date.now();
      log.error(`uid ${entry.uid} still quarantined since ${entry.since.toISOString()}: ${entry.detail}`, { event: 'uid_quarantined', uid: entry.uid, pids: left, since: entry.since.toISOString() });
    }
    delay = Math.min(delay * 2, QUARANTINE_RETRY_MAX_MS);
  }
  quarantines.delete(entry.uid);
  const seconds = Math.round((Date.now() - entry.since.getTime()) / 100) / 10;
  log.info(`uid ${entry.uid} back in use: no process of it is left after ${seconds} s of quarantine`, { event: 'uid_recovered', uid: entry.uid, quarantined_s: seconds });
}

/** "1234 sleep (D), 1240 python3 (R)" for the first few pids: what an operator needs to look at them. */
function describePids(pids: number[]): string {
  const shown = pids.slice(0, 5).map((pid) => {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      const name = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
      const state = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0];
      return `pid ${pid} ${JSON.stringify(name)} state ${state}`;
    } catch {
      return `pid ${pid} (gone)`;
    }
  });
  return shown.join(', ') + (pids.length > shown.length ? `, and ${pids.length - shown.length} more` : '');
}
