/**
 * Faults the service must survive, each with real HTTP and real sandboxes. Covered elsewhere and
 * not repeated here: the zygote dying between runs (warm.test.ts), a client that disconnects
 * mid-run (operations.test.ts, both paths), a script that forges or spoils its result channel
 * with valid JSON, sends twice, or exits without writing (security/protocol.test.ts, both paths).
 *
 * Here: the zygote killed while runs are in flight; the service SIGKILLed and restarted on the
 * same work root; the work root's file system full; a client that leaves while queued or while
 * its answer is being written; a runner that writes garbage on its channel, or never finishes
 * writing.
 *
 * Waits below poll until something happens and leave the bound to jest's timeout: no test
 * asserts how long anything takes.
 */
import { spawnSync } from 'child_process';
import { existsSync, promises as fs, readdirSync, writeFileSync } from 'fs';
import * as net from 'net';
import * as os from 'os';
import * as path from 'path';
import { processesWithArgument, zygotesOf } from './helpers/processes';
import { execute, py, request, sandboxModes, startService, type Answer, type RunningService } from './helpers/service';

const isRoot = process.getuid?.() === 0;
const DEFAULT_ROOTFS = '/var/cache/pyexec-rootfs/current/root';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls until predicate holds (the test's own timeout is the only bound). */
async function until(predicate: () => Promise<boolean> | boolean, everyMs = 50): Promise<void> {
  while (!(await predicate())) await sleep(everyMs);
}

async function health(service: RunningService): Promise<Record<string, any>> {
  return (await request(`${service.url}/healthz`)).body;
}

/** A uid range of the test's own (SANDBOX_UID_BASE), as helpers/service.ts picks them. */
function uidBase(): number {
  return 400000 + Math.floor(Math.random() * 40000) * 64;
}

/** The service answers a plain run correctly. */
async function expectServes(service: RunningService, tag = 'still serving'): Promise<void> {
  const answer = await execute(service, py('def main(tag):', '    return tag'), { tag });
  expect({ status: answer.status, error: answer.body?.error }).toEqual({ status: 200, error: undefined });
  expect(answer.body.result).toBe(tag);
}

/* ------------------------------------------------------------------ the zygote killed mid-run */

describe.each(sandboxModes())('the warm pool: its zygotes SIGKILLed while runs are in flight (%s mode)', (mode) => {
  let service: RunningService;
  beforeAll(async () => {
    service = await startService({ MAX_CONCURRENT_RUNS: '2', WARM_POOL_SIZE: '2' }, mode, [], { path: 'warm' });
  });
  afterAll(async () => {
    await service?.stop();
  });

  /** The zygotes (full and lean): each in-flight run may be a child of either. */
  const zygotes = async () => (await zygotesOf(service.process.pid!, mode)).map(({ pid }) => pid);

  test('the runs get a clear error, the pool comes back, later runs succeed', async () => {
    await until(async () => (await health(service)).warm_pool?.waiting === 2);
    const killed = await zygotes();
    expect(killed).toHaveLength(2);
    const markers = [`60.${Date.now() % 100000}1`, `60.${Date.now() % 100000}2`];
    const inFlight = markers.map((marker) => execute(service, py('import subprocess', 'def main():', `    subprocess.run(['/bin/sleep', '${marker}'])`, "    return 'finished'")));
    // Both runs are executing (their sleep processes exist) when the zygote is killed.
    await until(async () => (await Promise.all(markers.map(processesWithArgument))).every((pids) => pids.length === 1));
    for (const pid of killed) process.kill(pid, 'SIGKILL');

    const answers = await Promise.all(inFlight);
    for (const answer of answers) {
      expect(answer.status).toBe(503);
      expect(answer.body.error.type).toBe('sandbox_unavailable');
      expect(answer.body.error.message).toMatch(/zygote died during the run/);
    }
    // Nothing of the runs is left.
    for (const marker of markers) expect(await processesWithArgument(marker)).toEqual([]);
    expect(service.logEntries().some((entry) => entry.event === 'zygote_died')).toBe(true);

    // New zygotes, and the pool full again.
    await until(async () => {
      const now = await zygotes();
      return now.length === 2 && !now.some((pid) => killed.includes(pid));
    });
    // A slot whose child died waiting is refilled by its next run: runs drive the pool back (one
    // run per slot: admission hands out the least recently used slot). Each slot refills once its
    // run's cleanup, which follows the answer, is over.
    for (let served = 0; served < 2;) {
      const answer = await execute(service, py('def main():', "    return 'after'"));
      if (answer.status !== 200) {
        expect(answer.body.error.type).toBe('sandbox_unavailable'); // never anything but the sandbox's own refusal
        await sleep(100);
        continue;
      }
      served++;
    }
    await until(async () => (await health(service)).warm_pool?.waiting === 2);
    const later = await Promise.all([1, 2, 3, 4].map((n) => execute(service, py('def main(n):', '    return n * 10'), { n })));
    expect(later.map((answer) => answer.body.result)).toEqual([10, 20, 30, 40]);
    expect(service.process.exitCode).toBeNull();
  });
});

/* ------------------------------------------------------------------ SIGKILL and restart */

/**
 * Something in dir that the service (root) cannot remove: an immutable file (chattr +i), else a
 * tmpfs mounted on a subdirectory. Returns how to undo it wherever its directory was moved, or
 * undefined (not root, or neither works here).
 */
function makeUnremovable(dir: string): { kind: string; undo: (movedTo: string) => void } | undefined {
  if (!isRoot) return undefined;
  const file = path.join(dir, 'locked');
  writeFileSync(file, 'keep\n');
  if (spawnSync('chattr', ['+i', file]).status === 0 && spawnSync('rm', ['-f', file]).status !== 0 && existsSync(file)) {
    return { kind: 'immutable file (chattr +i)', undo: (movedTo) => void spawnSync('chattr', ['-i', path.join(movedTo, path.relative(dir, file))]) };
  }
  spawnSync('rm', ['-f', file]);
  const mountPoint = path.join(dir, 'mnt');
  spawnSync('mkdir', [mountPoint]);
  if (spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'none', mountPoint]).status === 0) {
    return { kind: 'mount point (tmpfs)', undo: (movedTo) => void spawnSync('umount', [path.join(movedTo, 'mnt')]) };
  }
  return undefined;
}

