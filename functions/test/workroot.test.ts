/**
 * Where the service keeps its files: the runner is staged out of the checkout (which may be closed
 * to the run uids), and the work root keeps nothing of an instance once it is gone, whatever a run
 * or a killed instance left there: trees deeper than PATH_MAX, 000 modes, symlinks out, files that
 * cannot be removed (those are quarantined, never a reason to fail).
 */
import { spawnSync } from 'child_process';
import { existsSync, promises as fs, readdirSync, readFileSync } from 'fs';
import * as os from 'os';
import * as path from 'path';
import { removeTree } from '../src/sandbox/removeTree';
import { removeRunDir } from '../src/sandbox/workRoot';
import { execute, py, REPO, startService, type RunningService } from './helpers/service';

const isRoot = process.getuid?.() === 0;

/**
 * depth nested directories named "d" under dir, made by Python stepping down with chdir (each
 * mkdir and chdir relative: the absolute path of the bottom is far longer than PATH_MAX).
 * bottom: Python lines run at the bottom (the current directory).
 */
function makeDeepTree(dir: string, depth: number, bottom = ''): void {
  const code = ['import os, sys', 'os.chdir(sys.argv[1])', 'for _ in range(int(sys.argv[2])):', '    os.mkdir("d")', '    os.chdir("d")', 'open("bottom.txt", "w").write("x" * 4096)', bottom].join(
    '\n',
  );
  const made = spawnSync('python3', ['-c', code, dir, String(depth)], { encoding: 'utf8' });
  if (made.status !== 0) throw new Error(`making the deep tree failed: ${made.stderr}`);
}

/** Test clean-up that itself survives deep trees (rm walks descriptor-relative). */
function rmrf(target: string): void {
  spawnSync('rm', ['-rf', '--one-file-system', '--', target]);
}

/**
 * Something in dir that the service (root) cannot remove, made the way this machine allows:
 * an immutable file (chattr +i: needs root and a filesystem with the flag, e.g. ext4, xfs,
 * btrfs), else a tmpfs mounted on a subdirectory (needs root; the remover never enters a tree
 * holding a mount point). Returns how to undo it wherever the entry was moved to, or undefined
 * (not root, or neither works here).
 */
function makeUnremovable(dir: string): { kind: string; undo: (movedTo: string) => void } | undefined {
  if (!isRoot) return undefined;
  const file = path.join(dir, 'locked');
  spawnSync('sh', ['-c', 'echo keep > "$1"', 'sh', file]);
  if (spawnSync('chattr', ['+i', file]).status === 0) {
    const check = spawnSync('rm', ['-f', file]);
    if (check.status !== 0 && existsSync(file)) {
      return { kind: 'immutable file (chattr +i)', undo: (movedTo) => void spawnSync('chattr', ['-i', path.join(movedTo, 'locked')]) };
    }
  }
  rmrf(file);
  const mountPoint = path.join(dir, 'mnt');
  spawnSync('mkdir', [mountPoint]);
  if (spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'none', mountPoint]).status === 0) {
    return { kind: 'mount point (tmpfs)', undo: (movedTo) => void spawnSync('umount', [path.join(movedTo, 'mnt')]) };
  }
  rmrf(mountPoint);
  return undefined;
}

test('a checkout in a 0700 directory still runs scripts (the runner is staged)', async () => {
  const closed = await fs.mkdtemp(path.join(os.tmpdir(), 'closed-checkout-'));
  const workRoot = await fs.mkdtemp(path.join(os.tmpdir(), 'work-root-'));
  try {
    await fs.chmod(closed, 0o700);
    await fs.cp(path.join(REPO, 'sandbox-image'), path.join(closed, 'sandbox-image'), { recursive: true });
    const service = await startService({ SANDBOX_DIR: path.join(closed, 'sandbox-image'), SANDBOX_WORK_ROOT: workRoot }, 'seccomp');
    try {
      const answer = await execute(service, py('def main():', '    return "ran"'));
      expect(answer.body.result).toBe('ran');
    } finally {
      await service.stop();
    }
  } finally {
    await fs.rm(closed, { recursive: true, force: true });
    await fs.rm(workRoot, { recursive: true, force: true });
  }
});

