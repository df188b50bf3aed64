/**
 * Seccomp mode's own world: with no mount privilege, a run sees the sandbox's root only by being
 * chrooted into it, and a private /tmp only in a root of its own. So each run slot has its own
 * root, and the warm path's zygote one more, all under the instance's staged directory:
 *
 *   <files.dir>/root/                 the zygote's root (cold runs never enter it)
 *   <files.dir>/root/sandbox/         the runner and the policy (copied), warm/ (the channel socket)
 *   <files.dir>/root/slots/<n>/       slot n's root: what a run of slot n sees as /
 *   <files.dir>/root/slots/<n>/tmp/   its /tmp: empty, 0700, the slot uid's; emptied after each run
 *
 * Each root is a hard-link copy (`cp -al`) of SANDBOX_ROOTFS: new directories (about 2000, 8 MB),
 * the same files (no data is copied; root-owned and writable by no one else, so no run can change
 * what another sees). It needs SANDBOX_WORK_ROOT on SANDBOX_ROOTFS's file system. The slots sit
 * below the zygote's root so its children can chroot into theirs by a path it can see; a slot's
 * run cannot see above its own root. A root gets the runner at /sandbox and /dev/null, /dev/zero,
 * /dev/urandom and /dev/random (mknod; without CAP_MKNOD the root has no /dev nodes and the runner
 * reads its stdin from an empty pipe instead). There is no /proc, /sys or any host file in it.
 *
 * A slot's root is made the first time the slot is used (about 0.5 s), then kept for the
 * instance's life; everything is removed with the staged directory when the service exits.
 *
 * Prepared roots (the container image). In an image the root lies in an image layer, overlayfs'
 * lower directory: a hard link made at run time, in the container's writable layer, copies its
 * file up first, so linking the roots at start-up would copy the whole root (about 600 MB) per
 * instance (on Cloud Run, into the instance's memory). So the image makes them at build time, in
 * the same layer as the root (sandbox-image/rootfs/world.sh, the Dockerfile's rootfs-build
 * stage), next to it:
 *
 *   <dirname of SANDBOX_ROOTFS>/world/            the zygote's root
 *   <dirname of SANDBOX_ROOTFS>/world/slots/<n>/  slot n's root, for n below the build's count
 *
 * When that directory is there, is root-owned and writable by no one else, is made of hard links
 * of SANDBOX_ROOTFS itself (its dpkg status file is the same inode), and this instance can take
 * its lock (<world>.lock: one instance per prepared world), the service uses it instead of linking
 * new roots: it only adds what each root needs per instance (the runner at /sandbox, the /dev
 * nodes, /tmp made afresh for the slot's uid: directories and small files, in the writable layer).
 * A slot beyond the prepared count is linked into the prepared world at first use, as above (the
 * copy-up cost, once; reported in the seccomp finding). <files.dir>/root is then a symbolic link
 * to the prepared world, so the warm path's socket directory (SandboxFiles.warmDir) lies inside
 * the zygote's root either way. Each slot's /tmp is private to the slot and emptied after each run
 * exactly as for linked roots; a prepared world outlives the instance (the next instance of the
 * container resets every /tmp before its first use).
 */
import { execFile } from 'child_process';
import { chmodSync, chownSync, mkdirSync, promises as fs, rmdirSync, type Stats } from 'fs';
import * as path from 'path';
import { promisify } from 'util';
import type { Config } from '../../config';
import type { SandboxFiles } from '../files';
import { MIB } from '../limits';
import { holdLock, type HeldLock } from '../locks';
import type { RunnerPaths } from '../protocol';
import { emptyShallowTree, removeTree } from '../removeTree';
import { processesOfUid } from '../uidReaper';
import type { WatchedDir } from '../usageWatch';
import { disposeOf } from '../workRoot';

const execFileAsync = promisify(execFile);

/** Inside every root (the zygote's and each slot's). */
export const ROOT_RUNNER_DIR = '/sandbox/runner';
export const ROOT_POLICY_FILE = '/sandbox/seccomp-policy.json';
export const ROOT_WARM_DIR = '/sandbox/warm';
export const ROOT_WORKDIR = '/tmp';
/** Where the slots' roots are, inside the zygote's root. */
const SLOTS = 'slots';
/** The prepared world's name, next to SANDBOX_ROOTFS (sandbox-image/rootfs/world.sh makes it). */
export const PREPARED_WORLD = 'world';
/** A file of every Debian root: a prepared root is a hard-link copy of SANDBOX_ROOTFS when its copy is the same inode. */
const PROOF = 'var/lib/dpkg/status';

const DEVICES: Array<[name: string, mode: string, major: number, minor: number]> = [
  ['null', '666', 1, 3],
  ['zero', '666', 1, 5],
  ['urandom', '444', 1, 9],
  ['random', '444', 1, 8],
];

