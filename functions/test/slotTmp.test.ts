/**
 * A seccomp slot's /tmp after a run (slots.ts, resetTmp; removeTree.ts, emptyShallowTree): the
 * fast path goes by path, so it is taken only when no process of the run's uid is left, and it
 * reads a directory one entry at a time, never listing a huge one whole.
 *
 * The race a live process could win (swapping a directory for a symlink between the listing and
 * the walk into it) is made deterministic here: the directory read is intercepted, and the swap
 * done at that very moment, as the process would do it.
 */
import { spawn, type ChildProcess } from 'child_process';
import fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import type { Config } from '../src/config';
import type { SandboxFiles } from '../src/sandbox/files';
import { emptyShallowTree, removeTree } from '../src/sandbox/removeTree';
import { SlotRoots } from '../src/sandbox/seccomp/slots';
import { uidBase } from './security/helpers';

const asRoot = process.getuid?.() === 0;
if (!asRoot) process.stderr.write('\n*** SKIPPING slot /tmp tests: they need root (a slot /tmp belongs to its run uid) ***\n\n');
const maybe = asRoot ? describe : describe.skip;

/** A SlotRoots over a bare slot directory (resetTmp needs only the slot's /tmp and the work root). */
function slotRootsIn(base: string): { roots: SlotRoots; tmp: string } {
  const workRoot = path.join(base, 'work');
  fs.mkdirSync(workRoot);
  const config = { workRoot, scriptTmpMb: 64 } as unknown as Config;
  const roots = new SlotRoots(config, { dir: path.join(base, 'files') } as unknown as SandboxFiles);
  const tmp = roots.watchedTmp(0).path;
  fs.mkdirSync(tmp, { recursive: true, mode: 0o700 });
  return { roots, tmp };
}

function fillTmp(tmp: string, uid: number): void {
  fs.mkdirSync(path.join(tmp, 'a'));
  fs.writeFileSync(path.join(tmp, 'a', 'file'), 'x');
  fs.writeFileSync(path.join(tmp, 'top'), 'x');
  for (const entry of ['', 'a', 'a/file', 'top']) fs.lchownSync(path.join(tmp, entry), uid, uid);
}

/** Every directory read of `target`, whole (readdirSync) or one entry at a time (opendirSync), and how many entries each gave. */
function watchReads(target: (dir: string) => boolean, onRead?: (dir: string) => void): { reads: Array<{ dir: string; how: string; entries: number }>; restore: () => void } {
  const reads: Array<{ dir: string; how: string; entries: number }> = [];
  const realReaddir = fs.readdirSync;
  const realOpendir = fs.opendirSync;
  const readdir = jest.spyOn(fs, 'readdirSync').mockImplementation(((dir: fs.PathLike, options?: unknown) => {
    const name = String(dir);
    if (target(name)) onRead?.(name);
    const found = (realReaddir as (d: fs.PathLike, o?: unknown) => unknown[])(dir, options);
    if (target(name)) reads.push({ dir: name, how: 'readdirSync', entries: found.length });
    return found;
  }) as typeof fs.readdirSync);
  const opendir = jest.spyOn(fs, 'opendirSync').mockImplementation(((dir: fs.PathLike, options?: fs.OpenDirOptions) => {
    const name = String(dir);
    if (target(name)) onRead?.(name);
    const handle = realOpendir(dir, options);
    if (!target(name)) return handle;
    const read = { dir: name, how: 'opendirSync', entries: 0 };
    reads.push(read);
    const readSync = handle.readSync.bind(handle);
    handle.readSync = () => {
      const entry = readSync();
      if (entry) read.entries++;
      return entry;
    };
    return handle;
  }) as typeof fs.opendirSync);
  return {
    reads,
    restore: () => {
      readdir.mockRestore();
      opendir.mockRestore();
    },
  };
}