test("the work root keeps nothing of an instance: its own entries go at exit, a killed one's at the next start", async () => {
  const workRoot = await fs.mkdtemp(path.join(os.tmpdir(), 'work-root-'));
  await fs.chmod(workRoot, 0o711);
  try {
    // A pid that cannot be alive (above the kernel's pid_max), as if its instance was SIGKILLed.
    const stale = path.join(workRoot, 'run-99999999-0-abcdef');
    const unrelated = path.join(workRoot, 'keep-me');
    await fs.mkdir(stale);
    await fs.mkdir(unrelated);
    const service = await startService({ SANDBOX_WORK_ROOT: workRoot }, 'seccomp');
    expect(existsSync(stale)).toBe(false);
    // Its own work directory (instance-<random>, sandbox/instance.ts) holds the staged runner.
    const own = (await fs.readdir(workRoot)).filter((entry) => entry.startsWith('instance-'));
    expect(own).toHaveLength(1);
    expect(existsSync(path.join(workRoot, own[0], 'sandbox', 'runner', 'runner.py'))).toBe(true);
    await execute(service, py('def main():', '    return 1'));
    expect(await service.stop('SIGTERM')).toBe(0);
    expect(await fs.readdir(workRoot)).toEqual(['keep-me']);
  } finally {
    await fs.rm(workRoot, { recursive: true, force: true });
  }
});

