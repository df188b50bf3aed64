/**
 * Containment: a run's aggregate memory, disk and processes stay within its limits however it
 * spreads them (shared memory over forked children, memfds written and never mapped, tmpfs files,
 * files unlinked while open), nothing it does reaches another run, and what it leaves behind is
 * reaped. Every case runs with per-run cgroups (the kernel holds the limit) and without them
 * (SANDBOX_CGROUPS=off: the usage sampler), in every mode, on the jest project's path.
 */
import { promises as fs } from 'fs';
import { AS_PID_1, nodePidOf, pathUnderTest, sandboxModes, zombiesOf } from '../helpers/service';
import { attack, attackCase, execute, processesOfUids, py, startService, TRY, uidBase, waitFor, type Layer, type RunningService } from './helpers';

const MEMORY_MB = 256;
/** nsjail mode's /tmp is a tmpfs: make it larger than the memory limit, so only the cgroup holds it. */
const TMP_MB = { seccomp: 64, nsjail: 320 } as Record<string, number>;

/** Python: fills `mb` MiB of a MAP_SHARED|MAP_ANONYMOUS region in each of `children` forked processes. */
const SHARED_MEMORY_CHILDREN = py(
  'import mmap, os, select, time',
  'def hold_in_children(children, mb):',
  '    r, w = os.pipe()',
  '    for _ in range(children):',
  '        if os.fork() == 0:',
  '            try:',
  '                m = mmap.mmap(-1, mb << 20, flags=mmap.MAP_SHARED)',
  '                for j in range(0, len(m), 4096): m[j] = 1',
  "                os.write(w, b'x')",
  '            finally:',
  '                time.sleep(30)',
  '                os._exit(0)',
  '    os.close(w)',
  '    filled, deadline = 0, time.time() + 4',
  '    while time.time() < deadline:',
  '        ready, _, _ = select.select([r], [], [], 0.2)',
  '        if ready:',
  '            if not os.read(r, 1): break',
  '            filled += 1',
  "    return {'held_mb': filled * mb}",
);