describe.each(sandboxModes())('the service SIGKILLed with runs in flight, then restarted on the same work root (%s mode)', (mode) => {
  test('it starts, removes what it can, quarantines the rest, ends what the killed runs left running, and answers', async () => {
    const workRoot = await fs.mkdtemp(path.join(os.tmpdir(), 'work-root-'));
    await fs.chmod(workRoot, 0o711);
    const env = { SANDBOX_WORK_ROOT: workRoot, SANDBOX_UID_BASE: String(uidBase()), MAX_CONCURRENT_RUNS: '2' };
    let undo: ((movedTo: string) => void) | undefined;
    let stuckAt: string | undefined;
    let restarted: RunningService | undefined;
    const marker = `120.${Date.now() % 100000}1`;
    try {
      const killed = await startService(env, mode);
      const workDir: string = (await health(killed)).sandbox.capabilities.work_dir.path;
      expect(path.dirname(workDir)).toBe(workRoot);
      // In flight when the service dies: a run that left a daemon (own session, double fork) and sleeps on.
      const inFlight = execute(
        killed,
        py(
          'import os, time',
          'def main():',
          '    if os.fork() == 0:',
          '        os.setsid()',
          '        if os.fork() == 0:',
          `            os.execv('/bin/sleep', ['sleep', '${marker}'])`,
          '        os._exit(0)',
          '    time.sleep(60)',
        ),
      ).catch(() => 'no answer');
      await until(async () => (await processesWithArgument(marker)).length === 1);
      // What the killed instance cannot clean up any more, and the next one cannot remove.
      await fs.mkdir(path.join(workDir, 'stuck'));
      const unremovable = makeUnremovable(path.join(workDir, 'stuck'));
      if (unremovable) undo = unremovable.undo;
      else process.stderr.write('\n*** The restart test runs without an unremovable entry: not root, or neither chattr +i nor a tmpfs mount works here. ***\n\n');
      stuckAt = path.join(workDir, 'stuck');

      killed.process.kill('SIGKILL');
      await killed.exited;
      expect(await inFlight).toBe('no answer'); // the connection broke
      expect(existsSync(workDir)).toBe(true); // nothing cleaned up after itself

      restarted = await startService(env, mode);
      await expectServes(restarted, 'after the restart');
      const entries = restarted.logEntries();
      const cleaned = entries.find((entry) => entry.event === 'work_root_cleaned');
      expect(existsSync(workDir)).toBe(false);
      if (unremovable) {
        expect(cleaned).toMatchObject({ removed: 0, quarantined: 1, left: 0 });
        const quarantined = entries.find((entry) => entry.event === 'work_root_quarantined');
        expect(quarantined).toMatchObject({ severity: 'WARNING', entry: path.basename(workDir) });
        stuckAt = path.join(quarantined!.quarantined_as, 'stuck');
        expect(existsSync(stuckAt)).toBe(true);
      } else {
        expect(cleaned).toMatchObject({ removed: 1, quarantined: 0, left: 0, removed_entries: [path.basename(workDir)] });
      }
      // The same explicitly set uid range, free again once its holder died; the daemon the killed
      // run left is gone (seccomp mode: it outlived its run; nsjail mode: its jail took it along).
      const claimed = entries.find((entry) => entry.event === 'uid_range_claimed');
      expect(claimed).toMatchObject({ base: Number(env.SANDBOX_UID_BASE), moved: false });
      // Seccomp mode: the daemon outlived its run and its instance; the claim swept it.
      if (mode === 'seccomp') expect(claimed!.swept_processes).toBeGreaterThanOrEqual(1);
      await until(async () => (await processesWithArgument(marker)).length === 0);
      expect((await fs.readdir(workRoot)).filter((entry) => entry.startsWith('instance-'))).toHaveLength(1);

      expect(await restarted.stop()).toBe(0);
      restarted = undefined;
      expect((await fs.readdir(workRoot)).sort()).toEqual(unremovable ? ['quarantine'] : []);
    } finally {
      if (restarted) await restarted.stop('SIGKILL');
      if (undo && stuckAt) undo(stuckAt);
      for (const pid of await processesWithArgument(marker)) process.kill(pid, 'SIGKILL');
      spawnSync('rm', ['-rf', '--one-file-system', '--', workRoot]);
    }
  });
});

