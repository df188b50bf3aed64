/**
 * Instance identity on a shared host. Several instances of the service may run on one host (in
 * containers, pid namespaces, or side by side) and share two things that must not be shared:
 *
 * - the work root: each instance works in a directory of its own, locked while it lives
 *   (workRoot.ts);
 * - the run uids: run slot n executes as SANDBOX_UID_BASE+n (and nsjail mode's warm zygote as
 *   SANDBOX_UID_BASE-1), and a run's cleanup kills every process of its uid and removes its
 *   uid's files from /tmp, /var/tmp and /dev/shm. Two instances on one range kill each other's
 *   runs and delete each other's files. So each instance claims its range, host-wide, here.
 *
 * The claim: one lock file per range, uids-<first>-<last>.lock in SANDBOX_UID_LOCK_DIR (a
 * directory every instance on the host must see: /run/pyexec-uid-ranges by default), held with
 * flock for the instance's life (locks.ts: released by the kernel when the instance dies, even
 * by SIGKILL, whatever pid namespace it ran in). Ranges of different sizes or bases may overlap,
 * so a range is free only when no held lock file overlaps it; claims are serialised by a short
 * lock on claims.lock, so two instances starting at once cannot both see a range free. A lock
 * file nobody holds is stale and removed (under claims.lock): those overlapping a range the claim
 * considers, and, once the instance holds its range, those of any other range (a few dozen per
 * start-up), so the files of instances killed by SIGKILL do not pile up. (A holder that lost its
 * lock and takes it again without claims.lock could, in a window of a few milliseconds, lock a
 * file being unlinked: as before, it is told by onLost only if it loses it again.)
 *
 * When the range is taken:
 * - the default SANDBOX_UID_BASE: the instance takes the next free range, stepping by the range's
 *   size (MAX_CONCURRENT_RUNS+1, the slots and the zygote's base-1), skipping ranges that hold a
 *   local account's uid (/etc/passwd) or a reserved one (nobody, (uid16)-1), and logs it. The
 *   default promises no particular uids, so two instances with default settings both work.
 * - an explicitly set SANDBOX_UID_BASE: the instance refuses every run (503 sandbox_unavailable,
 *   the reason in /health and the start-up log, naming SANDBOX_UID_BASE) instead of moving. An
 *   operator who chose the uids chose them for a reason: reserved in /etc/subuid, excluded from
 *   accounts, matched by firewall (iptables --uid-owner) or audit rules, kept clear of another
 *   service's uids. Moving silently would run untrusted code as uids nobody reserved, possibly a
 *   real user's, whose files a run could then write and whose processes a run's cleanup would
 *   kill. (A lock still held for a moment by a just-killed predecessor is waited out first.)
 *
 * Once claimed, every process of the range's uids that this instance can see is killed and the
 * range's files in /tmp, /var/tmp and /dev/shm removed: with the lock held, they can only be left
 * by an instance that died (SIGKILL leaves a run's daemons behind), and the next run of the uid
 * must not meet them.
 *
 * Without root, runs share the service's uid: there is no range to claim.
 */
import { promises as fs, lstatSync, readdirSync, readFileSync, unlinkSync } from 'fs';
import * as path from 'path';
import type { Config } from '../config';
import type { Logger } from '../logging';
import { holdLock, isHeld, type HeldLock } from './locks';
import type { Finding } from './types';
import { cleanUpAfterAnswer, killAllOfUid, pidsByUid, removeFilesOfUids } from './uidReaper';

export interface UidRange {
  /** Run slot n's uid is base+n. */
  base: number;
  /** base-1: nsjail mode's warm zygote (outside its jail). */
  first: number;
  /** The last run slot's uid. */
  last: number;
}

export type UidClaim = { ok: true; range: UidRange; lock?: HeldLock; detail: string } | { ok: false; reason: string };

const LOCK_NAME = /^uids-(\d+)-(\d+)\.lock$/;
const CLAIMS_LOCK = 'claims.lock';
/** How long a claim waits for another instance's claim to finish. */
const CLAIMS_WAIT_S = 30;
/** How many ranges past the default one an instance tries. */
const MAX_CANDIDATES = 1000;
/** nobody, (uid16)-1, nfsnobody, (uid32)-1: never a run's uid when the instance picks. */
const RESERVED_UIDS = [65534, 65535, 4294967294, 4294967295];
const MAX_UID = 4294967293;
/** An explicitly set range held by a predecessor killed a moment ago is free within this. */
const EXPLICIT_WAIT_MS = 3000;

export function uidRange(base: number, runs: number): UidRange {
  return { base, first: base - 1, last: base + runs - 1 };
}

export function lockFileName(range: UidRange): string {
  return `uids-${range.first}-${range.last}.lock`;
}