/** A run's paths inside its slot's root, on either path. No /proc: the root has none. */
export function slotRunnerPaths(): RunnerPaths {
  return { workdir: ROOT_WORKDIR, runnerDir: ROOT_RUNNER_DIR, policyFile: ROOT_POLICY_FILE, procPaths: [] };
}

/** How an instance's roots are made: linked at run time in its work directory, or prepared with the image. */
export interface SlotRootsSource {
  kind: 'linked' | 'prepared';
  /** Prepared: the world's path. */
  world?: string;
  /** Prepared: how many slots it holds. */
  preparedSlots?: number;
  /** Why the roots are what they are (the seccomp finding shows it). */
  detail: string;
}

export class SlotRoots {
  /** The zygote's root: <files.dir>/root, or the prepared world. */
  readonly root: string;
  private readonly made = new Map<number, Promise<void>>();
  private world: Promise<void> | undefined;
  /** False when mknod was refused: the roots have no /dev nodes. */
  devices = true;
  /** Slots beyond the prepared count that were linked at first use (each copies the root up once, in an image). */
  readonly linkedBeyond = new Set<number>();

  /**
   * Use SlotRoots.create, which looks for a prepared world. `world` and `lock`: the prepared world
   * this instance holds; without them the roots are linked in the work directory.
   */
  constructor(
    private readonly config: Config,
    private readonly files: SandboxFiles,
    readonly source: SlotRootsSource = { kind: 'linked', detail: 'linked at run time' },
    readonly lock?: HeldLock,
  ) {
    this.root = source.kind === 'prepared' && source.world ? source.world : path.join(files.dir, 'root');
  }

  /**
   * The prepared world next to SANDBOX_ROOTFS when it is there, sound and free; otherwise roots
   * linked at run time (the local and test behaviour). Never throws for a missing or unusable
   * prepared world: the reason is in `source.detail`.
   */
  static async create(config: Config, files: SandboxFiles): Promise<SlotRoots> {
    const world = preparedWorldOf(config.sandboxRootfs);
    const found = await checkPreparedWorld(config.sandboxRootfs, world);
    if (found.problem !== undefined) {
      return new SlotRoots(config, files, { kind: 'linked', detail: `linked at run time in ${files.dir}/root (${found.problem})` });
    }
    let lock: HeldLock | undefined;
    try {
      lock = await holdLock(`${world}.lock`);
    } catch (error) {
      return new SlotRoots(config, files, { kind: 'linked', detail: `linked at run time (the prepared roots ${world} could not be locked: ${(error as Error).message})` });
    }
    if (!lock) return new SlotRoots(config, files, { kind: 'linked', detail: `linked at run time (the prepared roots ${world} are held by another instance)` });
    lock.onLost = (reason) => process.stderr.write(`the lock of the prepared roots ${world} was lost (${reason}); another instance starting now could use them too\n`);
    try {
      // The warm path's socket directory, <files.dir>/root/sandbox/warm, must lie in the zygote's root.
      await fs.rm(path.join(files.dir, 'root'), { recursive: true, force: true });
      await fs.symlink(world, path.join(files.dir, 'root'));
    } catch (error) {
      await lock.release();
      return new SlotRoots(config, files, { kind: 'linked', detail: `linked at run time (${files.dir}/root could not point to the prepared roots: ${(error as Error).message})` });
    }
    const detail = `prepared with the image: ${world} and ${found.slots} slot roots in it (slots beyond them are linked at first use)`;
    return new SlotRoots(config, files, { kind: 'prepared', world, preparedSlots: found.slots, detail }, lock);
  }

  /** The zygote's root, made once (the slots live in it). */
  ensureWorld(): Promise<void> {
    this.world ??= (this.source.kind === 'prepared' ? this.furnish(this.root, undefined) : this.makeRoot(this.root, undefined)).then(() =>
      fs.mkdir(path.join(this.root, SLOTS), { mode: 0o711 }).catch((error: NodeJS.ErrnoException) => {
        if (error.code !== 'EEXIST' || this.source.kind !== 'prepared') throw error;
      }),
    );
    return this.world;
  }

  /** Slot n's root as the host sees it, and as the zygote does. */
  slotRoot(slot: number): string {
    return path.join(this.root, SLOTS, String(slot));
  }

  slotRootInWorld(slot: number): string {
    return `/${SLOTS}/${slot}`;
  }

  /** The slot's /tmp, watched by the usage sampler and held to SCRIPT_TMP_MB (a per-instance limit, as nsjail's /tmp is). */
  watchedTmp(slot: number): WatchedDir {
    return { path: path.join(this.slotRoot(slot), 'tmp'), maxBytes: this.config.scriptTmpMb * MIB };
  }

