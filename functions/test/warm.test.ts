/**
 * The warm path's own lifecycle (jest project "warm"): waiting children, one child per run, and a
 * zygote that is restarted when it dies. Its isolation is covered by execute.test.ts and the
 * attack suite, which the "warm" project runs on this path too.
 */
import { promises as fs, mkdirSync, mkdtempSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'fs';
import * as os from 'os';
import * as path from 'path';
import { emptyShallowTree } from '../src/sandbox/removeTree';
import { execute, pathUnderTest, py, request, sandboxModes, startService, type RunningService } from './helpers/service';

const describeWarm = pathUnderTest() === 'warm' ? describe.each(sandboxModes()) : describe.skip.each(['seccomp']);

describeWarm('warm path in %s mode', (mode) => {
  let service: RunningService;
  beforeAll(async () => {
    service = await startService({ MAX_CONCURRENT_RUNS: '2', WARM_POOL_SIZE: '2' }, mode);
  });
  afterAll(async () => {
    await service?.stop();
  });

  async function waitingChildren(count: number): Promise<Array<{ slot: number; pid: number }>> {
    for (let i = 0; i < 100; i++) {
      const health = (await request(`${service.url}/health`)).body;
      if (health.warm_pool?.waiting === count) return health.warm_pool.children;
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error('the pool did not refill');
  }

  const parentOf = async (pid: number | string): Promise<number> => Number((await fs.readFile(`/proc/${pid}/stat`, 'utf8').catch(() => ') X 0')).split(') ')[1].split(' ')[1]);

  /** The zygote: the zygote.py process whose parent is the service (seccomp) or its nsjail (nsjail). */
  async function zygotePids(): Promise<number[]> {
    const found: number[] = [];
    for (const entry of await fs.readdir('/proc')) {
      if (!/^\d+$/.test(entry)) continue;
      const cmdline = await fs.readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '');
      if (!cmdline.includes('zygote.py')) continue;
      // Children of the zygote share its command line; their parent is the zygote itself.
      const parent = await parentOf(entry);
      const launcher = mode === 'nsjail' ? await parentOf(parent) : parent;
      if (launcher === service.process.pid) found.push(Number(entry));
    }
    return found;
  }

  test('health lists the waiting children; a run uses one and it is replaced by a new one', async () => {
    const before = await waitingChildren(2);
    const answer = await execute(service, py('import os', 'def main():', '    return os.getpid()'));
    expect(answer.status).toBe(200);
    const after = await waitingChildren(2);
    const used = before.filter((child) => !after.some((other) => other.pid === child.pid));
    expect(used).toHaveLength(1);
    await expect(fs.stat(`/proc/${used[0].pid}`)).rejects.toThrow(); // it ran once and is gone
    // seccomp mode: the script saw that child's pid; nsjail mode: it is PID 1 of its own pid namespace.
    expect(answer.body.result).toBe(mode === 'nsjail' ? 1 : used[0].pid);
  });

  test('each run gets a fresh child: module state never carries over', async () => {
    const script = py('import json', 'def main():', '    seen = getattr(json, "_marker", None)', '    json._marker = "set"', '    return seen');
    for (let i = 0; i < 4; i++) expect((await execute(service, script)).body.result).toBeNull();
  });

  test("whatever a run leaves in /tmp, shallow, deep or wide, the slot's next run finds none of it", async () => {
    // Shallow trees are emptied in place (seccomp mode: emptyShallowTree), deeper or wider ones by
    // rm (resetTmp); nsjail mode's /tmp goes with the child's namespaces. Two slots, eight runs:
    // each slot sees every shape, and each run reports what it found before leaving its own.
    const leave = (shape: string) =>
      py(
        'import os',
        'def main():',
        "    found = sorted(n for n in os.listdir('/tmp') if n != 'out')",
        `    shape = ${JSON.stringify(shape)}`,
        "    if shape == 'shallow':",
        "        open('/tmp/a.txt', 'w').write('x')",
        "        os.makedirs('/tmp/d1/d2')",
        "        open('/tmp/d1/d2/b.txt', 'w').write('y')",
        "        os.symlink('/sandbox/runner', '/tmp/link')",
        "    elif shape == 'deep':",
        "        os.makedirs('/tmp/e1/e2/e3/e4/e5')",
        "        open('/tmp/e1/e2/e3/e4/e5/c.txt', 'w').write('z')",
        '    else:',
        "        os.mkdir('/tmp/wide')",
        '        for i in range(100):',
        "            open(f'/tmp/wide/{i}', 'w').close()",
        "    return [found, len(os.listdir('/sandbox/runner')) > 0]",
      );
    for (const shape of ['shallow', 'shallow', 'deep', 'deep', 'wide', 'wide', 'shallow', 'shallow']) {
      const answer = await execute(service, leave(shape));
      expect(answer.status).toBe(200);
      // Nothing of an earlier run; the symlinked runner directory was never followed.
      expect(answer.body.result).toEqual([[], true]);
    }
  });

  test('the zygote is restarted when it dies, and runs go on', async () => {
    const [zygote] = await zygotePids();
    expect(zygote).toBeGreaterThan(0);
    process.kill(zygote, 'SIGKILL');
    let answer;
    for (let i = 0; i < 40; i++) {
      answer = await execute(service, py('def main():', '    return "after restart"'));
      if (answer.status === 200) break;
      expect(answer.body.error.type).toBe('sandbox_unavailable'); // never a run outside the sandbox
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(answer!.body.result).toBe('after restart');
    let restarted: number | undefined;
    for (let i = 0; i < 40 && !restarted; i++) {
      [restarted] = await zygotePids();
      if (!restarted) await new Promise((r) => setTimeout(r, 50));
    }
    expect(restarted).toBeGreaterThan(0);
    expect(restarted).not.toBe(zygote);
    expect(service.logEntries().some((entry) => entry.event === 'zygote_died')).toBe(true);
  });
});

describeWarm('warm path in %s mode, at shutdown', (mode) => {
  /** Cgroup directories of the service's instance: every one is named pyexec-<service pid>-... */
  async function cgroupsOf(pid: number): Promise<string[]> {
    const found: string[] = [];
    const walk = async (dir: string, depth: number): Promise<void> => {
      for (const entry of await fs.readdir(dir, { withFileTypes: true }).catch(() => [])) {
        if (!entry.isDirectory()) continue;
        if (entry.name.startsWith(`pyexec-${pid}-`)) found.push(`${dir}/${entry.name}`);
        else if (depth > 0) await walk(`${dir}/${entry.name}`, depth - 1);
      }
    };
    await walk('/sys/fs/cgroup', 4);
    return found;
  }

  test('SIGTERM leaves none of the pool behind: no child, no cgroup', async () => {
    const service = await startService({ MAX_CONCURRENT_RUNS: '2', WARM_POOL_SIZE: '2' }, mode);
    const pid = service.process.pid!;
    let health: any;
    for (let i = 0; i < 100 && (health = (await request(`${service.url}/health`)).body).warm_pool?.waiting !== 2; i++) await new Promise((r) => setTimeout(r, 50));
    const children: number[] = health.warm_pool.children.map((child: { pid: number }) => child.pid);
    expect(children).toHaveLength(2);
    if (health.sandbox.capabilities.cgroups.available) expect((await cgroupsOf(pid)).length).toBeGreaterThan(0);
    expect(await service.stop('SIGTERM')).toBe(0);
    expect(await cgroupsOf(pid)).toEqual([]);
    // Killed before the service exited; reaped by whoever inherits them (the host's init here).
    const gone = async () =>
      (
        await Promise.all(
          children.map((child) =>
            fs.access(`/proc/${child}`).then(
              () => false,
              () => true,
            ),
          ),
        )
      ).every(Boolean);
    for (let i = 0; i < 40 && !(await gone()); i++) await new Promise((r) => setTimeout(r, 50));
    expect(await gone()).toBe(true);
  });
});

describe("emptyShallowTree (seccomp mode: a slot's /tmp after a run)", () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'pyexec-shallow-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  test('empties files, symlinks and directories a few levels deep, never following a link', () => {
    const outside = mkdtempSync(path.join(os.tmpdir(), 'pyexec-outside-'));
    try {
      writeFileSync(path.join(outside, 'keep'), 'k');
      const tmp = path.join(dir, 'tmp');
      mkdirSync(path.join(tmp, 'out'), { recursive: true });
      mkdirSync(path.join(tmp, 'a', 'b'), { recursive: true });
      writeFileSync(path.join(tmp, 'a', 'b', 'f'), 'x');
      writeFileSync(path.join(tmp, 'g'), 'y');
      symlinkSync(outside, path.join(tmp, 'dirlink'));
      symlinkSync(path.join(outside, 'keep'), path.join(tmp, 'a', 'filelink'));
      expect(emptyShallowTree(tmp)).toBe(true);
      expect(readdirSync(tmp)).toEqual([]);
      expect(readdirSync(outside)).toEqual(['keep']);
    } finally {
      rmSync(outside, { recursive: true, force: true });
    }
  });

  test('refuses (false) a tree deeper or wider than it takes, for rm to finish', () => {
    const deep = path.join(dir, 'deep');
    mkdirSync(path.join(deep, '1', '2', '3', '4'), { recursive: true });
    expect(emptyShallowTree(deep)).toBe(false);
    const wide = path.join(dir, 'wide');
    mkdirSync(wide);
    for (let i = 0; i < 100; i++) writeFileSync(path.join(wide, String(i)), '');
    expect(emptyShallowTree(wide)).toBe(false);
    expect(readdirSync(wide)).toHaveLength(100); // refused before removing anything at that level
    expect(emptyShallowTree(path.join(dir, 'missing'))).toBe(false);
  });
});
