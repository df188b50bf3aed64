/**
 * A run's cleanup happens after its answer (issue 15), and a warm child's cgroup is lowered to its
 * run's own limits before its job (issue 12). Both paths are tested here, whichever jest project
 * runs this file: each service is started on the path it names.
 *
 * Cleanup off the answer's path is only safe because the slot's next run waits for it: with one
 * run slot, every run below is the same slot's next run, sent as soon as the last one answered.
 * No test asserts how long anything takes.
 */
import { spawn } from 'child_process';
import { promises as fs } from 'fs';
import * as path from 'path';
import { cgroupLimits, probeCgroups, RunCgroups, type CgroupHost, type RunCgroup } from '../src/sandbox/cgroup/cgroups';
import { execute, py, request, sandboxModes, startService, type RunningService } from './helpers/service';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Leaves many small files and directories in its working directory (its /tmp), and a daemon-less exit. */
const LEAVE_FILES = py(
  'import os',
  'def main(n, tag):',
  '    for d in range(20):',
  '        os.makedirs(f"{tag}-d{d}/sub", exist_ok=True)',
  '    for i in range(n):',
  '        with open(f"{tag}-d{i % 20}/sub/f{i}", "w") as f:',
  '            f.write("x" * 64)',
  '    return sum(len(files) for _, _, files in os.walk("."))',
);

/** What it finds in its working directory, then a file of its own that must outlive any late cleanup. */
const LOOK_AND_KEEP = py(
  'import os, time',
  'def main(tag):',
  // Its own, empty out/ (for files it returns) is made for every run.
  '    found = sorted(p for p in (os.path.join(root, name) for root, dirs, files in os.walk(".") for name in dirs + files) if p != "./out")',
  '    with open(f"{tag}-mine", "w") as f:',
  '        f.write(tag)',
  '    time.sleep(0.3)',
  '    kept = open(f"{tag}-mine").read() if os.path.exists(f"{tag}-mine") else None',
  '    return {"found": found[:20], "count": len(found), "kept": kept}',
);

describe.each(sandboxModes().flatMap((mode) => (['cold', 'warm'] as const).map((runPath) => [mode, runPath] as const)))(
  "a run's files are removed after its answer, before the same slot's next run (%s mode, %s path)",
  (mode, runPath) => {
    let service: RunningService;
    beforeAll(async () => {
      service = await startService({ MAX_CONCURRENT_RUNS: '1', WARM_POOL_SIZE: '1', MAX_QUEUE: '8', MAX_QUEUE_WAIT_MS: '60000' }, mode, [], { path: runPath });
    });
    afterAll(async () => {
      await service?.stop();
    });

    test('the next run of the slot finds none of them, and no late cleanup touches its own', async () => {
      // Many files first (their removal takes a while, so a next run that did not wait would see
      // them, or lose its own to the late cleanup), then a few.
      for (const [round, n] of [8000, 500, 500].entries()) {
        const left = await execute(service, LEAVE_FILES, { n, tag: `r${round}` });
        expect({ status: left.status, error: left.body.error }).toEqual({ status: 200, error: undefined });
        expect(left.body.result).toBe(n);
        // Sent the moment the answer arrived: the slot's cleanup may still be under way.
        const next = await execute(service, LOOK_AND_KEEP, { tag: `n${round}` });
        expect({ status: next.status, error: next.body.error }).toEqual({ status: 200, error: undefined });
        expect(next.body.result).toEqual({ found: [], count: 0, kept: `n${round}` });
      }
    });

    test('runs sent back to back keep being answered correctly, each with a clean directory', async () => {
      const answers = await Promise.all(
        [0, 1, 2, 3].map(async (n) => {
          const left = await execute(service, LEAVE_FILES, { n: 300, tag: `p${n}` });
          const next = await execute(service, LOOK_AND_KEEP, { tag: `q${n}` });
          return [left, next];
        }),
      );
      for (const [left, next] of answers) {
        expect({ status: left.status, result: left.body.result }).toEqual({ status: 200, result: 300 });
        // The other clients' runs interleave on the one slot; whichever ran before, its files were gone.
        expect(next.status).toBe(200);
        expect(next.body.result.count).toBe(0);
        expect(next.body.result.kept).toMatch(/^q\d$/);
      }
    });
  },
);

/* ------------------------------------------------------------------ lowering a run's cgroup */

const MIB = 1024 * 1024;

