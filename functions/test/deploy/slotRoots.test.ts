/**
 * Seccomp mode's prepared slot roots (the container image's: sandbox-image/rootfs/world.sh in the
 * Dockerfile's rootfs-build stage; functions/src/sandbox/seccomp/slots.ts uses them). No Docker
 * engine here, so the same script is run on a host directory and the service's code is pointed at
 * it: first SlotRoots itself on a small stand-in root (every branch: used, refused, held by another
 * instance, a slot beyond the prepared ones), then the real service over HTTP on a hard-link copy
 * of the real sandbox root with a prepared world beside it, cold and warm. As root only (chown,
 * mknod, chroot): skipped loudly otherwise.
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { loadConfig, type Config } from '../../src/config';
import { stageSandboxFiles, type SandboxFiles } from '../../src/sandbox/files';
import { checkPreparedWorld, PREPARED_WORLD, SlotRoots } from '../../src/sandbox/seccomp/slots';
import { execute, py, request, startService } from '../helpers/service';
import { REPO } from './helpers';

const WORLD_SH = path.join(REPO, 'sandbox-image', 'rootfs', 'world.sh');
const REAL_ROOT = '/var/cache/pyexec-rootfs/current/root';
const isRoot = process.getuid?.() === 0;
if (!isRoot) process.stderr.write('\n*** SKIPPING the prepared slot root tests: they need root (chown, mknod, chroot). ***\n\n');
const asRoot = isRoot ? describe : describe.skip;
const realRootBuilt = fs.existsSync(path.join(REAL_ROOT, 'usr', 'bin', 'python3'));
if (isRoot && !realRootBuilt) process.stderr.write(`\n*** SKIPPING the service tests on prepared roots: no sandbox root at ${REAL_ROOT}. ***\n\n`);
const withRealRoot = isRoot && realRootBuilt ? describe : describe.skip;

function worldSh(root: string, slots: number): string {
  const result = spawnSync('bash', [WORLD_SH, root, String(slots)], { encoding: 'utf8' });
  if (result.status !== 0) throw new Error(`world.sh failed: ${result.stderr}`);
  return result.stdout.trim();
}

const inode = (file: string) => fs.lstatSync(file).ino;

asRoot('SlotRoots with a prepared world (a stand-in root)', () => {
  const UID = 3_900_000 + Math.floor(Math.random() * 1000) * 16;
  let dir: string;
  let root: string;
  let config: Config;
  const made: SlotRoots[] = [];

  async function create(): Promise<{ slots: SlotRoots; files: SandboxFiles }> {
    const files = await stageSandboxFiles(config);
    const slots = await SlotRoots.create(config, files);
    made.push(slots);
    return { slots, files };
  }

  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'slot-roots-'));
    fs.chmodSync(dir, 0o755);
    root = path.join(dir, 'root');
    for (const sub of ['var/lib/dpkg', 'usr/bin', 'tmp', 'dev', 'etc']) fs.mkdirSync(path.join(root, sub), { recursive: true, mode: 0o755 });
    fs.writeFileSync(path.join(root, 'var/lib/dpkg/status'), 'Package: base-files\n');
    fs.writeFileSync(path.join(root, 'usr/bin/python3'), '');
    fs.writeFileSync(path.join(root, 'etc/hostname'), 'sandbox\n');
    config = loadConfig({ SANDBOX_ROOTFS: root, SANDBOX_WORK_ROOT: path.join(dir, 'work'), SANDBOX_UID_BASE: String(UID) });
  });
  afterAll(async () => {
    for (const slots of made) await slots.lock?.release();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  test('without a world next to SANDBOX_ROOTFS: roots are linked in the work directory, as on hosts', async () => {
    const { slots, files } = await create();
    expect(slots.source).toMatchObject({ kind: 'linked', detail: expect.stringContaining(`no prepared roots at ${path.join(dir, PREPARED_WORLD)}`) });
    expect(slots.root).toBe(path.join(files.dir, 'root'));
    await slots.ensureSlot(0, UID);
    expect(fs.lstatSync(path.join(files.dir, 'root')).isDirectory()).toBe(true);
    expect(inode(path.join(files.dir, 'root', 'slots', '0', 'usr/bin/python3'))).toBe(inode(path.join(root, 'usr/bin/python3')));
    await slots.lock?.release();
  });

  test('world.sh makes the zygote root and SLOTS slot roots of hard links, beside the root', () => {
    const world = worldSh(root, 2);
    expect(world).toBe(path.join(dir, PREPARED_WORLD));
    for (const r of [world, path.join(world, 'slots/0'), path.join(world, 'slots/1')]) {
      expect(inode(path.join(r, 'usr/bin/python3'))).toBe(inode(path.join(root, 'usr/bin/python3')));
    }
    expect(fs.existsSync(path.join(world, 'slots/2'))).toBe(false);
    expect(fs.statSync(path.join(world, 'slots')).mode & 0o777).toBe(0o711);
  });

  test('a prepared world is used: the zygote root and the slots are its, furnished, and nothing of the root is copied', async () => {
    // What an earlier instance of the same container could have left in slot 1's /tmp.
    const world = path.join(dir, PREPARED_WORLD);
    fs.writeFileSync(path.join(world, 'slots/1/tmp/left-by-an-earlier-run'), 'x');
    const { slots, files } = await create();
    expect(slots.source).toMatchObject({ kind: 'prepared', world, preparedSlots: 2 });
    expect(slots.source.detail).toMatch(/^prepared with the image/);
    expect(slots.root).toBe(world);
    // The warm path's socket directory (<files.dir>/root/sandbox/warm) lies in the zygote's root.
    expect(fs.readlinkSync(path.join(files.dir, 'root'))).toBe(world);

    await slots.ensureSlot(0, UID);
    expect(fs.realpathSync(path.dirname(files.warmDir))).toBe(path.join(world, 'sandbox'));
    await slots.ensureSlot(1, UID + 1);
    for (const [n, uid] of [
      [0, UID],
      [1, UID + 1],
    ]) {
      const slotRoot = path.join(world, 'slots', String(n));
      expect(slots.slotRoot(n)).toBe(slotRoot);
      const tmp = fs.lstatSync(path.join(slotRoot, 'tmp'));
      expect({ slot: n, uid: tmp.uid, mode: tmp.mode & 0o7777, entries: fs.readdirSync(path.join(slotRoot, 'tmp')) }).toEqual({ slot: n, uid, mode: 0o700, entries: [] });
      expect(fs.readdirSync(path.join(slotRoot, 'sandbox', 'runner'))).toContain('runner.py');
      expect(fs.existsSync(path.join(slotRoot, 'sandbox', 'seccomp-policy.json'))).toBe(true);
      expect(fs.statSync(path.join(slotRoot, 'dev', 'null')).isCharacterDevice()).toBe(true);
      expect(inode(path.join(slotRoot, 'usr/bin/python3'))).toBe(inode(path.join(root, 'usr/bin/python3')));
    }
    expect(fs.readdirSync(path.join(world, 'sandbox', 'runner'))).toContain('runner.py');
    // The root itself is untouched: no /sandbox, its /tmp still root's.
    expect(fs.existsSync(path.join(root, 'sandbox'))).toBe(false);
    expect(fs.lstatSync(path.join(root, 'tmp')).uid).toBe(0);

    // After a run: the slot's /tmp emptied and made again, the slot's alone.
    fs.mkdirSync(path.join(world, 'slots/0/tmp/deep/er'), { recursive: true });
    fs.writeFileSync(path.join(world, 'slots/0/tmp/deep/er/out.csv'), 'a,b\n');
    await slots.resetTmp(0, UID);
    expect(fs.readdirSync(path.join(world, 'slots/0/tmp'))).toEqual([]);
    expect(fs.lstatSync(path.join(world, 'slots/0/tmp')).uid).toBe(UID);

    // A slot beyond the prepared ones: linked into the world at first use.
    await slots.ensureSlot(2, UID + 2);
    expect(slots.linkedBeyond.has(2)).toBe(true);
    expect(inode(path.join(world, 'slots/2/usr/bin/python3'))).toBe(inode(path.join(root, 'usr/bin/python3')));
    expect(fs.lstatSync(path.join(world, 'slots/2/tmp')).uid).toBe(UID + 2);

    // One instance per prepared world: a second one links its own roots.
    const second = await create();
    expect(second.slots.source).toMatchObject({ kind: 'linked', detail: expect.stringContaining('held by another instance') });
    expect(second.slots.root).toBe(path.join(second.files.dir, 'root'));

    // Released (the instance is gone): the next one takes it, and resets what the last left.
    fs.writeFileSync(path.join(world, 'slots/0/tmp/from-the-last-instance'), 'x');
    await slots.lock!.release();
    const third = await create();
    expect(third.slots.source.kind).toBe('prepared');
    await third.slots.ensureSlot(0, UID + 5);
    expect(fs.readdirSync(path.join(world, 'slots/0/tmp'))).toEqual([]);
    expect(fs.lstatSync(path.join(world, 'slots/0/tmp')).uid).toBe(UID + 5);
    await third.slots.lock!.release();
  });

  test('an unsound prepared world is refused: not links of this root, or writable by others', async () => {
    const world = path.join(dir, PREPARED_WORLD);
    fs.chmodSync(world, 0o757);
    expect((await checkPreparedWorld(root, world)).problem).toMatch(/writable by others/);
    const { slots } = await create();
    expect(slots.source).toMatchObject({ kind: 'linked', detail: expect.stringMatching(/unusable: .*writable by others/) });
    fs.chmodSync(world, 0o755);

    // A copy (cp -a), not hard links: another root, for all the service can tell.
    fs.rmSync(world, { recursive: true, force: true });
    expect(spawnSync('cp', ['-a', root, world]).status).toBe(0);
    expect((await checkPreparedWorld(root, world)).problem).toMatch(/not a hard-link copy/);

    // Slots are counted while each is a sound copy.
    fs.rmSync(world, { recursive: true, force: true });
    worldSh(root, 3);
    fs.rmSync(path.join(world, 'slots/1'), { recursive: true });
    expect(await checkPreparedWorld(root, world)).toEqual({ slots: 1 });
  });
});

withRealRoot('the service on prepared roots (a hard-link copy of the real sandbox root with a world beside it)', () => {
  let dir: string;
  let rootfs: string;
  let world: string;

  beforeAll(() => {
    // On the real root's file system (hard links), private to this test: the shared cache is never touched.
    const real = fs.realpathSync(REAL_ROOT);
    dir = fs.mkdtempSync(path.join(path.dirname(path.dirname(real)), '.slot-roots-test-'));
    // A short work root (the warm path's socket path must fit in 108 bytes), on the same file system.
    expect(fs.statSync(os.tmpdir()).dev).toBe(fs.statSync(dir).dev);
    fs.chmodSync(dir, 0o755);
    rootfs = path.join(dir, 'root');
    expect(spawnSync('cp', ['-al', real, rootfs]).status).toBe(0);
    world = worldSh(rootfs, 2);
  }, 120000);
  afterAll(() => {
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  for (const runPath of ['cold', 'warm'] as const) {
    test(`${runPath} path: runs use the prepared slot roots, each with its own /tmp, emptied after the run`, async () => {
      const workRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'sr-'));
      const service = await startService({ SANDBOX_ROOTFS: rootfs, SANDBOX_WORK_ROOT: workRoot, MAX_CONCURRENT_RUNS: '2', WARM_POOL_SIZE: '2' }, 'seccomp', [], { path: runPath });
      try {
        const health = await request(`${service.url}/health`);
        expect(health.body.sandbox.capabilities.seccomp.slot_roots).toMatch(new RegExp(`^prepared with the image: ${world} and 2 slot roots`));
        // The instance's own directory holds no root of its own: a link to the world.
        const instances = fs.readdirSync(workRoot).filter((e) => e.startsWith('instance-'));
        expect(instances.length).toBe(1);
        expect(fs.readlinkSync(path.join(workRoot, instances[0], 'sandbox', 'root'))).toBe(world);

        const nonce = `n${Date.now()}`;
        const running = execute(
          service,
          py('import time', 'def main(nonce):', '    open(f"/tmp/{nonce}.csv", "w").write("a,b\\n")', '    time.sleep(1.5)', '    return open(f"/tmp/{nonce}.csv").read()'),
          {
            nonce,
          },
        );
        // While it runs, its file is in one prepared slot's /tmp, nowhere else.
        let seenIn: string[] = [];
        for (let i = 0; i < 40 && seenIn.length === 0; i++) {
          await new Promise((r) => setTimeout(r, 50));
          seenIn = ['0', '1'].filter((n) => fs.existsSync(path.join(world, 'slots', n, 'tmp', `${nonce}.csv`)));
        }
        expect(seenIn.length).toBe(1);
        const answer = await running;
        expect(answer.status).toBe(200);
        expect(answer.body.result).toBe('a,b\n');
        // The next runs of both slots (at once: one each) find no file in /tmp.
        const files = py('import os, time', 'def main():', '    time.sleep(0.3)', '    return sorted(os.path.join(d, f) for d, _, fs in os.walk("/tmp") for f in fs)');
        const after = await Promise.all([0, 1].map(() => execute(service, files)));
        for (const a of after) expect({ status: a.status, result: a.body.result }).toEqual({ status: 200, result: [] });
        // The real root is untouched: the prepared roots' additions are the world's own files.
        expect(fs.existsSync(path.join(rootfs, 'sandbox'))).toBe(false);
        expect(fs.existsSync(path.join(world, 'slots', '0', 'sandbox', 'runner', 'runner.py'))).toBe(true);
      } finally {
        await service.stop();
        fs.rmSync(workRoot, { recursive: true, force: true });
      }
    }, 120000);
  }
});
