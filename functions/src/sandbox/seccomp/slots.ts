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
 */
import { execFile } from 'child_process';
import { promises as fs } from 'fs';
import * as path from 'path';
import { promisify } from 'util';
import type { Config } from '../../config';
import type { SandboxFiles } from '../files';
import { MIB } from '../limits';
import type { RunnerPaths } from '../protocol';
import { removeTree } from '../removeTree';
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

export class SlotRoots {
  /** The zygote's root. */
  readonly root: string;
  private readonly made = new Map<number, Promise<void>>();
  private world: Promise<void> | undefined;
  /** False when mknod was refused: the roots have no /dev nodes. */
  devices = true;

  constructor(
    private readonly config: Config,
    private readonly files: SandboxFiles,
  ) {
    this.root = path.join(files.dir, 'root');
  }

  /** The zygote's root, made once (the slots live in it). */
  ensureWorld(): Promise<void> {
    this.world ??= this.makeRoot(this.root, undefined).then(() => fs.mkdir(path.join(this.root, SLOTS), { mode: 0o711 }));
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
      made = this.ensureWorld().then(() => this.makeRoot(this.slotRoot(slot), uid));
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
    try {
      await disposeOf(this.config.workRoot, tmp);
      await this.freshTmp(tmp, uid);
    } catch (error) {
      // The slot's next run finds no /tmp (its set-up fails visibly) until a reset succeeds.
      this.made.delete(slot);
      process.stderr.write(`resetting ${tmp} failed: ${(error as Error).message}\n`);
    }
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
    const sandbox = path.join(dir, 'sandbox');
    await fs.mkdir(path.join(sandbox, 'runner'), { recursive: true, mode: 0o755 });
    await fs.chmod(sandbox, 0o755);
    for (const name of await fs.readdir(this.files.runnerDir)) {
      await fs.copyFile(path.join(this.files.runnerDir, name), path.join(sandbox, 'runner', name));
      await fs.chmod(path.join(sandbox, 'runner', name), 0o644);
    }
    await fs.copyFile(this.files.policyFile, path.join(sandbox, 'seccomp-policy.json'));
    await fs.chmod(path.join(sandbox, 'seccomp-policy.json'), 0o644);
    await this.makeDevices(path.join(dir, 'dev'));
    if (uid !== undefined) await this.freshTmp(path.join(dir, 'tmp'), uid, true);
  }

  private async makeDevices(dev: string): Promise<void> {
    if (!this.devices) return;
    for (const [name, mode, major, minor] of DEVICES) {
      try {
        await execFileAsync('mknod', ['-m', mode, path.join(dev, name), 'c', String(major), String(minor)]);
      } catch {
        this.devices = false; // no CAP_MKNOD: no device nodes in any root
        for (const [other] of DEVICES) await fs.rm(path.join(dev, other), { force: true });
        return;
      }
    }
  }

  private async freshTmp(tmp: string, uid: number, replace = false): Promise<void> {
    if (replace) await fs.rmdir(tmp).catch(() => undefined); // the root's own, empty /tmp
    await fs.mkdir(tmp, { mode: 0o700 });
    await fs.chown(tmp, uid, uid);
    await fs.chmod(tmp, 0o700);
  }
}

/** Refuses seccomp mode where it cannot enter the sandbox's root: chroot and setuid need root. */
export function slotsUnusable(): string | undefined {
  return process.getuid?.() === 0 ? undefined : "seccomp mode needs the service to run as root (CAP_SYS_CHROOT, CAP_SETUID, CAP_SETGID) to enter the sandbox's root";
}