describe.each(
  sandboxModes().flatMap((mode) => [
    [mode, 'auto'],
    [mode, 'off'],
  ]),
)('security: containment in %s mode, cgroups %s', (mode, cgroups) => {
  let service: RunningService;
  const base = uidBase();
  beforeAll(async () => {
    service = await startService(
      { SCRIPT_TIMEOUT_MS: '6000', SCRIPT_MEMORY_MB: String(MEMORY_MB), SCRIPT_TMP_MB: String(TMP_MB[mode]), SANDBOX_CGROUPS: cgroups, SANDBOX_UID_BASE: String(base) },
      mode,
    );
  });
  afterAll(async () => {
    await service?.stop();
  });
  const kernel = cgroups === 'auto';
  const c = (name: string, layer: Layer, body: () => Promise<void>, timeoutMs = 30000) =>
    attackCase(
      'containment',
      name,
      layer,
      mode,
      () => service,
      async () => {
        await body();
        expect(await waitFor(async () => (await processesOfUids(base, 64, service)).length === 0, 3000)).toBe(true);
      },
      timeoutMs,
    );

  test('health reports the cgroups in use', async () => {
    const health = (await (await fetch(`${service.url}/health`)).json()) as any;
    const finding = health.sandbox.capabilities.cgroups;
    if (kernel) {
      // This machine (and CI) has the v1 memory and pids controllers mounted and writable.
      expect(finding.available).toBe(true);
      expect(finding.controllers).toEqual(expect.arrayContaining(['memory', 'pids']));
    } else {
      expect(finding.available).toBe(false);
      expect(finding.detail).toContain('SANDBOX_CGROUPS=off');
    }
  });

  /** Over its limit, a run ends as memory_limit; if it returns, it held no more than its limit. */
  const expectHeldToLimit = (answer: { status: number; body: any }, limitMb: number) => {
    if (answer.status === 200) expect(answer.body.result.held_mb).toBeLessThanOrEqual(limitMb);
    else expect(answer.body.error.type).toBe('memory_limit');
  };

  c('shared anonymous memory over five forked children', kernel ? 'cgroup memory limit' : 'usage sampler (shared memory by inode)', async () => {
    const answer = await attack(service, SHARED_MEMORY_CHILDREN + py('def main():', '    return hold_in_children(5, 80)'));
    expect(answer.status).toBe(422);
    expect(answer.body.error.type).toBe('memory_limit');
  });

  c('memfds written, never mapped', kernel ? 'cgroup memory limit' : 'usage sampler (memfds by inode)', async () => {
    const answer = await attack(
      service,
      py(
        'import os, time',
        'def main():',
        "    blob, fds = b'x' * (1 << 20), []",
        '    try:',
        '        for i in range(24):',
        "            fd = os.memfd_create(f'm{i}')",
        '            for _ in range(16): os.write(fd, blob)',
        '            fds.append(fd)',
        '        time.sleep(1)',
        '    except OSError:',
        '        pass',
        "    return {'held_mb': 16 * len(fds)}",
      ),
    );
    expectHeldToLimit(answer, MEMORY_MB);
    if (answer.status === 200) expect(kernel).toBe(true); // only the kernel refuses the write itself
  });

  if (mode === 'nsjail') {
    c('tmpfs /tmp filled past the memory limit', kernel ? 'cgroup memory limit (tmpfs pages are charged)' : 'tmpfs size cap (SCRIPT_TMP_MB)', async () => {
      const answer = await attack(
        service,
        py(
          'import os, time',
          'def main():',
          "    blob, mb = b'x' * (1 << 20), 0",
          '    try:',
          '        for i in range(300 // 16):',
          "            with open(f'/tmp/fill{i}', 'wb') as f:",
          '                for _ in range(16): f.write(blob)',
          '            mb += 16',
          '    except OSError:',
          '        pass',
          '    time.sleep(0.5)',
          "    return {'held_mb': mb}",
        ),
      );
      expectHeldToLimit(answer, kernel ? MEMORY_MB : TMP_MB.nsjail);
    });
  }

  if (mode === 'seccomp') {
    c('files unlinked while open hold more than the disk limit', 'usage sampler (open files of the run)', async () => {
      const answer = await attack(
        service,
        py(
          'import os, time',
          'def main():',
          "    blob, held = b'x' * (1 << 20), []",
          '    try:',
          '        for i in range(8):',
          "            f = open(f'gone{i}', 'wb')",
          '            for _ in range(16): f.write(blob)',
          '            f.flush()',
          "            os.unlink(f'gone{i}')",
          '            held.append(f)',
          '        time.sleep(2)',
          '    except OSError:',
          '        pass',
          "    return {'held_mb': 16 * len(held)}",
        ),
      );
      if (answer.status === 200) expect(answer.body.result.held_mb).toBeLessThanOrEqual(TMP_MB.seccomp);
      else expect(answer.body.error.message).toContain("run's files took more than");
    });

    c('files hidden below a tree deeper than a path can name', 'usage sampler (a tree too deep to measure ends the run)', async () => {
      const answer = await attack(
        service,
        py(
          'import os, time',
          'def main():',
          "    blob, mb = b'x' * (1 << 20), 0",
          '    try:',
          '        for _ in range(2200):',
          "            os.mkdir('d')",
          "            os.chdir('d')",
          '        for i in range(8):',
          "            with open(f'f{i}', 'wb') as f:",
          '                for _ in range(16): f.write(blob)',
          '            mb += 16',
          '        time.sleep(2)',
          '    except OSError:',
          '        pass',
          "    return {'held_mb': mb}",
        ),
      );
      if (answer.status === 200) expect(answer.body.result.held_mb).toBeLessThanOrEqual(TMP_MB.seccomp);
      else expect(answer.body.error.type).toBe('killed');
    });

    c('O_TMPFILE files hold more than the disk limit', 'usage sampler (open files of the run)', async () => {
      const answer = await attack(
        service,
        py(
          'import os, time',
          'def main():',
          "    blob, held = b'x' * (1 << 20), []",
          '    try:',
          '        for i in range(8):',
          "            fd = os.open('.', os.O_TMPFILE | os.O_RDWR, 0o600)",
          '            for _ in range(16): os.write(fd, blob)',
          '            held.append(fd)',
          '        time.sleep(2)',
          '    except OSError:',
          '        pass',
          "    return {'held_mb': 16 * len(held)}",
        ),
      );
      if (answer.status === 200) expect(answer.body.result.held_mb).toBeLessThanOrEqual(TMP_MB.seccomp);
      else expect(answer.body.error.message).toContain("run's files took more than");
    });
  }

  c('clone(CLONE_PARENT) is refused', 'seccomp policy (clone flags)', async () => {
    const answer = await attack(
      service,
      py(
        TRY,
        'import os',
        'def main():',
        '    SIGCHLD, CLONE_PARENT = 17, 0x8000',
        '    results = []',
        '    for _ in range(40):',
        '        r = raw_syscall(56, CLONE_PARENT | SIGCHLD, 0, 0, 0, 0)',
        '        if r == 0:',
        '            os._exit(0)',
        '        results.append(r)',
        '    return sorted(set(map(str, results)))',
      ),
    );
    expect(answer.status).toBe(200);
    expect(answer.body.result).toEqual(['EPERM']);
  });

  c(
    'many concurrent runs over their memory: only the offenders are killed',
    kernel ? 'cgroup memory limit per run' : 'usage sampler per run',
    async () => {
      const serviceRss = async () => Number(/^VmRSS:\s+(\d+)/m.exec(await fs.readFile(`/proc/${service.process.pid}/status`, 'utf8'))![1]) * 1024;
      const before = await serviceRss();
      const hog = SHARED_MEMORY_CHILDREN + py('def main():', '    return hold_in_children(4, 100)');
      const honest = (n: number) => py('import numpy as np', 'def main():', `    return int(np.arange(${n}).sum())`);
      const answers = await Promise.all([...Array.from({ length: 5 }, () => attack(service, hog)), ...Array.from({ length: 5 }, (_, i) => execute(service, honest(1000 + i)))]);
      for (const answer of answers.slice(0, 5)) {
        expect(answer.status).toBe(422);
        expect(answer.body.error.type).toBe('memory_limit');
      }
      answers.slice(5).forEach((answer, i) => {
        expect(answer.status).toBe(200);
        expect(answer.body.result).toBe(((1000 + i) * (999 + i)) / 2);
      });
      // The hogs' memory was never the service's: its own resident set barely moved.
      expect((await serviceRss()) - before).toBeLessThan(64 << 20);
    },
    60000,
  );
});