/** How /health reports a claim (sandbox.capabilities.uid_range). */
export function uidRangeFinding(claim: UidClaim, config: Config): Finding {
  const requested = config.sandboxUidBase;
  if (!claim.ok) return { available: false, detail: claim.reason, base: null, first: null, last: null, requested, lock: null };
  const { base, first, last } = claim.range;
  return { available: true, detail: claim.detail, base, first, last, requested, lock: claim.lock?.file ?? null };
}

/** Claims this instance's uid range (see the top of this file). Never throws: a failure is a refusal with its reason. */
export async function claimUidRange(config: Config, logger?: Logger): Promise<UidClaim> {
  const runs = config.maxConcurrentRuns;
  const wanted = uidRange(config.sandboxUidBase, runs);
  if (process.getuid?.() !== 0) {
    return { ok: true, range: wanted, detail: 'not root: every run has the service uid; no uid range is claimed' };
  }
  let claim: UidClaim;
  try {
    claim = await claimAsRoot(config, runs);
  } catch (error) {
    claim = { ok: false, reason: `the uid range could not be claimed in SANDBOX_UID_LOCK_DIR ${config.uidLockDir}: ${(error as Error).message}` };
  }
  if (!claim.ok) {
    logger?.error(`no uid range: every run will be refused (${claim.reason})`, { event: 'uid_range_refused', requested_base: config.sandboxUidBase, reason: claim.reason });
    return claim;
  }
  const { range, lock } = claim;
  const swept = await sweepRange(range);
  logger?.info(`run uids ${range.base}-${range.last} (base ${range.base}; ${claim.detail})`, {
    event: 'uid_range_claimed',
    base: range.base,
    first: range.first,
    last: range.last,
    requested_base: config.sandboxUidBase,
    moved: range.base !== config.sandboxUidBase,
    lock: lock?.file,
    swept_processes: swept.processes,
    swept_files: swept.files,
    quarantined_uids: swept.quarantined,
  });
  if (lock) {
    // Tidiness only (a lock file nobody holds is free): the next claim need not check this one.
    process.once('exit', () => {
      try {
        unlinkSync(lock.file);
      } catch {
        // gone already
      }
    });
    lock.onLost = (reason) => {
      logger?.error(`the lock on this instance's uid range ${range.first}-${range.last} was lost (${reason}); taking it again`, { event: 'uid_range_lock_lost', base: range.base });
      holdLock(lock.file).then(
        (again) => {
          if (!again) logger?.error(`the uid range ${range.first}-${range.last} is now held by another instance: the runs of both may interfere`, { event: 'uid_range_lock_lost', base: range.base });
        },
        () => undefined,
      );
    };
  }
  return claim;
}

