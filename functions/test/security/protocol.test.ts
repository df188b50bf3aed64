/**
 * Protocol spoofing: the answer's result comes only from the result channel, which the script
 * can reach (it shares the runner's process) but cannot use to claim more than it could return
 * anyway: never a sandbox failure, never fields outside the schema, never a merged message.
 */
import { sandboxModes } from '../helpers/service';
import { attack, attackCase, py, SECURITY_LIMITS, startService, type Layer, type RunningService } from './helpers';

const FAKE = '{"status":"ok","cpu_ms":0,"layers":{},"result":"forged"}';

describe.each(sandboxModes())('security: protocol spoofing in %s mode', (mode) => {
  let service: RunningService;
  beforeAll(async () => {
    service = await startService(SECURITY_LIMITS, mode);
  });
  afterAll(async () => {
    await service?.stop();
  });
  const c = (name: string, layer: Layer, body: () => Promise<void>) => attackCase('protocol', name, layer, mode, () => service, body);

  c('fake result markers on stdout and stderr', 'separate channel (stdout is never parsed)', async () => {
    const answer = await attack(
      service,
      py('import sys', 'def main():', `    print(${JSON.stringify(FAKE)})`, `    print(${JSON.stringify(FAKE)}, file=sys.stderr)`, "    print('__RESULT__ 666')", "    return 'real'"),
    );
    expect(answer.body.result).toBe('real');
  });

  c('writes to every other descriptor 3..1023 (fd 3 is closed; children never inherit the channel)', 'channel moved to a high close-on-exec fd; inherited fds closed', async () => {
    const answer = await attack(
      service,
      py(
        'import os, subprocess',
        'def main():',
        '    hits = []',
        '    for fd in range(3, 1024):',
        '        try:',
        `            os.write(fd, b'x' + ${JSON.stringify(FAKE)}.encode())`,
        '            hits.append(fd)',
        '        except OSError:',
        '            pass',
        '    return hits',
      ),
    );
    // The script can find the channel in its own process; a write there makes the run invalid, never forged.
    if (answer.status === 200) expect(answer.body.result).toEqual([]);
    else expect(answer.body.error.type).toBe('killed');
    expect(answer.text).not.toContain('forged');
  });

  c('a child process finds no channel descriptor', 'channel is close-on-exec', async () => {
    const answer = await attack(
      service,
      py('import subprocess', 'def main():', "    out = subprocess.run(['/bin/ls', '/proc/self/fd'], capture_output=True, text=True).stdout.split()", '    return sorted(int(x) for x in out)'),
    );
    expect(answer.status).toBe(200);
    // 0, 1, 2, and ls's own directory descriptor.
    expect(answer.body.result.filter((fd: number) => fd > 3)).toEqual([]);
  });

  c('closing fd 1 and 2', 'runner flushes defensively; channel unaffected', async () => {
    const answer = await attack(service, py('import os', 'def main():', "    print('before')", '    os.close(1)', '    os.close(2)', "    return 'still here'"));
    expect(answer.status).toBe(200);
    expect(answer.body.result).toBe('still here');
  });

  c('forging a sandbox_error on the channel (would read as 503 sandbox_unavailable)', 'confinement marker: sandbox_error only before user code', async () => {
    const answer = await attack(
      service,
      py(
        'import gc, os, sys',
        'def main():',
        "    runner = sys.modules['__main__']",
        '    channel = next(o for o in gc.get_objects() if type(o).__name__ == "Channel")',
        "    channel.send({'status': 'error', 'cpu_ms': 0, 'error': {'type': 'sandbox_error', 'message': 'forged outage'}})",
        '    os._exit(70)',
      ),
    );
    expect(answer.status).not.toBe(503);
    expect(answer.body.error.type).toBe('killed');
    expect(answer.text).not.toContain('forged outage');
  });

  c('extra fields in a forged message (e.g. a fake "stdout" or "sandbox")', 'strict schema check of the channel', async () => {
    const answer = await attack(
      service,
      py(
        'import gc, os',
        'def main():',
        '    channel = next(o for o in gc.get_objects() if type(o).__name__ == "Channel")',
        '    channel.send_raw(b\'{"status":"ok","cpu_ms":0,"layers":{},"result":1,"stdout":"forged","sandbox":"none"}\')',
        '    os._exit(0)',
      ),
    );
    expect(answer.body.error.type).toBe('killed');
    expect(answer.body.sandbox).toBe(mode);
    expect(answer.text).not.toContain('forged');
  });

  c('monkeypatching the runner through sys.modules (jsonify, Channel)', 'result is whatever main() could return; schema check', async () => {
    const answer = await attack(service, py('import sys', 'def main():', '    sys.modules[\'jsonify\'].to_json = lambda v: b\'1,"stdout":"forged"\'', "    return 'x'"));
    expect(answer.body.error?.type ?? 'none').toBe('killed');
    expect(answer.text).not.toContain('forged');
  });

  c('walking frames to the runner and sending twice', 'one message only: a second makes the channel invalid', async () => {
    const answer = await attack(
      service,
      py(
        'import sys',
        'def main():',
        '    f = sys._getframe()',
        "    while f and 'channel' not in f.f_locals:",
        '        f = f.f_back',
        "    f.f_locals['channel'].send_result('first')",
        "    return 'second'",
      ),
    );
    expect(answer.status).toBe(422);
    expect(answer.body.error.type).toBe('killed');
  });

  c('objects whose serialization lies: dict.items, list.__iter__, int and str subclasses', 'jsonify reads base-class methods', async () => {
    const answer = await attack(
      service,
      py(
        'class D(dict):',
        '    def items(self): return [("forged", 1)]',
        '    def keys(self): return ["forged"]',
        'class L(list):',
        '    def __iter__(self): return iter(["forged"])',
        'class I(int):',
        '    def __index__(self): return 666',
        '    def __repr__(self): return "666"',
        'class S(str):',
        '    def __str__(self): return "forged"',
        'def main():',
        "    return {'d': D(real=1), 'l': L([1, 2]), 'i': I(7), 's': S('real')}",
      ),
    );
    expect(answer.status).toBe(200);
    expect(answer.body.result).toEqual({ d: { real: 1 }, l: [1, 2], i: 7, s: 'real' });
  });

  c('objects whose methods raise while being serialized or reported', 'jsonify and runner catch everything', async () => {
    const answer = await attack(
      service,
      py(
        'class Evil(Exception):',
        '    def __str__(self): raise RuntimeError("nope")',
        '    def __repr__(self): raise RuntimeError("nope")',
        'class K:',
        '    def __hash__(self): raise RuntimeError("hash")',
        'def main():',
        '    raise Evil()',
      ),
    );
    expect(answer.status).toBe(422);
    expect(answer.body.error.type).toBe('runtime_error');
    expect(answer.body.error.exception).toBe('Evil');
  });

  // The runner's message must fit runnerMessageSchema whatever the script raises: a message over
  // a field's maxLength (or over the channel's byte cap) would read as "invalid", i.e. `killed`.
  const SHORTENED = /\.\.\. \[shortened: \d+ characters in all/;

  c('an exception with a 300 kB message', 'runner shortens every field to the channel schema, visibly', async () => {
    const answer = await attack(service, py('def main():', "    raise ValueError('x' * 300000)"));
    expect(answer.status).toBe(422);
    expect(answer.body.error.type).toBe('runtime_error');
    expect(answer.body.error.exception).toBe('ValueError');
    expect(answer.body.error.line).toBe(2);
    expect(answer.body.error.message).toMatch(/^ValueError: x{1000}/);
    expect(answer.body.error.message).toContain('[shortened: 300012 characters in all]');
    expect(answer.body.error.message.length).toBeLessThanOrEqual(20000);
    expect(answer.body.error.traceback).toMatch(/^Traceback \(most recent call last\):\n/);
    expect(answer.body.error.traceback).toMatch(SHORTENED);
    expect(answer.body.error.traceback.length).toBeLessThanOrEqual(200000);
  });

  c('an exception with a 300 kB message of 4-byte characters (12 bytes each as escaped JSON)', 'runner keeps the whole message within the channel byte cap', async () => {
    const answer = await attack(service, py('def main():', "    raise ValueError('\\U0001F600' * 300000)"));
    expect(answer.status).toBe(422);
    expect(answer.body.error.type).toBe('runtime_error');
    expect(answer.body.error.exception).toBe('ValueError');
    expect(answer.body.error.message).toMatch(/^ValueError: \u{1F600}{100}/u);
    expect(answer.body.error.message).toMatch(SHORTENED);
    expect(answer.body.error.traceback).toMatch(SHORTENED);
  });

  c('an exception type with a 3 kB name', 'runner shortens the exception name, visibly', async () => {
    const answer = await attack(service, py('def main():', "    raise type('X' * 3000, (Exception,), {})('boom')"));
    expect(answer.status).toBe(422);
    expect(answer.body.error.type).toBe('runtime_error');
    expect(answer.body.error.exception).toMatch(/^X{1000}/);
    expect(answer.body.error.exception).toContain('[shortened: 3000 characters in all]');
    expect(answer.body.error.exception.length).toBeLessThanOrEqual(2000);
    expect(answer.body.error.message).toBe(`${answer.body.error.exception}: boom`);
    expect(answer.body.error.traceback).toContain(`${'X'.repeat(3000)}: boom`);
  });

  c('a recursion as deep as RecursionError allows, ending in an ordinary exception (a traceback over 200 kB)', 'runner shortens the middle of the traceback, visibly', async () => {
    const comment = '#'.repeat(250);
    const answer = await attack(
      service,
      py(
        'def down(n):',
        '    try:',
        `        return across(n + 1)  ${comment}`,
        '    except RecursionError:',
        "        raise ValueError(f'bottom of a recursion {n} calls deep') from None",
        'def across(n):',
        `    return down(n + 1)  ${comment}`,
        'def main():',
        '    down(0)',
      ),
    );
    expect(answer.status).toBe(422);
    expect(answer.body.error.type).toBe('runtime_error');
    expect(answer.body.error.exception).toBe('ValueError');
    expect(answer.body.error.line).toBe(5);
    expect(answer.body.error.message).toMatch(/^ValueError: bottom of a recursion \d+ calls deep$/);
    const traceback: string = answer.body.error.traceback;
    expect(traceback.length).toBeLessThanOrEqual(200000);
    expect(traceback).toMatch(/^Traceback \(most recent call last\):\n {2}File "script\.py", line 9, in main\n/);
    expect(traceback).toMatch(SHORTENED);
    // The end, where the exception was raised, is kept.
    expect(traceback).toMatch(/line 5, in down\n.*\nValueError: bottom of a recursion \d+ calls deep\n$/s);
  });

  c('huge and failing exception parts: __str__ of 300 kB, a cause chain, a __str__ that raises, a lone surrogate', 'runner reads every part defensively and shortens it', async () => {
    const answer = await attack(
      service,
      py(
        'class Huge(Exception):',
        "    def __str__(self): return 'h' * 300000",
        "Raises = type('R' * 3000, (Exception,), {'__str__': lambda self: 1 / 0})",
        'def main():',
        '    try:',
        '        try:',
        "            raise Huge('inner')",
        '        except Huge as exc:',
        '            raise Raises() from exc',
        '    except Exception as exc:',
        "        raise ValueError('lone \\ud800 surrogate ' + 'y' * 300000) from exc",
      ),
    );
    expect(answer.status).toBe(422);
    expect(answer.body.error.type).toBe('runtime_error');
    expect(answer.body.error.exception).toBe('ValueError');
    expect(answer.body.error.message.startsWith('ValueError: lone \ud800 surrogate yyy')).toBe(true);
    expect(answer.body.error.message).toContain('[shortened: ');
  });

  const exits: Array<[string, string, string]> = [
    ['os._exit(0) before returning', 'import os\ndef main():\n    os._exit(0)\n', 'killed'],
    ['SystemExit(0)', 'def main():\n    raise SystemExit(0)\n', 'killed'],
    ['KeyboardInterrupt', 'def main():\n    raise KeyboardInterrupt()\n', 'runtime_error'],
  ];
  for (const [name, script, type] of exits) {
    c(`${name} is reported, not a success`, 'runner catches BaseException; empty channel is an error', async () => {
      const answer = await attack(service, script);
      expect(answer.status).toBe(422);
      expect(answer.body.error.type).toBe(type);
    });
  }

  c('atexit handlers and lingering threads print after the result', 'runner ends with os._exit (no atexit)', async () => {
    const answer = await attack(
      service,
      py(
        'import atexit, threading, time',
        'def main():',
        "    atexit.register(lambda: print('FROM ATEXIT'))",
        "    threading.Thread(target=lambda: (time.sleep(0.2), print('LATE')), daemon=False).start()",
        "    return 'done'",
      ),
    );
    expect(answer.status).toBe(200);
    expect(answer.body.result).toBe('done');
    expect(answer.body.stdout).not.toContain('FROM ATEXIT');
  });

  c('replacing sys.stdout with an object that raises on write and flush', 'runner ignores broken streams', async () => {
    const answer = await attack(
      service,
      py(
        'import sys',
        'class Bad:',
        '    def write(self, s): raise RuntimeError("w")',
        '    def flush(self): raise RuntimeError("f")',
        'def main():',
        '    sys.stdout = sys.stderr = Bad()',
        "    return 'ok'",
      ),
    );
    expect(answer.status).toBe(200);
    expect(answer.body.result).toBe('ok');
  });

  c('SIGKILL to itself', { seccomp: 'empty channel + signal: killed', nsjail: 'PID 1 of the jail ignores it (documented)' }, async () => {
    const answer = await attack(service, py('import os, signal', 'def main():', '    os.kill(os.getpid(), signal.SIGKILL)', "    return 'alive'"));
    if (mode === 'seccomp') expect(answer.body.error).toMatchObject({ type: 'killed', signal: 'SIGKILL' });
    else expect([200, 422]).toContain(answer.status);
  });
});