maybe("a slot's /tmp is reset by path only when no process of its uid is left", () => {
  let base: string;
  let holder: ChildProcess | undefined;
  beforeEach(() => {
    base = fs.mkdtempSync(path.join(os.tmpdir(), 'pyexec-slot-tmp-'));
  });
  afterEach(async () => {
    if (holder && holder.exitCode === null && holder.signalCode === null) {
      const gone = new Promise((resolve) => holder!.once('exit', resolve));
      holder.kill('SIGKILL');
      await gone;
    }
    holder = undefined;
    fs.rmSync(base, { recursive: true, force: true });
  });

  test('a live process of the uid that swaps a directory for a symlink mid-walk makes root remove nothing outside /tmp', async () => {
    const uid = uidBase();
    const { roots, tmp } = slotRootsIn(base);
    fillTmp(tmp, uid);
    // What a run must never make root delete: a directory outside the slot, its file.
    const victim = path.join(base, 'victim');
    fs.mkdirSync(victim);
    fs.writeFileSync(path.join(victim, 'precious'), 'keep me');
    // A process of the run's uid still alive, holding a file of /tmp open, its working directory there.
    holder = spawn('/bin/sh', ['-c', 'exec 3>held; exec sleep 1000'], { cwd: tmp, uid, gid: uid, stdio: 'ignore' });
    await new Promise((resolve) => holder!.once('spawn', resolve));
    while (!fs.existsSync(path.join(tmp, 'held'))) await new Promise((resolve) => setTimeout(resolve, 10));

    // The moment a walk by path reads tmp/a, the process swaps it for a symlink to the victim.
    const inner = path.join(tmp, 'a');
    let swapped = false;
    const watch = watchReads(
      (dir) => dir === inner,
      () => {
        if (swapped) return;
        swapped = true;
        fs.renameSync(inner, path.join(tmp, 'a-moved'));
        fs.symlinkSync(victim, inner);
      },
    );
    try {
      await roots.resetTmp(0, uid);
    } finally {
      watch.restore();
    }
    expect(fs.readFileSync(path.join(victim, 'precious'), 'utf8')).toBe('keep me');
    // And the slot's next run finds its /tmp new and empty, the uid's, 0700: nothing of the last run.
    expect(fs.readdirSync(tmp)).toEqual([]);
    const stat = fs.lstatSync(tmp);
    expect({ dir: stat.isDirectory(), uid: stat.uid, mode: stat.mode & 0o777 }).toEqual({ dir: true, uid, mode: 0o700 });
  });

  test('with no process of the uid left, the same /tmp is emptied in place (the fast path) and made afresh', async () => {
    const uid = uidBase();
    const { roots, tmp } = slotRootsIn(base);
    fillTmp(tmp, uid);
    const watch = watchReads((dir) => dir.startsWith(tmp));
    try {
      await roots.resetTmp(0, uid);
    } finally {
      watch.restore();
    }
    // Walked by path, into a: the fast path ran (the other removes /tmp with rm, unseen here).
    expect(watch.reads.map((read) => path.relative(tmp, read.dir))).toEqual(['', 'a']);
    expect(fs.readdirSync(tmp)).toEqual([]);
    const stat = fs.lstatSync(tmp);
    expect({ uid: stat.uid, mode: stat.mode & 0o777 }).toEqual({ uid, mode: 0o700 });
  });
});

maybe('a directory of very many entries', () => {
  const ENTRIES = 100_000;
  let base: string;
  beforeAll(() => {
    base = fs.mkdtempSync(path.join(os.tmpdir(), 'pyexec-slot-tmp-'));
  });
  afterAll(() => {
    fs.rmSync(base, { recursive: true, force: true });
  });

  test('is never listed whole by the fast path, and a slot /tmp holding it is emptied correctly', async () => {
    const uid = uidBase();
    const { roots, tmp } = slotRootsIn(base);
    fs.chownSync(tmp, uid, uid);
    for (let i = 0; i < ENTRIES; i++) fs.closeSync(fs.openSync(path.join(tmp, `f${i}`), 'w'));

    // The fast path alone: it gives up past its budget of entries, having read only those.
    const watch = watchReads((dir) => dir === tmp);
    let fast: boolean;
    try {
      fast = emptyShallowTree(tmp);
    } finally {
      watch.restore();
    }
    expect(fast).toBe(false);
    expect(watch.reads.filter((read) => read.how === 'readdirSync')).toEqual([]);
    expect(watch.reads.reduce((sum, read) => sum + read.entries, 0)).toBeLessThanOrEqual(65);

    // The whole reset: every entry gone (the few the fast path removed and the rest), /tmp new.
    await roots.resetTmp(0, uid);
    expect(fs.readdirSync(tmp)).toEqual([]);
    const stat = fs.lstatSync(tmp);
    expect({ uid: stat.uid, mode: stat.mode & 0o777 }).toEqual({ uid, mode: 0o700 });
  });

  test('is removed by removeTree without being listed whole (its flat fast path reads at most its budget)', async () => {
    const dir = path.join(base, 'flat');
    fs.mkdirSync(dir);
    for (let i = 0; i < ENTRIES; i++) fs.closeSync(fs.openSync(path.join(dir, `f${i}`), 'w'));
    const watch = watchReads((at) => at === dir);
    let removal;
    try {
      removal = await removeTree(dir);
    } finally {
      watch.restore();
    }
    expect(removal).toEqual({ removed: true });
    expect(fs.existsSync(dir)).toBe(false);
    expect(watch.reads.filter((read) => read.how === 'readdirSync')).toEqual([]);
    for (const read of watch.reads) expect(read.entries).toBeLessThanOrEqual(65);
  });
});
