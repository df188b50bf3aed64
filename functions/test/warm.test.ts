/**
 * The warm path's own lifecycle (jest project "warm"): waiting children, one child per run,
 * zygotes that are restarted when they die, and the lean and full children (WARM_LEAN): which
 * kind runs which script, and that both are confined alike. Its isolation is covered by
 * execute.test.ts and the attack suite, which the "warm" project runs on this path too (most of
 * their scripts import only the standard library: lean children run them).
 */
import { promises as fs, mkdirSync, mkdtempSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'fs';
import * as os from 'os';
import * as path from 'path';
import { emptyShallowTree } from '../src/sandbox/removeTree';
import { zygotesOf } from './helpers/processes';
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
    for (let i = 0; i < 300; i++) {
      const health = (await request(`${service.url}/health`)).body;
      if (health.warm_pool?.waiting === count) return health.warm_pool.children;
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error('the pool did not refill');
  }

  /** The service's zygote of this kind. */
  const zygotePids = async (kind: 'full' | 'lean'): Promise<number[]> => (await zygotesOf(service.process.pid!, mode)).filter((z) => z.kind === kind).map((z) => z.pid);

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

  test.each([
    ['full', py('import pandas', 'def main():', '    return "after restart"')],
    ['lean', py('def main():', '    return "after restart"')],
  ] as const)('the %s zygote is restarted when it dies, and runs of its kind go on', async (kind, script) => {
    const [zygote] = await zygotePids(kind);
    expect(zygote).toBeGreaterThan(0);
    process.kill(zygote, 'SIGKILL');
    let answer;
    for (let i = 0; i < 100; i++) {
      answer = await execute(service, script);
      if (answer.status === 200) break;
      expect(answer.body.error.type).toBe('sandbox_unavailable'); // never a run outside the sandbox
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(answer!.body.result).toBe('after restart');
    let restarted: number | undefined;
    for (let i = 0; i < 100 && !restarted; i++) {
      [restarted] = await zygotePids(kind);
      if (!restarted) await new Promise((r) => setTimeout(r, 50));
    }
    expect(restarted).toBeGreaterThan(0);
    expect(restarted).not.toBe(zygote);
    expect(service.logEntries().some((entry) => entry.event === 'zygote_died' && entry.zygote === kind)).toBe(true);
  });
});

/** What a script can see of its own confinement: the same for lean and full children. */
const CONFINEMENT_PROBE = [
  'import os, resource',
  'def main():',
  '    try:',
  "        with open('/proc/self/status') as f:",
  "            fields = dict(line.rstrip('\\n').split(':\\t', 1) for line in f)",
  "        status = {k: fields.get(k) for k in ('Uid', 'Gid', 'Groups', 'Seccomp', 'Seccomp_filters', 'NoNewPrivs', 'CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb')}",
  '    except OSError as e:',
  '        status = type(e).__name__  # seccomp mode: no /proc in the root',
  "    limits = {n: list(resource.getrlimit(getattr(resource, n))) for n in sorted(dir(resource)) if n.startswith('RLIMIT_')}",
  '    writes = {}',
  "    for p in ('/sandbox/probe', '/etc/probe', '/probe', '/usr/probe', '/var/tmp/probe', '/sandbox/runner/probe'):",
  '        try:',
  "            open(p, 'w').close()",
  "            writes[p] = 'written'",
  '        except OSError as e:',
  '            writes[p] = type(e).__name__',
  '    umask = os.umask(0o22)',
  '    return {"uid": [os.getuid(), os.geteuid()], "gid": [os.getgid(), os.getegid()], "groups": os.getgroups(), "cwd": os.getcwd(),',
  '            "env": sorted(os.environ), "umask": umask, "status": status, "limits": limits, "writes": writes}',
];

