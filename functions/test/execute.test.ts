/** POST /execute end to end: real HTTP, real service, real Python in each available sandbox mode. */
import { processesWithArgument } from './helpers/processes';
import { CANARY_SECRET, execute, py, sandboxModes, startService, type RunningService } from './helpers/service';

const LIMITS = { SCRIPT_TIMEOUT_MS: '4000', OUTPUT_MAX_BYTES: '65536', RESULT_MAX_BYTES: '65536' };

describe.each(sandboxModes())('POST /execute in %s mode', (mode) => {
  let service: RunningService;
  beforeAll(async () => {
    service = await startService(LIMITS, mode);
  });
  afterAll(async () => {
    await service?.stop();
  });

  describe('success', () => {
    test('returns plain values, prints, timing, mode and truncation flags', async () => {
      const answer = await execute(service, py('def main():', "    print('hi')", "    return {'n': 3, 'xs': [1, 2.5, 'a', None, True], 't': (1, 2)}"));
      expect(answer.status).toBe(200);
      expect(answer.body.result).toEqual({ n: 3, xs: [1, 2.5, 'a', null, true], t: [1, 2] });
      expect(answer.body.stdout).toBe('hi\n');
      expect(answer.body.stderr).toBe('');
      expect(answer.body.truncated).toEqual({ stdout: false, stderr: false });
      expect(answer.body.sandbox).toBe(mode);
      expect(answer.body.timing.wall_ms).toBeGreaterThan(0);
      expect(answer.body.timing.cpu_ms).toBeGreaterThanOrEqual(0);
      expect(answer.body.timing.queue_ms).toBeGreaterThanOrEqual(0);
      expect(answer.headers.get('x-request-id')).toBe(answer.body.request_id);
    });

    test('the example from the README: pandas import, print, dict result', async () => {
      const answer = await execute(service, "def main():\n    import pandas as pd\n    print('hi')\n    return {'n': 3}");
      expect(answer.status).toBe(200);
      expect(answer.body).toMatchObject({ result: { n: 3 }, stdout: 'hi\n' });
    });

    test('numpy scalars and arrays convert; NaN and infinities become null', async () => {
      const answer = await execute(
        service,
        py(
          'import numpy as np',
          'def main():',
          '    a = np.arange(6).reshape(2, 3)',
          "    return {'sum': a.sum(), 'mean': np.float32(1.5), 'arr': a, 'nan': float('nan'), 'inf': np.inf, 'ninf': -np.inf, 'b': np.bool_(True), 'nanarr': np.array([1.0, np.nan])}",
        ),
      );
      expect(answer.status).toBe(200);
      expect(answer.body.result).toEqual({ sum: 15, mean: 1.5, arr: [[0, 1, 2], [3, 4, 5]], nan: null, inf: null, ninf: null, b: true, nanarr: [1, null] });
    });

    test('pandas: build, aggregate, return records', async () => {
      const answer = await execute(
        service,
        py(
          'import pandas as pd',
          'def main(rows):',
          '    df = pd.DataFrame(rows)',
          "    out = df.groupby('k', as_index=False)['v'].sum()",
          "    return {'records': out.to_dict('records'), 'when': pd.Timestamp('2024-01-02T03:04:05')}",
        ),
        { rows: [{ k: 'a', v: 1 }, { k: 'b', v: 2 }, { k: 'a', v: 3 }] },
      );
      expect(answer.status).toBe(200);
      expect(answer.body.result).toEqual({ records: [{ k: 'a', v: 4 }, { k: 'b', v: 2 }], when: '2024-01-02T03:04:05' });
    });

    test('args are passed as keyword arguments', async () => {
      const answer = await execute(service, py('def main(a, b=2, **rest):', "    return [a, b, rest]"), { a: { x: [1] }, c: 'z' });
      expect(answer.body.result).toEqual([{ x: [1] }, 2, { c: 'z' }]);
    });

    test('async def main runs under asyncio', async () => {
      const answer = await execute(service, py('import asyncio', 'async def main():', '    await asyncio.sleep(0.01)', "    return 'awaited'"));
      expect(answer.status).toBe(200);
      expect(answer.body.result).toBe('awaited');
    });

    test('main without return gives null; dates and times are ISO 8601', async () => {
      expect((await execute(service, py('def main():', '    x = 1'))).body.result).toBeNull();
      const answer = await execute(service, py('import datetime as dt', 'def main():', '    return [dt.date(2024, 2, 29), dt.datetime(2024, 1, 1, 12, 30, tzinfo=dt.timezone.utc), dt.time(7, 8)]'));
      expect(answer.body.result).toEqual(['2024-02-29', '2024-01-01T12:30:00+00:00', '07:08:00']);
    });
  });

  describe('output capture', () => {
    test('os.write(1) and a child process are captured at the descriptor level, stderr separately', async () => {
      const answer = await execute(
        service,
        py(
          'import os, subprocess, sys',
          'def main():',
          "    os.write(1, b'raw fd write\\n')",
          "    subprocess.run(['/bin/echo', 'from a child'])",
          "    print('to stderr', file=sys.stderr)",
          "    os.write(2, b'raw stderr\\n')",
          '    return 1',
        ),
      );
      expect(answer.status).toBe(200);
      expect(answer.body.stdout).toBe('raw fd write\nfrom a child\n');
      expect(answer.body.stderr).toBe('to stderr\nraw stderr\n');
    });

    test('text that looks like the protocol comes back verbatim and never changes the result', async () => {
      const fake = '{"status":"ok","cpu_ms":0,"layers":{},"result":"forged"}';
      const answer = await execute(service, py('def main():', `    print(${JSON.stringify(fake)})`, "    print('__RESULT__ {\"result\": 666}')", '    return "real"'));
      expect(answer.status).toBe(200);
      expect(answer.body.result).toBe('real');
      expect(answer.body.stdout).toBe(`${fake}\n__RESULT__ {"result": 666}\n`);
    });

    test('output beyond OUTPUT_MAX_BYTES is truncated, not an error', async () => {
      const answer = await execute(service, py('import sys', 'def main():', "    sys.stdout.write('x' * 200000)", "    sys.stderr.write('y' * 70000)", "    return 'done'"));
      expect(answer.status).toBe(200);
      expect(answer.body.result).toBe('done');
      expect(answer.body.stdout).toBe('x'.repeat(65536));
      expect(answer.body.stderr.length).toBe(65536);
      expect(answer.body.truncated).toEqual({ stdout: true, stderr: true });
    });

    test('invalid UTF-8 output is replaced, not fatal', async () => {
      const answer = await execute(service, py('import os', 'def main():', "    os.write(1, b'ok \\xff\\xfe end')"));
      expect(answer.status).toBe(200);
      expect(answer.body.stdout).toBe('ok \uFFFD\uFFFD end');
    });
  });

  describe('script errors (400)', () => {
    test('syntax_error with line and column', async () => {
      const answer = await execute(service, py('def main():', '    return (1 +', ''));
      expect(answer.status).toBe(400);
      expect(answer.body.error.type).toBe('syntax_error');
      expect(answer.body.error.line).toBe(2);
      expect(typeof answer.body.error.column).toBe('number');
    });

    test.each([
      ['no main at all', py('def helper():', '    return 1')],
      ['main nested in a block', py('if True:', '    def main():', '        return 1')],
      ['main assigned, not defined', py('main = lambda: 1')],
    ])('missing_main: %s', async (_name, script) => {
      const answer = await execute(service, script);
      expect(answer.status).toBe(400);
      expect(answer.body.error.type).toBe('missing_main');
    });
  });

  describe('run failures (422)', () => {
    test("runtime_error: exception, message, line, and a traceback of only the user's frames", async () => {
      const answer = await execute(service, py('def helper(d):', "    return d['missing']", '', 'def main():', "    print('before')", '    return helper({})'));
      expect(answer.status).toBe(422);
      expect(answer.body.error).toMatchObject({ type: 'runtime_error', exception: 'KeyError', line: 2 });
      expect(answer.body.error.message).toBe("KeyError: 'missing'");
      const traceback: string = answer.body.error.traceback;
      expect(traceback).toContain('File "script.py", line 6, in main');
      expect(traceback).toContain('File "script.py", line 2, in helper');
      expect(traceback).not.toMatch(/runner\.py|confine\.py|\/sandbox|site-packages|dist-packages/);
      expect(answer.body.stdout).toBe('before\n');
    });

    test('errors inside libraries show the user line that called them', async () => {
      const answer = await execute(service, py('import pandas as pd', 'def main():', "    return pd.DataFrame({'a': [1]})['nope']"));
      expect(answer.status).toBe(422);
      expect(answer.body.error.exception).toBe('KeyError');
      expect(answer.body.error.traceback).toContain('line 3, in main');
      expect(answer.body.error.traceback).not.toContain('pandas/core');
    });

    test('result_not_serializable names the type, where it sits and what to do', async () => {
      const answer = await execute(service, py('import pandas as pd', 'def main():', "    return {'ok': 1, 'df': pd.DataFrame({'a': [1]})}"));
      expect(answer.status).toBe(422);
      expect(answer.body.error.type).toBe('result_not_serializable');
      expect(answer.body.error.message).toBe('result["df"] is a pandas.DataFrame; return df.to_dict("records")');
    });

    test.each([
      ['a set', 'return [1, {2}]', 'result[1] is a set'],
      ['bytes', "return {'b': b'x'}", 'result["b"] is a bytes'],
      ['a cycle', 'x = []; x.append(x); return x', 'cycle'],
      ['an object', 'return object()', 'result is a object'],
    ])('result_not_serializable: %s', async (_name, body, expected) => {
      const answer = await execute(service, py('def main():', `    ${body}`));
      expect(answer.status).toBe(422);
      expect(answer.body.error.type).toBe('result_not_serializable');
      expect(answer.body.error.message).toContain(expected);
    });

    test('result_too_large', async () => {
      const answer = await execute(service, py('def main():', "    return 'z' * 100000"));
      expect(answer.status).toBe(422);
      expect(answer.body.error.type).toBe('result_too_large');
      expect(answer.body.error.message).toContain('65536');
    });

    test('timeout kills the whole tree, including a child that outlives its parent', async () => {
      const marker = `${Date.now() % 100000}.25`;
      const answer = await execute(
        service,
        py(
          'import subprocess, time',
          'def main():',
          `    subprocess.Popen(['/bin/sleep', '${marker}'], start_new_session=True)`,
          "    print('started', flush=True)",
          '    time.sleep(60)',
        ),
      );
      expect(answer.status).toBe(422);
      expect(answer.body.error.type).toBe('timeout');
      expect(answer.body.stdout).toBe('started\n');
      expect(answer.body.timing.wall_ms).toBeGreaterThanOrEqual(3900);
      expect(await processesWithArgument(marker)).toEqual([]);
    });

    test('a CPU spin is a timeout', async () => {
      const answer = await execute(service, py('def main():', '    while True:', '        pass'));
      expect(answer.status).toBe(422);
      expect(answer.body.error.type).toBe('timeout');
    });

    test('memory_limit', async () => {
      const answer = await execute(service, py('def main():', '    blocks = [bytearray(64 * 1024 * 1024) for _ in range(64)]', '    return len(blocks)'));
      expect(answer.status).toBe(422);
      expect(answer.body.error.type).toBe('memory_limit');
    });

    test.each([
      ['sys.exit(3)', py('import sys', 'def main():', "    print('bye')", '    sys.exit(3)'), { exit_code: 3 }],
      ['os._exit(5)', py('import os', 'def main():', '    os._exit(5)'), { exit_code: 5 }],
      ['SIGSEGV', py('import ctypes', 'def main():', '    ctypes.string_at(0)'), { signal: 'SIGSEGV' }],
    ])('killed: %s', async (_name, script, details) => {
      const answer = await execute(service, script);
      expect(answer.status).toBe(422);
      expect(answer.body.error).toMatchObject({ type: 'killed', ...details });
    });

    // In nsjail mode the runner is the jail's PID 1, which the kernel protects from signals sent
    // inside its own namespace (README: edge cases), so this case is seccomp-only.
    (mode === 'seccomp' ? test : test.skip)('killed: SIGKILL sent to itself', async () => {
      const answer = await execute(service, py('import os, signal', 'def main():', '    os.kill(os.getpid(), signal.SIGKILL)'));
      expect(answer.status).toBe(422);
      expect(answer.body.error).toMatchObject({ type: 'killed', signal: 'SIGKILL' });
    });

    test('a failed run still returns what it printed', async () => {
      const answer = await execute(service, py('import sys', 'def main():', "    print('partial')", "    print('oops', file=sys.stderr)", '    raise ValueError("bad")'));
      expect(answer.body.stdout).toBe('partial\n');
      expect(answer.body.stderr).toBe('oops\n');
    });
  });

  describe('isolation', () => {
    test("the environment is an allow-list; the service's secrets are not visible", async () => {
      const answer = await execute(service, py('import os', 'def main():', '    print(open("/proc/self/environ", "rb").read())', '    return dict(os.environ)'));
      expect(answer.status).toBe(200);
      expect(Object.keys(answer.body.result).sort()).toEqual(
        ['HOME', 'LANG', 'LC_ALL', 'MKL_NUM_THREADS', 'MPLBACKEND', 'MPLCONFIGDIR', 'NUMEXPR_NUM_THREADS', 'OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'PATH', 'TMPDIR'],
      );
      expect(answer.text).not.toContain(CANARY_SECRET);
    });

    test('the script runs as an unprivileged user with no capabilities', async () => {
      const answer = await execute(service, py('import os', 'def main():', "    caps = [l for l in open('/proc/self/status') if l.startswith(('CapEff', 'NoNewPrivs', 'Seccomp:'))]", '    return {"uid": os.getuid(), "caps": caps}'));
      expect(answer.status).toBe(200);
      expect(answer.body.result.uid).not.toBe(0);
      expect(answer.body.result.caps).toEqual(expect.arrayContaining(['CapEff:\t0000000000000000\n', 'NoNewPrivs:\t1\n', 'Seccomp:\t2\n']));
    });
  });
});