describe('the remover (removeTree)', () => {
  test('removes a 5,000-level tree with 000-mode directories and files, and symlinks out without touching their targets', async () => {
    const base = await fs.mkdtemp(path.join(os.tmpdir(), 'remove-tree-'));
    const outside = await fs.mkdtemp(path.join(os.tmpdir(), 'remove-tree-outside-'));
    try {
      await fs.writeFile(path.join(outside, 'precious'), 'keep');
      // What the service did before: Node's path-based removal gives up past PATH_MAX.
      const control = path.join(base, 'control');
      await fs.mkdir(control);
      makeDeepTree(control, 3000);
      await expect(fs.rm(control, { recursive: true, force: true })).rejects.toMatchObject({ code: 'ENAMETOOLONG' });

      const tree = path.join(base, 'run-tree');
      await fs.mkdir(tree);
      // At the bottom: a symlink to the outside directory, a 000 directory holding a 000 file.
      makeDeepTree(
        tree,
        5000,
        [`os.symlink(${JSON.stringify(outside)}, "out")`, 'os.mkdir("closed")', 'open("closed/f", "w").write("x")', 'os.chmod("closed/f", 0)', 'os.chmod("closed", 0)'].join('\n'),
      );
      await fs.symlink(outside, path.join(tree, 'out-dir'));
      await fs.symlink(path.join(outside, 'precious'), path.join(tree, 'out-file'));
      await fs.mkdir(path.join(tree, 'closed'));
      await fs.writeFile(path.join(tree, 'closed', 'f'), 'x');
      await fs.chmod(path.join(tree, 'closed', 'f'), 0);
      await fs.chmod(path.join(tree, 'closed'), 0);
      expect(await removeTree(tree)).toEqual({ removed: true });
      expect(existsSync(tree)).toBe(false);
      expect(readFileSync(path.join(outside, 'precious'), 'utf8')).toBe('keep');
      expect(await fs.readdir(outside)).toEqual(['precious']);

      // A symlink given as the target itself: the link goes, never what it points to.
      const link = path.join(base, 'run-link');
      await fs.symlink(outside, link);
      expect(await removeTree(link)).toEqual({ removed: true });
      expect(readFileSync(path.join(outside, 'precious'), 'utf8')).toBe('keep');
      // A directory of files and symlinks only (removed without rm): the links go, not their targets.
      const flat = path.join(base, 'run-flat');
      await fs.mkdir(flat);
      await fs.writeFile(path.join(flat, 'f'), 'x');
      await fs.chmod(path.join(flat, 'f'), 0);
      await fs.symlink(outside, path.join(flat, 'out-dir'));
      await fs.symlink(path.join(outside, 'precious'), path.join(flat, 'out-file'));
      expect(await removeTree(flat)).toEqual({ removed: true });
      expect(existsSync(flat)).toBe(false);
      expect(await fs.readdir(outside)).toEqual(['precious']);
      expect(readFileSync(path.join(outside, 'precious'), 'utf8')).toBe('keep');
      // Nothing there: nothing to do.
      expect(await removeTree(path.join(base, 'absent'))).toEqual({ removed: true });
    } finally {
      rmrf(base);
      rmrf(outside);
    }
  });

  test('a 000 tree of its own uid is removed without root too (chmod, then rm)', async () => {
    if (!isRoot) {
      // Then the test above already ran without root.
      return;
    }
    const nobody = 65534;
    const base = await fs.mkdtemp(path.join(os.tmpdir(), 'remove-tree-nonroot-'));
    try {
      await fs.chown(base, nobody, nobody);
      const removeTreeJs = path.join(REPO, 'functions/build/sandbox/removeTree.js');
      const script = `
        const fs = require('fs');
        let removeTree;
        try {
          ({ removeTree } = require(${JSON.stringify(removeTreeJs)}));
        } catch {
          process.stdout.write('"unreadable"');
          process.exit(0);
        }
        const tree = ${JSON.stringify(path.join(base, 'tree'))};
        fs.mkdirSync(tree + '/a/b/c', { recursive: true });
        fs.writeFileSync(tree + '/a/b/c/f', 'x');
        fs.chmodSync(tree + '/a/b/c/f', 0);
        fs.chmodSync(tree + '/a/b/c', 0);
        fs.chmodSync(tree + '/a', 0);
        removeTree(tree).then((result) => process.stdout.write(JSON.stringify(result)));
      `;
      const ran = spawnSync(process.execPath, ['-e', script], { uid: nobody, gid: nobody, encoding: 'utf8' });
      expect(ran.stderr).toBe('');
      if (JSON.parse(ran.stdout) === 'unreadable') {
        process.stderr.write(`\n*** SKIPPING the non-root check of the remover: uid ${nobody} cannot read ${removeTreeJs} (the checkout is closed to it). ***\n\n`);
        return;
      }
      expect(JSON.parse(ran.stdout)).toEqual({ removed: true });
      expect(await fs.readdir(base)).toEqual([]);
    } finally {
      rmrf(base);
    }
  });

  test('never enters a tree holding a mount point, even of the same filesystem (rm --one-file-system would)', async () => {
    if (!isRoot) return;
    const base = await fs.mkdtemp(path.join(os.tmpdir(), 'remove-tree-mount-'));
    const source = await fs.mkdtemp(path.join(os.tmpdir(), 'remove-tree-bound-'));
    const mountPoint = path.join(base, 'tree', 'sub', 'mnt');
    let mounted = false;
    try {
      await fs.writeFile(path.join(source, 'precious'), 'keep');
      await fs.mkdir(mountPoint, { recursive: true });
      mounted = spawnSync('mount', ['--bind', source, mountPoint]).status === 0;
      if (!mounted) {
        process.stderr.write('\n*** SKIPPING the bind-mount check of the remover: mount --bind is not permitted here. ***\n\n');
        return;
      }
      const result = await removeTree(path.join(base, 'tree'));
      expect(result.removed).toBe(false);
      expect(result.reason).toMatch(/mount point/);
      expect(readFileSync(path.join(source, 'precious'), 'utf8')).toBe('keep');
      spawnSync('umount', [mountPoint]);
      mounted = false;
      expect(await removeTree(path.join(base, 'tree'))).toEqual({ removed: true });

      // The directory itself a mount point (of files only, the case removed without rm).
      const flat = path.join(base, 'flat');
      await fs.mkdir(flat);
      mounted = spawnSync('mount', ['--bind', source, flat]).status === 0;
      expect(mounted).toBe(true);
      expect((await removeTree(flat)).removed).toBe(false);
      expect(readFileSync(path.join(source, 'precious'), 'utf8')).toBe('keep');
      spawnSync('umount', [flat]);
      mounted = false;
    } finally {
      if (mounted) spawnSync('umount', [mountPoint]);
      if (mounted) spawnSync('umount', [path.join(base, 'flat')]);
      rmrf(base);
      rmrf(source);
    }
  });

  test('removeRunDir never throws: a deep tree goes, what cannot be removed is quarantined in the work root', async () => {
    const workRoot = await fs.mkdtemp(path.join(os.tmpdir(), 'work-root-'));
    let undo: ((movedTo: string) => void) | undefined;
    let quarantined: string | undefined;
    try {
      const deep = path.join(workRoot, `run-${process.pid}-0-deep`);
      await fs.mkdir(deep);
      makeDeepTree(deep, 3000);
      await removeRunDir(deep);
      expect(existsSync(deep)).toBe(false);

      const stuck = path.join(workRoot, `run-${process.pid}-1-stuck`);
      await fs.mkdir(stuck);
      const unremovable = makeUnremovable(stuck);
      if (!unremovable) {
        process.stderr.write('\n*** SKIPPING the quarantine check of removeRunDir: nothing can be made unremovable here (not root, or neither chattr +i nor a tmpfs mount works). ***\n\n');
        return;
      }
      undo = unremovable.undo;
      await removeRunDir(stuck);
      expect(existsSync(stuck)).toBe(false);
      const held = await fs.readdir(path.join(workRoot, 'quarantine'));
      expect(held).toHaveLength(1);
      expect(held[0]).toMatch(new RegExp(`^run-${process.pid}-1-stuck-\\d{8}T\\d{9}Z$`));
      quarantined = path.join(workRoot, 'quarantine', held[0]);
      expect((await fs.stat(path.join(workRoot, 'quarantine'))).mode & 0o777).toBe(0o700);
    } finally {
      if (undo && quarantined) undo(quarantined);
      rmrf(workRoot);
    }
  });
});