  /** Makes the slot's root the first time; resolves once it is there with an empty /tmp of uid's. */
  ensureSlot(slot: number, uid: number): Promise<void> {
    let made = this.made.get(slot);
    if (!made) {
      made = this.ensureWorld().then(() => this.makeSlot(slot, uid));
      made.catch(() => this.made.delete(slot)); // a later run tries again
      this.made.set(slot, made);
    }
    return made;
  }

  /**
   * After a run, once no process of its uid is left: the slot's /tmp removed (descriptor-relative,
   * any depth; quarantined if even that fails) and made again, empty. Never throws.
   */
  async resetTmp(slot: number, uid: number): Promise<void> {
    const tmp = this.watchedTmp(slot).path;
    // The common case, spawning nothing and without a thread-pool round trip: the run left a few
    // small things (its empty out/ at least), and its /tmp is made afresh at once. Anything else,
    // and any failure: removed whole below.
    // Only with no process of the uid left: emptyShallowTree goes by path, and a live process
    // could swap a directory for a symlink under it (the fallback is descriptor-relative).
    if (processesOfUid(uid).length === 0 && emptyShallowTree(tmp)) {
      try {
        freshTmp(tmp, uid, { replace: true });
        return;
      } catch {
        // removed whole below, and made again
      }
    }
    try {
      await disposeOf(this.config.workRoot, tmp);
      freshTmp(tmp, uid);
    } catch (error) {
      // The slot's next run finds no /tmp (its set-up fails visibly) until a reset succeeds.
      this.made.delete(slot);
      process.stderr.write(`resetting ${tmp} failed: ${(error as Error).message}\n`);
    }
  }

  /** Slot n's root: the prepared one (furnished), or a new hard-link copy. */
  private async makeSlot(slot: number, uid: number): Promise<void> {
    const dir = this.slotRoot(slot);
    if (this.source.kind === 'prepared' && slot < (this.source.preparedSlots ?? 0)) {
      // As checked at start-up, and still so: never a root that is not SANDBOX_ROOTFS's.
      const problem = await sameRoot(this.config.sandboxRootfs, dir);
      if (problem) throw new Error(`the prepared root of slot ${slot} is unusable: ${problem}`);
      await this.furnish(dir, uid);
      return;
    }
    if (this.source.kind === 'prepared' && !this.linkedBeyond.has(slot)) {
      this.linkedBeyond.add(slot);
      process.stderr.write(
        `slot ${slot} has no prepared root (the image prepared ${this.source.preparedSlots}; build it with a larger SANDBOX_SLOTS): linking one at first use, which copies the root up into the writable layer\n`,
      );
    }
    await this.makeRoot(dir, uid);
  }

  private async makeRoot(dir: string, uid: number | undefined): Promise<void> {
    await removeTree(dir); // a half-made root of an earlier attempt
    try {
      await execFileAsync('cp', ['-al', '--', this.config.sandboxRootfs, dir], { timeout: 120000 });
    } catch (error) {
      throw new Error(
        `making ${dir} as a hard-link copy of ${this.config.sandboxRootfs} failed (SANDBOX_WORK_ROOT must be on its file system): ${((error as { stderr?: string }).stderr || (error as Error).message).trim().slice(0, 300)}`,
        { cause: error },
      );
    }
    await this.furnish(dir, uid);
  }

  /**
   * What a root needs beyond SANDBOX_ROOTFS's files: the runner and the policy at /sandbox, the
   * /dev nodes, and (a slot's) an empty /tmp of its uid. Idempotent, so a prepared root that an
   * earlier instance furnished (or left a run's files in) is made as new.
   */
  private async furnish(dir: string, uid: number | undefined): Promise<void> {
    const sandbox = path.join(dir, 'sandbox');
    await removeTree(path.join(sandbox, 'runner'));
    await fs.mkdir(path.join(sandbox, 'runner'), { recursive: true, mode: 0o755 });
    await fs.chmod(sandbox, 0o755);
    for (const name of await fs.readdir(this.files.runnerDir)) {
      await fs.copyFile(path.join(this.files.runnerDir, name), path.join(sandbox, 'runner', name));
      await fs.chmod(path.join(sandbox, 'runner', name), 0o644);
    }
    // Never written in place: in a prepared root a file could be a hard link shared with another root.
    await fs.rm(path.join(sandbox, 'seccomp-policy.json'), { force: true });
    await fs.copyFile(this.files.policyFile, path.join(sandbox, 'seccomp-policy.json'));
    await fs.chmod(path.join(sandbox, 'seccomp-policy.json'), 0o644);
    await this.makeDevices(path.join(dir, 'dev'));
    if (uid === undefined) return;
    const tmp = path.join(dir, 'tmp');
    if (this.source.kind === 'prepared') {
      // The root's own /tmp, or what an earlier instance's run left in it.
      const disposal = await disposeOf(this.config.workRoot, tmp);
      if (disposal.outcome === 'left') throw new Error(`${tmp} could not be emptied: ${disposal.leftover.reason}`);
      freshTmp(tmp, uid);
    } else {
      freshTmp(tmp, uid, { replace: true }); // the root's own /tmp, empty
    }
  }