async function claimAsRoot(config: Config, runs: number): Promise<UidClaim> {
  const lockDir = config.uidLockDir;
  await ensureLockDir(lockDir);
  const explicit = config.sandboxUidBaseExplicit;
  const deadline = Date.now() + (explicit ? EXPLICIT_WAIT_MS : 0);
  for (;;) {
    const claims = await holdLock(path.join(lockDir, CLAIMS_LOCK), CLAIMS_WAIT_S);
    if (!claims) return { ok: false, reason: `another instance's claim held ${path.join(lockDir, CLAIMS_LOCK)} for over ${CLAIMS_WAIT_S} s` };
    let claim: UidClaim;
    try {
      claim = await claimWhileAlone(config, runs, explicit);
      if (claim.ok) await removeFreeLockFiles(lockDir, claim.lock?.file);
    } finally {
      await claims.release();
    }
    if (claim.ok || Date.now() >= deadline) return claim;
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
}

/** With claims.lock held: the first free range among the candidates, locked. */
async function claimWhileAlone(config: Config, runs: number, explicit: boolean): Promise<UidClaim> {
  const lockDir = config.uidLockDir;
  const wanted = uidRange(config.sandboxUidBase, runs);
  const held = new Map<string, boolean | undefined>();
  const claims = readdirSync(lockDir).flatMap((name) => {
    const match = LOCK_NAME.exec(name);
    return match ? [{ name, first: Number(match[1]), last: Number(match[2]) }] : [];
  });
  /** A live claim overlapping the range, if any; lock files found free are removed on the way. */
  const conflict = async (range: UidRange) => {
    for (const other of claims) {
      if (other.last < range.first || other.first > range.last) continue;
      const file = path.join(lockDir, other.name);
      if (!held.has(file)) held.set(file, await isHeld(file));
      if (held.get(file) === false) {
        removeLockFile(file);
        held.set(file, undefined);
        other.last = -1; // never matches again
        continue;
      }
      return other.name;
    }
    return undefined;
  };

  if (explicit) {
    const taken = await conflict(wanted);
    if (taken) {
      return {
        ok: false,
        reason: `SANDBOX_UID_BASE=${wanted.base} (uids ${wanted.first}-${wanted.last}) overlaps a range another instance on this host holds (${path.join(lockDir, taken)}); set SANDBOX_UID_BASE to a free range, or leave it unset to let the instance pick one`,
      };
    }
    return locked(lockDir, wanted, 'SANDBOX_UID_BASE as set');
  }

  const accounts = localAccountUids();
  const step = runs + 1;
  const skipped: string[] = [];
  for (let k = 0; k < MAX_CANDIDATES; k++) {
    const range = uidRange(wanted.base + k * step, runs);
    if (range.last > MAX_UID) break;
    const within = (uid: number) => uid >= range.first && uid <= range.last;
    if (RESERVED_UIDS.some(within) || accounts.some(within)) continue;
    const taken = await conflict(range);
    if (taken) {
      skipped.push(taken);
      continue;
    }
    const claim = await locked(
      lockDir,
      range,
      k === 0 ? 'the default range' : `the default range ${wanted.first}-${wanted.last} is held by another instance on this host (${skipped[0]}); took the next free one`,
    );
    if (claim.ok) return claim;
  }
  return {
    ok: false,
    reason: `no free uid range of ${step} uids from ${wanted.first} on (${skipped.length} held by other instances on this host); set SANDBOX_UID_BASE to a free range`,
  };
}

/** How many lock files of other ranges one claim checks and removes when free (each check is a flock process). */
const STALE_CHECKS_PER_CLAIM = 64;

/**
 * With claims.lock held, once this instance holds its range: lock files of other ranges that no
 * one holds are removed (the lock dies with its instance, the file does not: an instance killed
 * by SIGKILL never unlinks its own). Without this, files of ranges no later claim overlaps would
 * stay forever. At most STALE_CHECKS_PER_CLAIM per start-up; the rest go at later ones.
 */
async function removeFreeLockFiles(lockDir: string, own: string | undefined): Promise<void> {
  const files = readdirSync(lockDir)
    .filter((name) => LOCK_NAME.test(name))
    .map((name) => path.join(lockDir, name))
    .filter((file) => file !== own)
    .slice(0, STALE_CHECKS_PER_CLAIM);
  for (const file of files) {
    if ((await isHeld(file)) === false) removeLockFile(file);
  }
}

function removeLockFile(file: string): void {
  try {
    unlinkSync(file);
  } catch {
    // already gone
  }
}

async function locked(lockDir: string, range: UidRange, why: string): Promise<UidClaim> {
  const lock = await holdLock(path.join(lockDir, lockFileName(range)));
  // Held although no claim overlapped it: someone took it without claims.lock (a holder
  // re-taking its lost lock). Not this one, then.
  if (!lock) return { ok: false, reason: `${path.join(lockDir, lockFileName(range))} is held by another instance` };
  return { ok: true, range, lock, detail: `${why}; held by ${lock.file}` };
}

/** The lock directory: made if missing (0700), and refused unless it is a directory of the service's own that no one else can write. */
async function ensureLockDir(dir: string): Promise<void> {
  await fs.mkdir(dir, { recursive: true, mode: 0o700 });
  const stat = lstatSync(dir);
  if (!stat.isDirectory()) throw new Error(`${dir} is not a directory`);
  if (stat.uid !== process.getuid?.()) throw new Error(`${dir} belongs to uid ${stat.uid}, not to the service`);
  if ((stat.mode & 0o022) !== 0) throw new Error(`${dir} is writable by others (mode ${(stat.mode & 0o777).toString(8)})`);
}

/** The uids of the host's (or container's) local accounts, which an instance never picks for runs. */
function localAccountUids(): number[] {
  try {
    return readFileSync('/etc/passwd', 'utf8')
      .split('\n')
      .map((line) => Number(line.split(':')[2]))
      .filter((uid) => Number.isInteger(uid) && uid >= 1000);
  } catch {
    return [];
  }
}

/**
 * Kills what the range's uids still run here and removes their files in the world-writable places.
 * A uid whose processes survive is quarantined (killAllOfUid): its slot refuses runs until they
 * are gone, and its files are removed after that (its recovery is the first of its cleanups).
 */
async function sweepRange(range: UidRange): Promise<{ processes: number; files: number; quarantined: number[] }> {
  const uids = new Set<number>();
  for (let uid = range.first; uid <= range.last; uid++) uids.add(uid);
  let processes = 0;
  const quarantined: number[] = [];
  for (const [uid, pids] of pidsByUid(uids)) {
    processes += pids.length;
    try {
      await killAllOfUid(uid);
    } catch {
      quarantined.push(uid);
      uids.delete(uid);
      void cleanUpAfterAnswer(uid, async () => void (await removeFilesOfUids(new Set([uid]))));
    }
  }
  const files = (await removeFilesOfUids(uids)).length;
  return { processes, files, quarantined };
}
