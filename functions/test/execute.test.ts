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
      expect(answer.body.truncated).toEqual({ stdout: false, stderr: false, files: false });
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
      expect(answer.body.result).toEqual({
        sum: 15,
        mean: 1.5,
        arr: [
          [0, 1, 2],
          [3, 4, 5],
        ],
        nan: null,
        inf: null,
        ninf: null,
        b: true,
        nanarr: [1, null],
      });
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
        {
          rows: [
            { k: 'a', v: 1 },
            { k: 'b', v: 2 },
            { k: 'a', v: 3 },
          ],
        },
      );
      expect(answer.status).toBe(200);
      expect(answer.body.result).toEqual({
        records: [
          { k: 'a', v: 4 },
          { k: 'b', v: 2 },
        ],
        when: '2024-01-02T03:04:05',
      });
    });

    test('args are passed as keyword arguments', async () => {
      const answer = await execute(service, py('def main(a, b=2, **rest):', '    return [a, b, rest]'), { a: { x: [1] }, c: 'z' });
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

  describe("the sandbox's root: its preinstalled packages do real work", () => {
    test("Python 3.13, the root's interpreter, with HOME, TMPDIR and MPLCONFIGDIR at a writable /tmp", async () => {
      const answer = await execute(
        service,
        py(
          'import os, sys, tempfile',
          'def main():',
          "    return {'v': list(sys.version_info[:2]), 'exe': sys.executable, 'tmp': tempfile.gettempdir(), 'env': [os.environ.get(k) for k in ('HOME', 'TMPDIR', 'MPLCONFIGDIR')]}",
        ),
      );
      expect(answer.status).toBe(200);
      expect(answer.body.result).toEqual({ v: [3, 13], exe: '/usr/bin/python3', tmp: '/tmp', env: ['/tmp', '/tmp', '/tmp'] });
    });

    test('scipy: a minimisation converges', async () => {
      const answer = await execute(
        service,
        py(
          'from scipy.optimize import minimize',
          'def main():',
          '    r = minimize(lambda p: (p[0] - 3) ** 2 + (p[1] + 1) ** 2 + 7, [0.0, 0.0])',
          "    return {'ok': bool(r.success), 'x': [round(float(v), 4) for v in r.x], 'fun': round(float(r.fun), 6)}",
        ),
      );
      expect(answer.status).toBe(200);
      expect(answer.body.result).toEqual({ ok: true, x: [3, -1], fun: 7 });
    });

    test('matplotlib: a PNG written to /tmp and returned as base64', async () => {
      const answer = await execute(
        service,
        py(
          'import base64',
          'import matplotlib',
          'import matplotlib.pyplot as plt',
          'def main():',
          '    fig, ax = plt.subplots()',
          "    ax.plot([1, 2, 3], [4, 1, 9], label='x')",
          '    ax.legend()',
          "    fig.savefig('/tmp/plot.png', dpi=50)",
          "    data = open('/tmp/plot.png', 'rb').read()",
          "    return {'backend': matplotlib.get_backend(), 'png': base64.b64encode(data).decode()}",
        ),
      );
      expect(answer.status).toBe(200);
      expect(answer.body.result.backend.toLowerCase()).toBe('agg');
      const png = Buffer.from(answer.body.result.png, 'base64');
      expect(png.subarray(0, 8)).toEqual(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]));
      expect(png.length).toBeGreaterThan(1000);
    });

    test('openpyxl: a workbook written to /tmp and read back; pandas reads it too', async () => {
      const answer = await execute(
        service,
        py(
          'import openpyxl, pandas as pd',
          'def main():',
          '    wb = openpyxl.Workbook()',
          '    ws = wb.active',
          "    ws.append(['name', 'n'])",
          "    ws.append(['a', 2])",
          "    ws.append(['b', 5])",
          "    wb.save('/tmp/book.xlsx')",
          "    back = openpyxl.load_workbook('/tmp/book.xlsx').active",
          "    df = pd.read_excel('/tmp/book.xlsx')",
          "    return {'cells': [[c.value for c in row] for row in back.iter_rows()], 'sum': int(df['n'].sum())}",
        ),
      );
      expect(answer.status).toBe(200);
      expect(answer.body.result).toEqual({
        cells: [
          ['name', 'n'],
          ['a', 2],
          ['b', 5],
        ],
        sum: 7,
      });
    });

    test('tzdata: a time zone conversion, and pandas with time zones', async () => {
      const answer = await execute(
        service,
        py(
          'from datetime import datetime',
          'from zoneinfo import ZoneInfo',
          'import pandas as pd',
          'def main():',
          "    t = datetime(2024, 7, 1, 12, 0, tzinfo=ZoneInfo('America/New_York')).astimezone(ZoneInfo('Asia/Tokyo'))",
          "    p = pd.Timestamp('2024-01-15 09:30').tz_localize('Europe/Berlin').tz_convert('UTC')",
          "    return {'tokyo': t.isoformat(), 'utc': p.isoformat()}",
        ),
      );
      expect(answer.status).toBe(200);
      expect(answer.body.result).toEqual({ tokyo: '2024-07-02T01:00:00+09:00', utc: '2024-01-15T08:30:00+00:00' });
    });

    test("tempfile, open('/tmp/...', 'w') and a CSV round trip work", async () => {
      const answer = await execute(
        service,
        py(
          'import csv, tempfile, pandas as pd',
          'def main():',
          "    pd.DataFrame({'a': [1, 2], 'b': ['x', 'y']}).to_csv('/tmp/out.csv', index=False)",
          "    with tempfile.NamedTemporaryFile('w', suffix='.txt', delete=False) as f:",
          "        f.write('hello')",
          "    return {'rows': list(csv.reader(open('/tmp/out.csv'))), 'temp': open(f.name).read(), 'dir': f.name.rsplit('/', 1)[0]}",
        ),
      );
      expect(answer.status).toBe(200);
      expect(answer.body.result).toEqual({
        rows: [
          ['a', 'b'],
          ['1', 'x'],
          ['2', 'y'],
        ],
        temp: 'hello',
        dir: '/tmp',
      });
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
      const answer = await execute(service, py('def main():', `    print(${JSON.stringify(fake)})`, '    print(\'__RESULT__ {"result": 666}\')', '    return "real"'));
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
      expect(answer.body.truncated).toEqual({ stdout: true, stderr: true, files: false });
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
        py('import subprocess, time', 'def main():', `    subprocess.Popen(['/bin/sleep', '${marker}'], start_new_session=True)`, "    print('started', flush=True)", '    time.sleep(60)'),
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
      // One allocation far over the limit: refused at once (RLIMIT_AS), so this test does not race
      // the 4 s time limit on a loaded machine. The cgroup's hold on touched memory has its own
      // cases (files.test.ts, security/containment.test.ts).
      const answer = await execute(service, py('def main():', '    block = bytearray(2 * 1024**3)', '    return len(block)'));
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
      // The process's own environment block too, where there is a /proc (seccomp mode's root has none).
      const answer = await execute(
        service,
        py('import os', 'def main():', "    if os.path.exists('/proc/self/environ'):", '        print(open("/proc/self/environ", "rb").read())', '    return dict(os.environ)'),
      );
      expect(answer.status).toBe(200);
      expect(Object.keys(answer.body.result).sort()).toEqual([
        'HOME',
        'LANG',
        'LC_ALL',
        'MKL_NUM_THREADS',
        'MPLBACKEND',
        'MPLCONFIGDIR',
        'NUMEXPR_NUM_THREADS',
        'OMP_NUM_THREADS',
        'OPENBLAS_NUM_THREADS',
        'PATH',
        'TMPDIR',
      ]);
      expect(answer.text).not.toContain(CANARY_SECRET);
    });

    test('the script runs as an unprivileged user with no capabilities', async () => {
      // Asked of the kernel directly (capget, prctl): seccomp mode's root has no /proc to read them from.
      const answer = await execute(
        service,
        py(
          'import ctypes, os',
          'def main():',
          '    libc = ctypes.CDLL(None, use_errno=True)',
          '    header = (ctypes.c_uint32 * 2)(0x20080522, 0)',
          '    data = (ctypes.c_uint32 * 6)()',
          '    assert libc.capget(header, data) == 0',
          "    return {'uid': os.getuid(), 'gid': os.getgid(), 'effective': [data[0], data[3]], 'permitted': [data[1], data[4]], 'no_new_privs': libc.prctl(39, 0, 0, 0, 0), 'seccomp': libc.prctl(21, 0, 0, 0, 0)}",
        ),
      );
      expect(answer.status).toBe(200);
      expect(answer.body.result.uid).not.toBe(0);
      expect(answer.body.result.gid).not.toBe(0);
      expect(answer.body.result).toMatchObject({ effective: [0, 0], permitted: [0, 0], no_new_privs: 1, seccomp: 2 });
    });
  });
});