describeWarm('lean and full children in %s mode, one slot', (mode) => {
  let service: RunningService;
  beforeAll(async () => {
    service = await startService({ MAX_CONCURRENT_RUNS: '1', WARM_POOL_SIZE: '1' }, mode);
  });
  afterAll(async () => {
    await service?.stop();
  });

  /** The kind of the child waiting in the only slot, once there is one. */
  async function waitingKind(): Promise<string> {
    for (let i = 0; i < 300; i++) {
      const pool = (await request(`${service.url}/health`)).body.warm_pool;
      if (pool?.waiting === 1) return pool.children[0].kind;
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error('the slot did not refill');
  }

  /** Runs the script; returns its result and the kinds its request log line names. */
  async function run(script: string): Promise<{ result: unknown; scriptKind: string; warmChild: string }> {
    const answer = await execute(service, script);
    expect({ status: answer.status, error: answer.body.error }).toEqual({ status: 200, error: undefined });
    let line: Record<string, any> | undefined;
    for (let i = 0; i < 100 && !line; i++) {
      line = service.logEntries().find((entry) => entry.request_id === answer.body.request_id && entry.warm_child);
      if (!line) await new Promise((r) => setTimeout(r, 20));
    }
    return { result: answer.body.result, scriptKind: line?.script_kind, warmChild: line?.warm_child };
  }

  const hello = py('def main():', '    return "hello"');
  const pandas = py('import pandas as pd', 'def main():', '    return int(pd.Series([1, 2, 3]).sum())');
  const dynamic = py('import sys', 'def main():', '    preloaded = "pandas" in sys.modules', '    pd = __import__("pandas")', '    return [preloaded, int(pd.Series([4, 5]).sum())]');

  test('hello, pandas, hello, a hidden pandas import: each right, each slot refilled with the kind just run', async () => {
    expect(await waitingKind()).toBe('lean'); // the start-up trial runs (a lean script) left a lean child
    expect(await run(hello)).toEqual({ result: 'hello', scriptKind: 'lean', warmChild: 'lean' });
    expect(await waitingKind()).toBe('lean');
    // The lean child cannot run it: discarded, and a full one forked for the run.
    expect(await run(pandas)).toEqual({ result: 6, scriptKind: 'full', warmChild: 'full' });
    expect(await waitingKind()).toBe('full');
    // A full child runs a lean script as well; the slot then refills lean.
    expect(await run(hello)).toEqual({ result: 'hello', scriptKind: 'lean', warmChild: 'full' });
    expect(await waitingKind()).toBe('lean');
    // Classified lean, imports pandas at run time: the lean child (without pandas) pays the import, the answer is right.
    expect(await run(dynamic)).toEqual({ result: [false, 9], scriptKind: 'lean', warmChild: 'lean' });
  });

  test('a lean child is confined exactly as a full one: uid, status, rlimits, writes outside the workdir', async () => {
    const full = await run(py('import numpy', ...CONFINEMENT_PROBE));
    expect(full.warmChild).toBe('full');
    await run(hello); // runs in the full child left waiting; the slot refills lean
    const lean = await run(py(...CONFINEMENT_PROBE));
    expect(lean.warmChild).toBe('lean');
    expect(lean.result).toEqual(full.result);
    const seen = lean.result as Record<string, any>;
    expect(seen.uid[0]).not.toBe(0);
    for (const outcome of Object.values(seen.writes)) expect(outcome).not.toBe('written');
    if (mode === 'nsjail') {
      // Where there is a /proc: seccomp filter on, no_new_privs, no capabilities at all.
      expect(seen.status).toMatchObject({ Seccomp: '2', NoNewPrivs: '1', CapEff: '0000000000000000', CapPrm: '0000000000000000', CapBnd: '0000000000000000' });
    }
  });
});

describeWarm('WARM_LEAN=off in %s mode', (mode) => {
  test('one zygote, full children only, and runs of both kinds work', async () => {
    const service = await startService({ MAX_CONCURRENT_RUNS: '1', WARM_POOL_SIZE: '1', WARM_LEAN: 'off' }, mode);
    try {
      for (const [script, result] of [
        [py('def main():', '    return "hello"'), 'hello'],
        [py('import pandas as pd', 'def main():', '    return int(pd.Series([1, 2]).sum())'), 3],
      ] as const) {
        const answer = await execute(service, script);
        expect(answer.body.result).toBe(result);
      }
      // A request's log line follows its answer.
      const kinds = () => service.logEntries().flatMap((entry) => (entry.warm_child ? [entry.warm_child] : []));
      for (let i = 0; i < 100 && kinds().length < 2; i++) await new Promise((r) => setTimeout(r, 20));
      expect(kinds()).toEqual(['full', 'full']);
      expect((await zygotesOf(service.process.pid!, mode)).map((z) => z.kind)).toEqual(['full']);
      let pool: any;
      for (let i = 0; i < 300 && (pool = (await request(`${service.url}/health`)).body.warm_pool).waiting !== 1; i++) await new Promise((r) => setTimeout(r, 50));
      expect(pool).toMatchObject({ lean: false, waiting: 1, children: [{ slot: 0, kind: 'full' }] });
    } finally {
      await service.stop();
    }
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
    for (let i = 0; i < 300 && (health = (await request(`${service.url}/health`)).body).warm_pool?.waiting !== 2; i++) await new Promise((r) => setTimeout(r, 50));
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