describe.each(
  sandboxModes().flatMap((mode) => [
    [mode, 'auto'],
    [mode, 'off'],
  ]),
)('security: a killed run and the next run of its slot, in %s mode, cgroups %s', (mode, cgroups) => {
  let service: RunningService;
  beforeAll(async () => {
    // One slot, so every run follows a killed one on the same uid.
    service = await startService({ SCRIPT_TIMEOUT_MS: '1500', MAX_CONCURRENT_RUNS: '1', SANDBOX_CGROUPS: cgroups, SANDBOX_UID_BASE: String(uidBase()) }, mode);
  });
  afterAll(async () => {
    await service?.stop();
  });

  test('a run killed at its time limit while holding memory never kills the next run', async () => {
    const big = py('import time', 'def main():', '    b = bytearray(200 << 20)', '    for j in range(0, len(b), 4096): b[j] = 1', '    while True:', '        pass');
    for (let round = 0; round < 3; round++) {
      const killed = execute(service, big);
      const next = execute(
        service,
        py(
          'import threading',
          'def main():',
          '    ts = [threading.Thread(target=sum, args=([1],)) for _ in range(8)]',
          '    [t.start() for t in ts]',
          '    [t.join() for t in ts]',
          "    return 'survived'",
        ),
      );
      expect((await killed).body.error.type).toBe('timeout');
      const answer = await next;
      expect(answer.status).toBe(200);
      expect(answer.body.result).toBe('survived');
    }
  }, 60000);

  test('after clone(CLONE_PARENT) attempts, the slot still starts threads and processes', async () => {
    await execute(service, py(TRY, 'import os', 'def main():', '    for _ in range(64):', '        if raw_syscall(56, 0x8000 | 17, 0, 0, 0, 0) == 0:', '            os._exit(0)'));
    const answer = await execute(
      service,
      py(
        'import subprocess, threading',
        'def main():',
        '    ts = [threading.Thread(target=sum, args=([1],)) for _ in range(16)]',
        '    [t.start() for t in ts]',
        '    [t.join() for t in ts]',
        "    return subprocess.run(['/bin/echo', 'child'], capture_output=True, text=True).stdout",
      ),
    );
    expect(answer.status).toBe(200);
    expect(answer.body.result).toBe('child\n');
  }, 30000);
});

describe.each(sandboxModes())('security: orphans of runs are reaped when the service is PID 1, in %s mode', (mode) => {
  let service: RunningService;
  let nodePid: number;
  beforeAll(async () => {
    // A container without an init: the service is PID 1 of its pid namespace, and Node reaps
    // only the children it spawned itself.
    service = await startService({ SANDBOX_UID_BASE: String(uidBase()) }, mode, AS_PID_1);
    nodePid = await nodePidOf(service);
  });
  afterAll(async () => {
    await service?.stop();
  });

  test(`daemons a run leaves behind are killed and reaped (${pathUnderTest()} path)`, async () => {
    const daemonize = py(
      'import os, time',
      'def main():',
      '    for _ in range(3):',
      '        if os.fork() == 0:',
      '            os.setsid()',
      '            if os.fork() == 0:',
      '                time.sleep(60)',
      '            os._exit(0)',
      '    time.sleep(0.2)',
      "    return 'daemonized'",
    );
    for (let i = 0; i < 3; i++) {
      const answer = await execute(service, daemonize);
      expect(answer.status).toBe(200);
    }
    // Reaping happens as the run's leftovers are killed; give it a moment, then none may remain.
    await waitFor(async () => (await zombiesOf(nodePid)).length === 0, 3000);
    expect(await zombiesOf(nodePid)).toEqual([]);
  }, 60000);
});