describe('start-up and runs against what was left', () => {
  test("the service starts whatever a killed instance left: a deep tree, something unremovable (quarantined and logged), a dead instance's entries", async () => {
    const workRoot = await fs.mkdtemp(path.join(os.tmpdir(), 'work-root-'));
    await fs.chmod(workRoot, 0o711);
    let undo: ((movedTo: string) => void) | undefined;
    let stuckMovedTo: string | undefined;
    let service: RunningService | undefined;
    try {
      // Pids above the kernel's pid_max: their instances are surely gone.
      const deep = path.join(workRoot, 'run-99999999-0-deep');
      await fs.mkdir(deep);
      makeDeepTree(deep, 3000);
      const stuck = path.join(workRoot, 'run-99999998-1-stuck');
      await fs.mkdir(stuck);
      const unremovable = makeUnremovable(stuck);
      if (unremovable) {
        undo = unremovable.undo;
        process.stderr.write(`start-up test: the unremovable entry holds: ${unremovable.kind}\n`);
      } else process.stderr.write('\n*** The start-up test runs without its unremovable entry: not root, or neither chattr +i nor a tmpfs mount works here. ***\n\n');
      const staged = path.join(workRoot, 'sandbox-99999997');
      await fs.mkdir(path.join(staged, 'runner'), { recursive: true });
      await fs.writeFile(path.join(staged, 'runner', 'runner.py'), '# stale\n');
      const warm = path.join(workRoot, 'warm-99999997');
      await fs.mkdir(warm);
      await fs.mkdir(path.join(workRoot, 'keep-me'));

      service = await startService({ SANDBOX_WORK_ROOT: workRoot }, 'seccomp');
      const answer = await execute(service, py('def main():', '    return "ran"'));
      expect(answer.status).toBe(200);
      expect(answer.body.result).toBe('ran');

      for (const gone of [deep, staged, warm]) expect(existsSync(gone)).toBe(false);
      const entries = service.logEntries();
      const cleaned = entries.find((entry) => entry.event === 'work_root_cleaned');
      expect(cleaned).toMatchObject({ severity: 'INFO', work_root: workRoot, removed: 3, quarantined: unremovable ? 1 : 0, left: 0 });
      expect([...cleaned!.removed_entries].sort()).toEqual(['run-99999999-0-deep', 'sandbox-99999997', 'warm-99999997']);
      const warnings = entries.filter((entry) => entry.event === 'work_root_quarantined');
      if (unremovable) {
        expect(existsSync(stuck)).toBe(false);
        expect(warnings).toHaveLength(1);
        expect(warnings[0]).toMatchObject({ severity: 'WARNING', entry: 'run-99999998-1-stuck' });
        expect(warnings[0].reason).toEqual(expect.any(String));
        stuckMovedTo = warnings[0].quarantined_as;
        expect(path.dirname(stuckMovedTo!)).toBe(path.join(workRoot, 'quarantine'));
        expect(existsSync(stuckMovedTo!)).toBe(true);
      } else {
        expect(warnings).toHaveLength(0);
      }

      expect(await service.stop('SIGTERM')).toBe(0);
      service = undefined;
      expect((await fs.readdir(workRoot)).sort()).toEqual(unremovable ? ['keep-me', 'quarantine'] : ['keep-me']);
    } finally {
      if (service) await service.stop('SIGKILL');
      if (undo && stuckMovedTo) undo(stuckMovedTo);
      else if (undo) undo(path.join(workRoot, 'run-99999998-1-stuck'));
      rmrf(workRoot);
    }
  });

  // This file runs in the "cold" jest project only; the warm path is started here too (as the
  // "warm" project would), since it removes run directories through the same code.
  for (const runPath of ['cold', 'warm'] as const) {
    test(`a script that nests 3,000 directories in its working directory is answered normally, and its directory is removed (seccomp, ${runPath} path)`, async () => {
      const workRoot = await fs.mkdtemp(path.join(os.tmpdir(), 'work-root-'));
      await fs.chmod(workRoot, 0o711);
      const previous = process.env.TEST_SANDBOX_PATH;
      let service: RunningService | undefined;
      try {
        process.env.TEST_SANDBOX_PATH = runPath;
        try {
          service = await startService({ SANDBOX_WORK_ROOT: workRoot }, 'seccomp');
        } finally {
          process.env.TEST_SANDBOX_PATH = previous;
        }
        const answer = await execute(
          service,
          py(
            'import os',
            'def main():',
            '    start = os.getcwd()',
            '    for _ in range(30):',
            '        step = os.path.join(*["d"] * 100)',
            '        os.makedirs(step)',
            '        os.chdir(step)',
            '    with open("bottom.txt", "w") as f:',
            '        f.write("x" * 4096)',
            '    os.chdir(start)',
            '    return {"depth": 3000, "dir": start}',
          ),
        );
        expect(answer.status).toBe(200);
        expect(answer.body.result.depth).toBe(3000);
        // The run's directory is /tmp in its slot's own root (seccomp/slots.ts), emptied after the
        // run's answer (off its path): every slot's /tmp under the instance's directory is empty
        // again soon after. Polled; jest's timeout is the only bound.
        expect(answer.body.result.dir).toBe('/tmp');
        const slotTmps = (await fs.readdir(workRoot))
          .filter((entry) => entry.startsWith('instance-'))
          .flatMap((instance) => {
            const slots = path.join(workRoot, instance, 'sandbox', 'root', 'slots');
            return existsSync(slots) ? readdirSync(slots).map((slot) => path.join(slots, slot, 'tmp')) : [];
          });
        expect(slotTmps.length).toBeGreaterThan(0);
        const contents = (tmp: string): string[] | string => {
          try {
            return readdirSync(tmp);
          } catch (error) {
            return (error as NodeJS.ErrnoException).code ?? 'error'; // between removal and remaking
          }
        };
        while (!slotTmps.every((tmp) => Array.isArray(contents(tmp)) && contents(tmp).length === 0)) await new Promise((r) => setTimeout(r, 50));
        for (const tmp of slotTmps) expect([tmp, contents(tmp)]).toEqual([tmp, []]);
        expect(existsSync(path.join(workRoot, 'quarantine'))).toBe(false);
        // The next run of the same slot is unaffected.
        const next = await execute(service, py('def main():', '    return 2'));
        expect(next.status).toBe(200);
        expect(next.body.result).toBe(2);
        expect(await service.stop('SIGTERM')).toBe(0);
        service = undefined;
        expect(await fs.readdir(workRoot)).toEqual([]);
      } finally {
        if (service) await service.stop('SIGKILL');
        rmrf(workRoot);
      }
    });
  }
});