  private async makeDevices(dev: string): Promise<void> {
    if (!this.devices) return;
    for (const [name, mode, major, minor] of DEVICES) {
      try {
        await fs.rm(path.join(dev, name), { force: true }); // a prepared root's, from an earlier instance
        await execFileAsync('mknod', ['-m', mode, path.join(dev, name), 'c', String(major), String(minor)]);
      } catch {
        this.devices = false; // no CAP_MKNOD: no device nodes in any root
        for (const [other] of DEVICES) await fs.rm(path.join(dev, other), { force: true });
        return;
      }
    }
  }
}

/** Refuses seccomp mode where it cannot enter the sandbox's root: chroot and setuid need root. */
export function slotsUnusable(): string | undefined {
  return process.getuid?.() === 0 ? undefined : "seccomp mode needs the service to run as root (CAP_SYS_CHROOT, CAP_SETUID, CAP_SETGID) to enter the sandbox's root";
}

/** Where the image prepares seccomp mode's roots for SANDBOX_ROOTFS (sandbox-image/rootfs/world.sh). */
export function preparedWorldOf(rootfs: string): string {
  return path.join(path.dirname(rootfs), PREPARED_WORLD);
}

/**
 * Whether a prepared world can be used: there, a root-owned directory writable by no one else
 * (so is its slots/), a hard-link copy of SANDBOX_ROOTFS; and how many slot roots it holds (0, 1,
 * ...: counted while each is a sound copy).
 */
export async function checkPreparedWorld(rootfs: string, world: string): Promise<{ problem?: string; slots: number }> {
  let stat: Stats;
  try {
    stat = await fs.lstat(world);
  } catch {
    return { problem: `no prepared roots at ${world}`, slots: 0 };
  }
  const unsafe = (what: string, s: Stats) =>
    !s.isDirectory() ? `${what} is not a directory` : s.uid !== 0 ? `${what} is not root's` : (s.mode & 0o022) !== 0 ? `${what} is writable by others` : undefined;
  const problem = unsafe(world, stat) ?? (await sameRoot(rootfs, world));
  if (problem) return { problem: `the prepared roots are unusable: ${problem}`, slots: 0 };
  let slotsStat: Stats;
  try {
    slotsStat = await fs.lstat(path.join(world, SLOTS));
  } catch {
    return { slots: 0 };
  }
  const slotsProblem = unsafe(path.join(world, SLOTS), slotsStat);
  if (slotsProblem) return { problem: `the prepared roots are unusable: ${slotsProblem}`, slots: 0 };
  let slots = 0;
  while (!(await sameRoot(rootfs, path.join(world, SLOTS, String(slots))))) slots++;
  return { slots };
}

/** Why dir is not a hard-link copy of rootfs (undefined when it is): its PROOF file must be the same inode, and dir root's. */
async function sameRoot(rootfs: string, dir: string): Promise<string | undefined> {
  try {
    const [own, theirs, top] = await Promise.all([fs.lstat(path.join(rootfs, PROOF)), fs.lstat(path.join(dir, PROOF)), fs.lstat(dir)]);
    if (!top.isDirectory() || top.uid !== 0 || (top.mode & 0o022) !== 0) return `${dir} is not a root-owned directory closed to others`;
    if (own.dev !== theirs.dev || own.ino !== theirs.ino) return `${dir} is not a hard-link copy of ${rootfs} (its /${PROOF} is another file)`;
    return undefined;
  } catch (error) {
    return `${dir} is not a copy of ${rootfs}: ${(error as Error).message}`;
  }
}

/**
 * The slot's /tmp made (again): empty, 0700, the uid's. `replace`: the empty directory there is
 * removed first (the root's own /tmp, or one just emptied in place); one that is not empty (a
 * process created something meanwhile) makes it throw. Synchronous, as the single-syscall steps of
 * removeTree.ts: four syscalls, cheaper than four thread-pool round trips on the slot's turn-around.
 */
function freshTmp(tmp: string, uid: number, options: { replace?: boolean } = {}): void {
  if (options.replace) {
    try {
      rmdirSync(tmp);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
    }
  }
  mkdirSync(tmp, { mode: 0o700 });
  chownSync(tmp, uid, uid);
  chmodSync(tmp, 0o700);
}
