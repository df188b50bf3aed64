/**
 * Persistence between runs and isolation between concurrent runs: nothing a run leaves (files,
 * daemons, IPC objects) is there for the next one, and two runs at once see neither each
 * other's files nor processes.
 */
import { sandboxModes } from '../helpers/service';
import { attack, attackCase, execute, filesOfUids, processesOfUids, processesWithArgument, py, SECURITY_LIMITS, startService, TRY, uidBase, waitFor, type RunningService } from './helpers';

describe.each(sandboxModes())('security: persistence and concurrency in %s mode', (mode) => {
  let service: RunningService;
  const base = uidBase();
  beforeAll(async () => {
    service = await startService({ ...SECURITY_LIMITS, SANDBOX_UID_BASE: String(base) }, mode);
  });
  afterAll(async () => {
    await service?.stop();
  });
  const c = (category: string, name: string, layer: Parameters<typeof attackCase>[2], body: () => Promise<void>, timeoutMs?: number) =>
    attackCase(category, name, layer, mode, () => service, body, timeoutMs);
  const noneLeft = async () => (await processesOfUids(base, 64, service)).length === 0;

  c('persistence', 'files in the private dir, $HOME, $TMPDIR and a user site .pth are gone for the next run', { seccomp: "the slot's /tmp emptied", nsjail: 'per-run tmpfs' }, async () => {
    const first = await attack(
      service,
      py(
        'import os, sys',
        'def main():',
        "    for d in {os.getcwd(), os.environ['HOME'], os.environ['TMPDIR']}:",
        "        open(os.path.join(d, 'planted.txt'), 'w').write('from run 1')",
        "    site = os.path.join(os.environ['HOME'], '.local/lib/python%d.%d/site-packages' % sys.version_info[:2])",
        '    os.makedirs(site, exist_ok=True)',
        "    open(os.path.join(site, 'evil.pth'), 'w').write('import os; os.environ[\"PWNED\"] = \"1\"')",
        '    return os.getcwd()',
      ),
    );
    expect(first.status).toBe(200);
    const second = await attack(service, py('import os, glob', 'def main():', "    return {'pwned': os.environ.get('PWNED'), 'left': glob.glob(os.path.join(os.getcwd(), '**'), recursive=True)}"));
    expect(second.body.result.pwned).toBeNull();
    expect(second.body.result.left.filter((p: string) => /planted|evil/.test(p))).toEqual([]);
    // Its working directory is its own /tmp (seccomp mode: in its slot's root, emptied after the run).
    expect(first.body.result).toBe('/tmp');
  });

  c('persistence', 'a daemon by double fork + setsid (exec of sleep) does not outlive the run', 'uid reaper (kill -1 as the run uid); pid namespace in nsjail', async () => {
    const marker = `${(Date.now() % 100000) + 0.5}`;
    const answer = await attack(
      service,
      py(
        'import os',
        'def main(marker):',
        '    if os.fork() == 0:',
        '        os.setsid()',
        '        if os.fork() == 0:',
        "            os.execv('/bin/sleep', ['sleep', marker])",
        '        os._exit(0)',
        "    return 'spawned'",
      ),
      { marker },
    );
    expect(answer.body.result).toBe('spawned');
    expect(await waitFor(async () => (await processesWithArgument(marker)).length === 0, 2000)).toBe(true);
    expect(await waitFor(noneLeft, 2000)).toBe(true);
  });

  c('persistence', 'a Python daemon ignoring SIGTERM/SIGHUP, in a new session, does not outlive the run', 'uid reaper (SIGKILL); pid namespace in nsjail', async () => {
    const answer = await attack(
      service,
      py(
        'import os, signal, time',
        'def main():',
        '    if os.fork() == 0:',
        '        os.setsid()',
        '        for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):',
        '            signal.signal(s, signal.SIG_IGN)',
        '        if os.fork() == 0:',
        '            while True:',
        '                time.sleep(0.05)',
        '        os._exit(0)',
        "    return 'spawned'",
      ),
    );
    expect(answer.body.result).toBe('spawned');
    expect(await waitFor(noneLeft, 2000)).toBe(true);
  });

  c(
    'persistence',
    "a thread that outlives its process's main thread (raw exit of the leader) after sending a result: the answer waits, nothing outlives it, no slot is lost",
    'service: every thread of the uid must be exiting (not only the leader); watchdog; uid reaper',
    async () => {
      const capacity: number = (await (await fetch(`${service.url}/healthz`)).json()).capacity;
      const lingerer = py(
        'import os, threading, time, ctypes, json',
        'def main():',
        '    def is_open(fd):',
        '        try:',
        '            os.fstat(fd)',
        '            return True',
        '        except OSError:',
        '            return False',
        "    channel = max(fd for fd in range(3, 1 << 16) if is_open(fd))  # the runner's, moved high (no /proc in seccomp mode)",
        '    def linger():',
        '        time.sleep(0.2)  # the leader has exited by now: /proc/<pid>/stat shows a zombie',
        "        os.write(channel, json.dumps({'status': 'ok', 'cpu_ms': 0, 'layers': {}, 'result': 42}).encode())",
        '        for fd in (1, 2, channel):',
        '            os.close(fd)',
        '        while True:',
        '            time.sleep(3600)  # no CPU: RLIMIT_CPU would never end it',
        '    threading.Thread(target=linger).start()',
        '    ctypes.CDLL(None).syscall(60, 0)  # SYS_exit: the calling thread only',
      );
      // One on every slot at once: before the fix each held its slot for good.
      const answers = await Promise.all(Array.from({ length: capacity }, () => attack(service, lingerer)));
      for (const answer of answers) {
        // The result is the script's own to send; but the answer waited for the watchdog
        // (SCRIPT_TIMEOUT_MS 3000) to end the thread, instead of leaving it running.
        expect(answer.status).toBe(200);
        expect(answer.body.result).toBe(42);
        expect(answer.body.timing.wall_ms).toBeGreaterThanOrEqual(2500);
      }
      expect(await waitFor(noneLeft, 3000)).toBe(true);
      const after = await Promise.all(Array.from({ length: 2 * capacity }, () => execute(service, py('def main():', "    return 'free'"))));
      expect(after.map((answer) => answer.body.result)).toEqual(Array(2 * capacity).fill('free'));
    },
    20000,
  );

  c('persistence', "the zygote's state (other children's tokens, pending commands) is not on a warm child's stack", 'the zygote unwinds its loop before the child runs', async () => {
    const answer = await attack(
      service,
      py(
        'import sys',
        'def main():',
        '    names, frame = [], sys._getframe()',
        '    while frame is not None:',
        '        names += list(frame.f_locals)',
        '        frame = frame.f_back',
        "    return sorted(set(names) & {'tokens', 'pending', 'line', 'readable'})",
      ),
    );
    expect(answer.body.result).toEqual([]);
  });

  c('persistence', 'SysV shared memory, message queues and semaphores (outlive a run in the host IPC namespace)', 'seccomp (SysV IPC denied, ENOSYS)', async () => {
    const answer = await attack(
      service,
      py(TRY, 'def main():', "    return {'shmget': raw_syscall(29, 0x5EC, 4096, 0o1666), 'msgget': raw_syscall(68, 0x5EC, 0o1666), 'semget': raw_syscall(64, 0x5EC, 1, 0o1666)}"),
    );
    expect(answer.body.result).toEqual({ shmget: 'ENOSYS', msgget: 'ENOSYS', semget: 'ENOSYS' });
  });

  c('persistence', 'POSIX message queues (mq_open)', 'seccomp (mq_open denied, ENOSYS)', async () => {
    const answer = await attack(service, py(TRY, 'def main():', "    return raw_syscall(240, ctypes.cast(ctypes.c_char_p(b'/sec-mq'), ctypes.c_void_p).value, 0o100 | 2, 0o666, 0)"));
    expect(answer.body.result).toBe('ENOSYS');
  });

  c('persistence', 'files in /tmp, /var/tmp, /dev/shm of the host are not left behind', { seccomp: 'Landlock; uid reaper', nsjail: 'private tmpfs' }, async () => {
    await attack(service, py(TRY, 'def main():', "    return [attempt(lambda: open(p + '/sec-left', 'w').write('x')) for p in ('/tmp', '/var/tmp', '/dev/shm')]"));
    expect(await filesOfUids(base)).toEqual([]);
  });

  c('concurrency', "two runs at once: neither sees the other's files or processes", { seccomp: 'per-run uid; 0700 dirs; Landlock (/proc/self only)', nsjail: 'pid and mount namespaces' }, async () => {
    const secret = `secret-${Math.random()}`;
    const holder = attack(service, py('import os, time', 'def main(secret):', "    open('secret.txt', 'w').write(secret)", '    time.sleep(1.5)', '    return os.getpid()'), { secret });
    await new Promise((r) => setTimeout(r, 500));
    const spy = await attack(
      service,
      py(
        TRY,
        'import glob',
        'def main():',
        '    me = os.getpid()',
        '    seen, files = [], []',
        '    try:',
        "        pids = [p for p in os.listdir('/proc') if p.isdigit()]",
        '    except OSError:  # seccomp mode: /proc cannot be listed; guess the neighbours',
        '        pids = [str(p) for p in range(max(2, me - 300), me + 300)]',
        '    for pid in pids:',
        '        try:',
        "            cmd = open(f'/proc/{pid}/cmdline', 'rb').read()",
        '        except OSError:',
        '            continue',
        "        if b'runner.py' in cmd and int(pid) != me:",
        '            seen.append(pid)',
        "        for p in (f'/proc/{pid}/cwd/secret.txt', f'/proc/{pid}/root/tmp/secret.txt'):",
        '            try:',
        '                files.append(open(p).read())',
        '            except OSError:',
        '                pass',
        "    files += [open(p).read() for p in glob.glob('/tmp/pyexec-runs/*/secret.txt') if os.access(p, os.R_OK)]",
        "    return {'runners_seen': seen, 'files': files}",
      ),
    );
    const held = await holder;
    expect(held.status).toBe(200);
    expect(spy.body.result.files).toEqual([]);
    expect(spy.body.result.runners_seen).toEqual([]);
    expect(spy.text).not.toContain(secret);
  });
});