/* ------------------------------------------------------------------ the work root's file system full */

/** Fills the file system at dir: its blocks (one file until ENOSPC), then its inodes (empty files until ENOSPC). */
function fill(dir: string): void {
  const filled = spawnSync(
    'python3',
    [
      '-c',
      [
        'import os, sys',
        'd = sys.argv[1]',
        'os.makedirs(d, exist_ok=True)',
        'try:',
        '    with open(os.path.join(d, "blocks"), "wb") as f:',
        '        while True:',
        '            f.write(b"\\0" * (1 << 20))',
        '            f.flush()',
        'except OSError:',
        '    pass',
        'n = 0',
        'try:',
        '    while True:',
        '        open(os.path.join(d, f"inode-{n}"), "w").close()',
        '        n += 1',
        'except OSError:',
        '    pass',
      ].join('\n'),
      dir,
    ],
    { encoding: 'utf8' },
  );
  if (filled.status !== 0) throw new Error(`filling ${dir} failed: ${filled.stderr}`);
}

describe.each(sandboxModes())('the work root on a file system that fills up (%s mode)', (mode) => {
  let mountPoint: string;
  let mounted = false;
  let rootfs: string | undefined;
  beforeAll(async () => {
    mountPoint = await fs.mkdtemp(path.join(os.tmpdir(), 'full-fs-'));
    await fs.chmod(mountPoint, 0o755);
    if (!isRoot) return;
    // Seccomp mode makes each run slot's root as hard links to SANDBOX_ROOTFS, which must then
    // be on the same file system: the small file system gets a copy of it (in either mode: the
    // seccomp trial runs in nsjail mode too). 64 MiB beyond the copy.
    const source = DEFAULT_ROOTFS;
    const size = Number(spawnSync('du', ['-sm', source], { encoding: 'utf8' }).stdout.split('\t')[0]) + 64;
    // tmpfs counts an inode for every hard link: the copy, the zygote's root and three slots' roots.
    const entries = Number(spawnSync('find', [source], { encoding: 'utf8', maxBuffer: 1 << 28 }).stdout.split('\n').length);
    const inodes = 5 * entries + 30000;
    mounted = spawnSync('mount', ['-t', 'tmpfs', '-o', `size=${size}m,nr_inodes=${inodes},mode=0755`, 'full-fs-test', mountPoint]).status === 0;
    if (mounted) {
      rootfs = path.join(mountPoint, 'rootfs');
      const copied = spawnSync('cp', ['-a', '--', source, rootfs], { encoding: 'utf8' });
      if (copied.status !== 0) throw new Error(`copying ${source} into the small file system failed: ${copied.stderr}`);
    }
  }, 120000);
  afterAll(async () => {
    if (mounted) spawnSync('umount', ['--lazy', mountPoint]);
    await fs.rm(mountPoint, { recursive: true, force: true });
  });

  for (const runPath of ['cold', 'warm'] as const) {
    test(`runs fail with a clear error while it is full, the service stays up, and recovers when space returns (${runPath} path)`, async () => {
      if (!mounted) {
        process.stderr.write('\n*** SKIPPING the full file system test: a tmpfs cannot be mounted here (not root). ***\n\n');
        return;
      }
      const workRoot = path.join(mountPoint, `work-${runPath}`);
      const filler = path.join(mountPoint, `filler-${runPath}`);
      // Three slots, one warm child: slots 1 and 2 are set up on demand, while the disk is full.
      const env: Record<string, string> = { SANDBOX_WORK_ROOT: workRoot, SANDBOX_ROOTFS: rootfs!, MAX_CONCURRENT_RUNS: '3', WARM_POOL_SIZE: '1' };
      const service = await startService(env, mode, [], { path: runPath });
      try {
        await expectServes(service, 'before');
        fill(filler);
        const write = py('def main(n):', '    with open("/tmp/fill", "w") as f:', '        f.write("x" * (1 << 20))', '    return n');
        const plain = py('import time', 'def main(n):', '    time.sleep(0.3)', '    return n');
        const whileFull: Answer[] = [];
        for (let round = 0; round < 2; round++) {
          whileFull.push(...(await Promise.all([0, 1, 2].map((n) => execute(service, plain, { n })))));
          whileFull.push(await execute(service, write, { n: 9 }));
        }
        for (const answer of whileFull) {
          // Either the run did not need the full disk and succeeded, or it failed as the
          // sandbox's refusal (503) or the script's own error (422, Errno 28); never an internal
          // error, never a hang.
          if (answer.status === 200) continue;
          expect({ status: answer.status, type: answer.body.error.type }).toEqual(answer.status === 503 ? { status: 503, type: 'sandbox_unavailable' } : { status: 422, type: 'runtime_error' });
          if (answer.status === 422) expect(`${answer.body.error.message} ${answer.body.stderr}`).toMatch(/No space left on device/);
        }
        if (mode === 'seccomp') {
          // Its runs' places are on the full file system: some could not be set up, and the
          // service said why (the first of them while the file system was certainly full).
          const refused = whileFull.filter((answer) => answer.status === 503);
          expect(refused.length).toBeGreaterThan(0);
          // The service's own check, or the runner's report that the run's disk took no out/.
          expect(refused[0].body.error.message).toMatch(/SANDBOX_WORK_ROOT's file system \(.*\) is full|the run's disk is full: .*No space left on device/);
        }
        expect((await request(`${service.url}/healthz`)).status).toBe(200);

        spawnSync('rm', ['-rf', '--', filler]);
        // Space is back: every slot serves again (a slot that failed is set up by its next run).
        let answers: Answer[] = [];
        for (;;) {
          answers = await Promise.all([0, 1, 2].map((n) => execute(service, plain, { n })));
          if (answers.every((answer) => answer.status === 200)) break;
          for (const answer of answers) if (answer.status !== 200) expect(answer.body.error.type).toBe('sandbox_unavailable');
          await sleep(200);
        }
        expect(answers.map((answer) => answer.body.result)).toEqual([0, 1, 2]);
        const wrote = await execute(service, write, { n: 7 });
        expect({ status: wrote.status, error: wrote.body.error }).toEqual({ status: 200, error: undefined });
        expect(service.process.exitCode).toBeNull();
        expect(service.logEntries().filter((entry) => entry.severity === 'ERROR' && entry.httpRequest?.status === 500)).toEqual([]);
      } finally {
        spawnSync('rm', ['-rf', '--', filler]);
        await service.stop();
      }
      expect(readdirSync(workRoot).filter((entry) => entry.startsWith('instance-'))).toEqual([]);
    }, 180000);
  }
});