describe("a run cgroup lowered to a run's limits", () => {
  let host: CgroupHost | null = null;
  let detail = '';
  beforeAll(async () => {
    if (process.getuid?.() !== 0) return;
    ({ host, detail } = await probeCgroups('auto', `wtest${process.pid}`));
  });

  /** The file holding the cgroup's memory limit, and its pids.max, found from its procs files. */
  function limitFiles(cgroup: RunCgroup): { memory: string; memsw?: string; pids: string } {
    const dirs = cgroup.procsFiles.map((file) => path.dirname(file));
    if (host!.version === 'v2') return { memory: path.join(dirs[0], 'memory.max'), pids: path.join(dirs[0], 'pids.max') };
    const memoryDir = dirs.find((dir) => dir.includes('/memory'))!;
    return {
      memory: path.join(memoryDir, 'memory.limit_in_bytes'),
      memsw: path.join(memoryDir, 'memory.memsw.limit_in_bytes'),
      pids: path.join(
        dirs.find((dir) => dir.includes('/pids'))!,
        'pids.max',
      ),
    };
  }
  const read = async (file: string) => (await fs.readFile(file, 'utf8')).trim();
  const exists = (file: string) =>
    fs.access(file).then(
      () => true,
      () => false,
    );

  test('memory (and memory+swap) and pids are lowered; a limit is never raised', async () => {
    if (!host) {
      process.stderr.write(`\n*** SKIPPING the cgroup lowering test: no usable cgroup here (${detail || 'not root'}). ***\n\n`);
      return;
    }
    const run = new RunCgroups(host, `wtest${process.pid}`).create(0, { memoryBytes: 256 * MIB, maxProcesses: 32 });
    try {
      const files = limitFiles(run);
      expect(Number(await read(files.memory))).toBe(256 * MIB);
      await run.lower(cgroupLimits({ memoryBytes: 96 * MIB, maxProcesses: 8 }));
      expect(Number(await read(files.memory))).toBe(96 * MIB);
      if (files.memsw && (await exists(files.memsw))) expect(Number(await read(files.memsw))).toBe(96 * MIB);
      expect(await read(files.pids)).toBe('9'); // nsjail's own process counts as one more
      await expect(run.lower({ memoryBytes: 128 * MIB, maxTasks: 9 })).rejects.toThrow(/only ever lowered/);
      expect(Number(await read(files.memory))).toBe(96 * MIB);
    } finally {
      await run.destroy();
    }
  });

  test('below what the cgroup already holds, lowering fails and leaves its process alive and its limit as it was', async () => {
    if (!host) return;
    const run = new RunCgroups(host, `wtest${process.pid}`).create(0, { memoryBytes: 256 * MIB, maxProcesses: 32 });
    // 64 MiB of anonymous memory, touched: with swap off nothing can reclaim it.
    const holder = spawn('/usr/bin/python3', ['-c', 'import sys, time\nx = bytearray(64 << 20)\nfor i in range(0, len(x), 4096): x[i] = 1\nprint("ready", flush=True)\ntime.sleep(60)'], {
      stdio: ['ignore', 'pipe', 'ignore'],
    });
    try {
      run.place(holder.pid!);
      await new Promise<void>((resolve) => holder.stdout!.once('data', () => resolve()));
      await expect(run.lower({ memoryBytes: 16 * MIB, maxTasks: 9 })).rejects.toThrow(/could not be lowered|already holds/);
      await sleep(100);
      expect(holder.exitCode).toBeNull();
      expect(holder.signalCode).toBeNull();
      expect(Number(await read(limitFiles(run).memory))).toBe(256 * MIB);
    } finally {
      holder.kill('SIGKILL');
      await run.destroy();
    }
  });
});

describe.each(sandboxModes())('a warm run with a lower memory limit than its child was made with (%s mode)', (mode) => {
  let service: RunningService;
  beforeAll(async () => {
    service = await startService({ MAX_CONCURRENT_RUNS: '1', WARM_POOL_SIZE: '1', SCRIPT_MEMORY_MB: '512' }, mode, [], { path: 'warm' });
  });
  afterAll(async () => {
    await service?.stop();
  });

  /** The memory cgroup limit of a process, read from the host. */
  async function memoryLimitOf(pid: number): Promise<number | undefined> {
    const lines = (await fs.readFile(`/proc/${pid}/cgroup`, 'utf8')).split('\n');
    const v1 = lines.find((line) => /^\d+:[^:]*\bmemory\b[^:]*:/.test(line));
    for (const [line, file] of [
      [v1, 'memory.limit_in_bytes'],
      [lines.find((line) => line.startsWith('0::')), 'memory.max'],
    ] as const) {
      if (!line) continue;
      const cgroupPath = line.split(':').slice(2).join(':');
      for (const mount of ['/sys/fs/cgroup/memory', '/sys/fs/cgroup', '/sys/fs/cgroup/unified']) {
        const text = await fs.readFile(path.join(mount, cgroupPath, file), 'utf8').catch(() => undefined);
        if (text !== undefined && /^\d+$/.test(text.trim())) return Number(text.trim());
      }
    }
    return undefined;
  }

  test("the child's cgroup holds the run's limit while its script runs", async () => {
    const health = (await request(`${service.url}/health`)).body;
    if (!health.sandbox.capabilities.cgroups?.available) {
      process.stderr.write('\n*** SKIPPING the warm cgroup lowering test: the service found no usable cgroup. ***\n\n');
      return;
    }
    let children: Array<{ pid: number }> = [];
    for (let i = 0; i < 200 && children.length === 0; i++) {
      children = (await request(`${service.url}/health`)).body.warm_pool?.children ?? [];
      if (children.length === 0) await sleep(50);
    }
    const [{ pid }] = children;
    expect(await memoryLimitOf(pid)).toBe(512 * MIB);
    const running = request(`${service.url}/execute`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ script: py('import time', 'def main():', '    time.sleep(1.5)', '    return "done"'), limits: { memory_mb: 128 } }),
    });
    let seen: number | undefined;
    for (let i = 0; i < 100 && seen !== 128 * MIB; i++) {
      seen = await memoryLimitOf(pid).catch(() => undefined);
      await sleep(20);
    }
    const answer = await running;
    expect({ status: answer.status, error: answer.body.error }).toEqual({ status: 200, error: undefined });
    expect(answer.body.limits).toEqual(expect.objectContaining({ memory_mb: 128 }));
    expect(seen).toBe(128 * MIB);
  });
});
