/**
 * Resource exhaustion: every attack ends (by its limit, not by the test's timeout), within the
 * caps, and the host keeps serving. Each case asserts the run's answer and the service's health
 * afterwards; none leaves a process behind. How long they take is npm run bench's business.
 */
import { sandboxModes } from '../helpers/service';
import { attack, attackCase, processesOfUids, py, SECURITY_LIMITS, startService, TRY, uidBase, waitFor, type Layer, type RunningService } from './helpers';

describe.each(sandboxModes())('security: resource exhaustion in %s mode', (mode) => {
  let service: RunningService;
  const base = uidBase();
  beforeAll(async () => {
    service = await startService({ ...SECURITY_LIMITS, SANDBOX_UID_BASE: String(base) }, mode);
  });
  afterAll(async () => {
    await service?.stop();
  });
  const c = (name: string, layer: Layer, body: () => Promise<void>) =>
    attackCase(
      'exhaustion',
      name,
      layer,
      mode,
      () => service,
      async () => {
        await body();
        expect(await waitFor(async () => (await processesOfUids(base, 64, service)).length === 0, 2000)).toBe(true);
      },
      20000,
    );

  c('fork bomb', 'RLIMIT_NPROC; service watchdog; uid reaper', async () => {
    const answer = await attack(service, py('import os', 'def main():', '    while True:', '        try:', '            os.fork()', '        except OSError:', '            pass'));
    expect(answer.status).toBe(422);
    expect(answer.body.error.type).toMatch(/^(timeout|killed)$/);
  });

  c('thread bomb', 'RLIMIT_NPROC (threads count)', async () => {
    const answer = await attack(
      service,
      py(
        'import threading, time',
        'def main():',
        '    n = 0',
        '    try:',
        '        while True:',
        '            threading.Thread(target=time.sleep, args=(30,), daemon=True).start()',
        '            n += 1',
        '    except RuntimeError as e:',
        '        return n',
      ),
    );
    expect(answer.status).toBe(200);
    expect(answer.body.result).toBeLessThan(64);
  });

  c('one huge allocation', 'RLIMIT_AS', async () => {
    const answer = await attack(service, py('def main():', '    return len(bytearray(8 * 1024 ** 3))'));
    expect(answer.status).toBe(422);
    expect(answer.body.error.type).toBe('memory_limit');
  });

  c('memory spread over forked children (each under RLIMIT_AS)', { seccomp: 'usage sampler (aggregate memory)', nsjail: 'usage sampler (cgroup v2 where available)' }, async () => {
    const answer = await attack(
      service,
      py(
        'import os, time',
        'def main():',
        '    for i in range(30):',
        '        if os.fork() == 0:',
        '            try:',
        '                b = bytearray(400 << 20)',
        "                b[::4096] = b'\\x01' * (len(b) // 4096)  # every page touched, at C speed",
        '            except MemoryError:',
        '                pass',
        '            time.sleep(30)',
        '    time.sleep(30)',
      ),
    );
    expect(answer.status).toBe(422);
    expect(answer.body.error.type).toBe('memory_limit');
  });

  c('CPU spin that ignores SIGTERM, SIGXCPU and SIGINT', 'RLIMIT_CPU hard limit (SIGKILL); service watchdog', async () => {
    const answer = await attack(
      service,
      py('import signal', 'def main():', '    for s in (signal.SIGTERM, signal.SIGXCPU, signal.SIGINT, signal.SIGHUP):', '        signal.signal(s, signal.SIG_IGN)', '    while True:', '        pass'),
    );
    expect(answer.status).toBe(422);
    expect(answer.body.error.type).toBe('timeout');
  });

  c('sleep forever', 'service watchdog (wall clock)', async () => {
    const answer = await attack(service, py('import time', 'def main():', '    time.sleep(3600)'));
    expect(answer.body.error.type).toBe('timeout');
  });

  c('disk fill in the private directory', { seccomp: 'usage sampler (SCRIPT_TMP_MB); RLIMIT_FSIZE', nsjail: 'tmpfs size cap' }, async () => {
    const answer = await attack(
      service,
      py(
        TRY,
        'def main():',
        "    blob = b'x' * (1 << 20)",
        '    n = 0',
        '    try:',
        '        while True:',
        "            with open(f'fill{n}', 'wb') as f:",
        '                for _ in range(8):',
        '                    f.write(blob)',
        '            n += 1',
        '    except OSError as e:',
        "        return {'mb': n * 8, 'errno': e.errno}",
      ),
    );
    if (answer.status === 200) {
      expect(answer.body.result.mb).toBeLessThanOrEqual(64);
    } else {
      expect(answer.body.error.type).toBe('killed');
      expect(answer.body.error.message).toContain("run's files took more than 64 MiB");
    }
  });

  c('one file past RLIMIT_FSIZE', 'RLIMIT_FSIZE (EFBIG, SIGXFSZ ignored by Python)', async () => {
    const answer = await attack(service, py(TRY, 'def main():', "    f = open('big', 'wb')", "    return attempt(lambda: f.write(b'x' * (40 << 20)))"));
    expect(answer.status).toBe(200);
    expect(answer.body.result.ok).toBe(false);
  });

  c('many small files (inode exhaustion)', { seccomp: 'usage sampler (10000 entries)', nsjail: 'tmpfs nr_inodes cap' }, async () => {
    const answer = await attack(
      service,
      py('import os', 'def main():', '    n = 0', '    try:', '        while True:', "            open(f'f{n}', 'w').close()", '            n += 1', '    except OSError:', '        return n'),
    );
    // Stopped at the cap, or (on a slow host) by the time limit before reaching it.
    if (answer.status === 200) expect(answer.body.result).toBeLessThanOrEqual(10000);
    else if (answer.body.error.type === 'killed') expect(answer.body.error.message).toContain('more than 10000 files');
    else expect(answer.body.error.type).toBe('timeout');
  });

  c('file descriptor exhaustion', 'RLIMIT_NOFILE', async () => {
    const answer = await attack(
      service,
      py('def main():', '    fs = []', '    try:', '        while True:', "            fs.append(open('/dev/null'))", '    except OSError as e:', '        return [len(fs), e.errno]'),
    );
    expect(answer.status).toBe(200);
    expect(answer.body.result[0]).toBeLessThan(256);
  });

  c('stdout flood', 'output cap (read and dropped past OUTPUT_MAX_BYTES)', async () => {
    const answer = await attack(service, py('import os', 'def main():', "    chunk = b'A' * 65536", '    for _ in range(2000):', '        os.write(1, chunk)', "    return 'flooded'"));
    expect(answer.status).toBe(200);
    expect(answer.body.truncated.stdout).toBe(true);
    expect(answer.body.stdout.length).toBe(65536);
  });

  c('stderr flood from a child process that outlives main()', 'output cap; uid reaper ends the writer', async () => {
    const answer = await attack(service, py('import subprocess', 'def main():', "    subprocess.Popen(['/usr/bin/yes', 'E' * 200], stdout=2)", "    return 'left it running'"));
    expect(answer.status).toBe(200);
    expect(answer.body.stderr.length).toBeLessThanOrEqual(65536);
  });

  c('huge result', 'result size cap (runner and channel cap)', async () => {
    const answer = await attack(service, py('def main():', "    return ['x' * 1000] * 100000"));
    expect(answer.status).toBe(422);
    expect(answer.body.error.type).toBe('result_too_large');
  });

  c('deep recursion', 'Python recursion limit; RLIMIT_STACK', async () => {
    const answer = await attack(service, py('import sys', 'def f(n):', '    return f(n + 1)', 'def main():', '    sys.setrecursionlimit(10 ** 6)', '    return f(0)'));
    expect(answer.status).toBe(422);
    expect(answer.body.error.type).toMatch(/^(runtime_error|killed|memory_limit|timeout)$/);
  });

  c('a deeply nested result', 'jsonify depth limit', async () => {
    const answer = await attack(service, py('def main():', '    x = []', '    for _ in range(100000):', '        x = [x]', '    return x'));
    expect(answer.status).toBe(422);
    expect(answer.body.error.type).toBe('result_not_serializable');
  });

  c('decompression bomb (1 GiB of zeros from a few MB)', 'RLIMIT_AS', async () => {
    const answer = await attack(
      service,
      py(
        'import zlib',
        'def main():',
        '    c = zlib.compressobj(1)',
        '    chunk = bytes(1 << 20)',
        '    data = b"".join(c.compress(chunk) for _ in range(1024)) + c.flush()',
        '    return len(zlib.decompress(data))',
      ),
    );
    expect(answer.status).toBe(422);
    expect(answer.body.error.type).toMatch(/^(memory_limit|timeout)$/);
  });

  c('a huge script source and argument', 'request size cap (413)', async () => {
    // Just over the default REQUEST_MAX_BYTES (1 MiB): the service answers 413 from the declared
    // length and closes without reading; a body far larger may still be uploading then, and the
    // client sees EPIPE instead of the answer (seen once under load with 2 MiB).
    const answer = await attack(service, py('def main(x):', '    return len(x)'), { x: 'y'.repeat(1024 * 1024 + 16 * 1024) });
    expect(answer.status).toBe(413);
  });
});