/* ------------------------------------------------------------------ clients that leave */

describe('clients that leave while queued or while their answer is written', () => {
  let service: RunningService;
  beforeAll(async () => {
    service = await startService({ MAX_CONCURRENT_RUNS: '1', MAX_QUEUE: '4', MAX_QUEUE_WAIT_MS: '60000', OUTPUT_MAX_BYTES: String(4 << 20), RESULT_MAX_BYTES: String(4 << 20) }, 'seccomp');
  });
  afterAll(async () => {
    await service?.stop();
  });

  test('a request whose client leaves while it is queued leaves the queue and never runs', async () => {
    // Sleeps (seconds) that name their processes.
    const blocker = `2.${Date.now() % 100000}1`;
    const never = `2.${Date.now() % 100000}2`;
    const running = execute(service, py('import subprocess', 'def main():', `    subprocess.run(['/bin/sleep', '${blocker}'])`, "    return 'blocker'"));
    await until(async () => (await processesWithArgument(blocker)).length === 1);
    const controller = new AbortController();
    const queued = fetch(`${service.url}/execute`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ script: py('import subprocess', 'def main():', `    subprocess.run(['/bin/sleep', '${never}'])`) }),
      signal: controller.signal,
    }).catch(() => 'left');
    await until(async () => (await health(service)).queued === 1);
    controller.abort();
    expect(await queued).toBe('left');
    await until(async () => (await health(service)).queued === 0);

    const answer = await running;
    expect(answer.body.result).toBe('blocker');
    // The slot goes to the next request, not to the one that left.
    await expectServes(service, 'next');
    expect(await processesWithArgument(never)).toEqual([]);
    // Logged as a request that ended because its client left.
    await until(() => service.logEntries().some((entry) => entry.outcome === 'killed' && entry.httpRequest?.requestUrl === '/execute'));
    const after = await health(service);
    expect({ in_flight: after.in_flight, queued: after.queued }).toEqual({ in_flight: 0, queued: 0 });
  });

  test('clients that leave in the middle of a large answer: the service goes on', async () => {
    // About 6 MiB of answer (stdout and result), more than the socket buffers hold.
    const big = py('def main():', "    print('o' * (3 << 20))", "    return 'r' * (3 << 20)");
    const body = JSON.stringify({ script: big });
    const leave = () =>
      new Promise<number>((resolve, reject) => {
        const socket = net.connect(Number(new URL(service.url).port), '127.0.0.1');
        let received = 0;
        socket.on('error', reject);
        socket.on('data', (chunk: Buffer) => {
          received += chunk.length;
          // The answer has begun: stop reading (its writes back up), then leave.
          socket.pause();
          setTimeout(() => {
            socket.destroy();
            resolve(received);
          }, 50);
        });
        socket.write(`POST /execute HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
      });
    const received = await Promise.all([leave(), leave(), leave()]);
    for (const bytes of received) expect(bytes).toBeGreaterThan(0);
    await until(async () => {
      const now = await health(service);
      return now.in_flight === 0 && now.queued === 0;
    });
    await expectServes(service, 'after the leavers');
    // Each was run and answered 200 as far as the service knows (the log says so), none an internal error.
    await until(() => service.logEntries().filter((entry) => entry.httpRequest?.requestUrl === '/execute' && entry.script_bytes === Buffer.byteLength(big)).length === 3);
    const lines = service.logEntries().filter((entry) => entry.httpRequest?.requestUrl === '/execute' && entry.script_bytes === Buffer.byteLength(big));
    expect(lines.map((line) => line.httpRequest.status)).toEqual([200, 200, 200]);
    expect(service.process.exitCode).toBeNull();
  });
});

/* ------------------------------------------------------------------ a runner that spoils its channel */

/** The runner's own Channel object, found from inside the script (the script runs in the runner's process). */
const CHANNEL = '    channel = next(o for o in gc.get_objects() if type(o).__name__ == "Channel")';

describe.each(sandboxModes().flatMap((mode) => [`${mode} cold`, `${mode} warm`]))('a runner that writes garbage on its channel, or never finishes writing (%s)', (variant) => {
  const [mode, runPath] = variant.split(' ') as [string, 'cold' | 'warm'];
  let service: RunningService;
  beforeAll(async () => {
    service = await startService({ SCRIPT_TIMEOUT_MS: '3000', RESULT_MAX_BYTES: '1024' }, mode, [], { path: runPath });
  });
  afterAll(async () => {
    await service?.stop();
  });

  const cases: Array<[string, string[], { status: number; type: string }]> = [
    ['bytes that are not JSON, then exits', ['    channel.send_raw(b"\\x00\\xff\\xfe garbage {{{ ]]] \\x1e\\n")', '    os._exit(0)'], { status: 422, type: 'killed' }],
    ['half a message, then exits', ['    channel.send_raw(b\'{"status":"ok","cpu_ms":1,"layers":{},"result":\')', '    os._exit(0)'], { status: 422, type: 'killed' }],
    // The channel holds the result and the returned files (protocol.ts: channelMaxBytes, about 13 MiB with the default caps).
    ['more garbage than the channel holds, then exits', ['    channel.send_raw(b"z" * (32 << 20))', '    os._exit(0)'], { status: 422, type: 'result_too_large' }],
    ['half a message, then never another byte', ['    channel.send_raw(b\'{"status":"ok","result":\')', '    time.sleep(600)'], { status: 422, type: 'timeout' }],
    ['closes its channel without a word and runs on', ['    os.close(channel.fd)', '    time.sleep(600)'], { status: 422, type: 'timeout' }],
  ];
  test.each(cases)('%s: an error answer, never a forged result, and the next run is fine', async (_name, lines, expected) => {
    const answer = await execute(service, py('import gc, os, time', 'def main():', CHANNEL, ...lines));
    expect({ status: answer.status, type: answer.body?.error?.type }).toEqual(expected);
    expect(answer.body.result).toBeUndefined();
    await expectServes(service);
  });
});
