/**
 * Files in and out, and per-request limits, attacked: the request's `files` (written by the runner
 * under the run's working directory before user code), the output files (collected from out/ after
 * main() returns and sent on the result channel), and `limits` (lowered rlimits, watchdog and
 * cgroup, on the warm path by an already confined child). The attacker controls the script and the
 * whole request. Everything runs over real HTTP against the real service, in each sandbox mode, on
 * the path of the jest project (cold, or warm in the "warm" project).
 *
 * What a script reaches through its own out/ the runner reads with the script's own rights (same
 * process, same uid, same Landlock), so a link or a race there can at most return what the script
 * could read and return anyway; the cases check that it is never even that (links are skipped, never
 * followed). The service must never believe more than the runner could honestly send: the result
 * channel is the script's to write, so every promise of the API about `files` (paths under out/,
 * sorted, counted and sized within the caps, base64 of exactly `size` bytes) and RESULT_MAX_BYTES
 * must be checked by the service itself.
 */
import { executeBody, sandboxModes } from '../helpers/service';
import { attack, attackCase, CANARY_SECRET, py, randomToken, SECURITY_LIMITS, startService, type Answer, type Layer, type RunningService } from './helpers';

const OUTPUT_FILES_MAX = 8;
const OUTPUT_FILES_MAX_BYTES = 1024 * 1024;
const RESULT_MAX_BYTES = Number(SECURITY_LIMITS.RESULT_MAX_BYTES);
const INPUT_FILES_MAX = 16;

const LIMITS = {
  ...SECURITY_LIMITS,
  SCRIPT_TIMEOUT_MS: '8000',
  SCRIPT_MEMORY_MB: '512',
  OUTPUT_FILES_MAX: String(OUTPUT_FILES_MAX),
  OUTPUT_FILES_MAX_BYTES: String(OUTPUT_FILES_MAX_BYTES),
  INPUT_FILES_MAX: String(INPUT_FILES_MAX),
  MAX_CONCURRENT_RUNS: '2',
};

/** Writes args["msg"] (a message object, or a JSON text) on the result channel, found through gc, then ends at once. */
const FORGE = py(
  'import gc, json, os',
  'def channel_fd():',
  '    for o in gc.get_objects():',
  "        if type(o).__name__ == 'Channel' and hasattr(o, 'fd'):",
  '            return o.fd',
  'def send(data):',
  '    fd = channel_fd()',
  '    view = memoryview(data)',
  '    while view:',
  '        view = view[os.write(fd, view):]',
  '    os._exit(0)',
  'def main(msg=None, many_files=0, big_result=0, two_files_of=0):',
  '    if two_files_of:',
  '        content = b"QUFB" * (two_files_of // 3)',
  '        entry = lambda name: b\'{"path":"out/\' + name + b\'","size":\' + str(len(content) // 4 * 3).encode() + b\',"content_base64":"\' + content + b\'"}\'',
  '        send(b\'{"status":"ok","cpu_ms":0,"layers":{},"result":1,"files":[\' + entry(b"a") + b"," + entry(b"b") + b"]}")',
  '    if many_files:',
  '        entry = b\'{"path":"out/x","size":0,"content_base64":""}\'',
  '        send(b\'{"status":"ok","cpu_ms":0,"layers":{},"result":1,"files":[\' + b",".join([entry] * many_files) + b"]}")',
  '    if big_result:',
  '        send(b\'{"status":"ok","cpu_ms":0,"layers":{},"result":"\' + b"A" * big_result + b\'"}\')',
  '    send((msg if isinstance(msg, str) else json.dumps(msg)).encode())',
);

function okMessage(extra: Record<string, unknown>): Record<string, unknown> {
  return { status: 'ok', cpu_ms: 0, layers: {}, result: 'forged', ...extra };
}

function file(path: string, text: string): { path: string; size: number; content_base64: string } {
  return { path, size: Buffer.byteLength(text), content_base64: Buffer.from(text).toString('base64') };
}

/** The answer to a forged message the runner could never have sent: not believed (the run is `killed`, or `result_too_large` for a result over its cap), and none of it is passed on. */
function expectNotBelieved(answer: Answer, types: string[] = ['killed']): void {
  expect({ status: answer.status, type: answer.body?.error?.type }).toEqual({ status: 422, type: expect.stringMatching(new RegExp(`^(${types.join('|')})$`)) });
  expect(answer.body.files).toBeUndefined();
  expect(answer.body.result).toBeUndefined();
}

const b64 = (text: string): string => Buffer.from(text).toString('base64');
const decode = (content: string): string => Buffer.from(content, 'base64').toString('latin1');

/** Each returned file is well formed: under out/, base64 of exactly its size; within the caps together; sorted by path. */
function expectWellFormedFiles(body: any): void {
  const files = body.files as Array<{ path: string; size: number; content_base64: string }>;
  expect(files.length).toBeLessThanOrEqual(OUTPUT_FILES_MAX);
  let total = 0;
  for (const f of files) {
    expect(f.path.startsWith('out/')).toBe(true);
    expect(f.path.split('/').some((part) => part === '' || part === '.' || part === '..')).toBe(false);
    expect(Buffer.from(f.content_base64, 'base64').length).toBe(f.size);
    total += f.size;
  }
  expect(total).toBeLessThanOrEqual(OUTPUT_FILES_MAX_BYTES);
  expect(files.map((f) => f.path)).toEqual([...files.map((f) => f.path)].sort());
}

const RUNNER = { seccomp: 'runner/files.py: O_NOFOLLOW descriptors, uid + Landlock', nsjail: 'runner/files.py: O_NOFOLLOW descriptors, private tmpfs' };
const SERVICE_CHECK = 'service: readChannel checks files and result against the run caps';
const VALIDATION = 'service: inputFiles.ts path and size rules';

describe.each(sandboxModes())('security: files in and out, per-request limits, in %s mode', (mode) => {
  let service: RunningService;
  beforeAll(async () => {
    service = await startService(LIMITS, mode);
  });
  afterAll(async () => {
    await service?.stop();
  });
  const c = (category: string, name: string, layer: Layer, body: () => Promise<void>, timeoutMs?: number) => attackCase(category, name, layer, mode, () => service, body, timeoutMs);
  const run = async (body: Record<string, unknown>): Promise<Answer> => {
    const answer = await executeBody(service, body);
    expect(answer.text).not.toContain(CANARY_SECRET);
    return answer;
  };

  /* ------------------------------------------------------------ forged result channel */

  describe('forged result channel', () => {
    const forged = (msg: unknown) => attack(service, FORGE, { msg });

    c('files-forge', "the control: a forged message the runner could have sent is the script's own answer", 'documented: a run may forge its own result', async () => {
      const answer = await forged(okMessage({ files: [file('out/a.txt', 'hi')], skipped: [], files_truncated: false }));
      expect(answer.status).toBe(200);
      expect(answer.body.files).toEqual([file('out/a.txt', 'hi')]);
    });

    c('files-forge', 'files on an error message are refused (schema)', SERVICE_CHECK, async () => {
      expectNotBelieved(await forged({ status: 'error', cpu_ms: 0, layers: {}, error: { type: 'runtime_error', message: 'x' }, files: [file('out/a', 'a')] }));
    });

    c('files-forge', 'content_base64 that is not base64', SERVICE_CHECK, async () => {
      expectNotBelieved(await forged(okMessage({ files: [{ path: 'out/a', size: 3, content_base64: 'aGk!' }] })));
    });

    c('files-forge', 'a size that does not match the base64 (claims 5 bytes, holds 2)', SERVICE_CHECK, async () => {
      expectNotBelieved(await forged(okMessage({ files: [{ path: 'out/a', size: 5, content_base64: 'aGk=' }] })));
    });

    c('files-forge', 'more files than OUTPUT_FILES_MAX', SERVICE_CHECK, async () => {
      const files = Array.from({ length: OUTPUT_FILES_MAX + 1 }, (_, i) => file(`out/${String(i).padStart(2, '0')}`, 'x'));
      expectNotBelieved(await forged(okMessage({ files })));
    });

    c('files-forge', 'more bytes than OUTPUT_FILES_MAX_BYTES together (each file alone within it)', SERVICE_CHECK, async () => {
      // Made in the script: two such files in the request would pass REQUEST_MAX_BYTES.
      expectNotBelieved(await attack(service, FORGE, { two_files_of: OUTPUT_FILES_MAX_BYTES / 2 + 3 }));
    });

    c('files-forge', '50,000 tiny files in one message (the service parses, validates and answers them all)', SERVICE_CHECK, async () => {
      expectNotBelieved(await attack(service, FORGE, { many_files: 50000 }));
    });

    c('files-forge', 'a result far over RESULT_MAX_BYTES, in the room the channel keeps for files', SERVICE_CHECK, async () => {
      expectNotBelieved(await attack(service, FORGE, { big_result: RESULT_MAX_BYTES * 16 }), ['result_too_large', 'killed']);
    });

    const badPaths: Array<[string, unknown]> = [
      ['a ".." path that leaves out/ for a client writing files by path', okMessage({ files: [file('out/../../.ssh/authorized_keys', 'ssh-ed25519 AAAA attacker')] })],
      ['a "." and an empty component', okMessage({ files: [file('out/./a', 'x'), file('out//b', 'y')] })],
      ['a path ending in "/" (a directory)', okMessage({ files: [file('out/', '')] })],
      ['the same path twice', okMessage({ files: [file('out/a', 'one'), file('out/a', 'two')] })],
      ['a NUL in a path (no file name holds one)', okMessage({ files: [file('out/a\u0000b', 'x')] })],
      ['a skipped entry outside out/', okMessage({ files: [], skipped: [{ path: '/etc/shadow', reason: 'symlink' }] })],
    ];
    for (const [name, msg] of badPaths) {
      c('files-forge', `a path the runner never sends: ${name}`, SERVICE_CHECK, async () => {
        expectNotBelieved(await forged(msg));
      });
    }

    c(
      'files-forge',
      "an input_files error after user code ran (the service would answer 400 invalid_request for the client's files)",
      'service: input_files believed only before user code (a second marker)',
      async () => {
        const answer = await forged({ status: 'error', cpu_ms: 0, layers: {}, error: { type: 'input_files', message: 'could not write input file data.csv: forged' } });
        expect(answer.status).not.toBe(400);
        expect(answer.body.error.type).toBe('killed');
      },
    );
  });

  /* ------------------------------------------------------------ output files */

  describe('files out', () => {
    c(
      'files-out',
      'a background process swaps out/ entries between a file, a symlink to /etc/passwd and a fifo, and a directory for a symlink to /, during collection',
      RUNNER,
      async () => {
        const script = py(
          'import os, time',
          'def swapper(n):',
          '    i = 0',
          '    while True:',
          '        i += 1',
          '        for k in range(n):',
          "            tmp = f'out/.t{k}'",
          '            try:',
          '                if i % 3 == 0:',
          "                    os.symlink('/etc/passwd', tmp)",
          '                elif i % 3 == 1:',
          '                    os.mkfifo(tmp)',
          '                else:',
          "                    with open(tmp, 'wb') as f:",
          "                        f.write(b'REGULAR')",
          "                os.replace(tmp, f'out/f{k}')",
          '            except OSError:',
          '                try:',
          '                    os.unlink(tmp)',
          '                except OSError:',
          '                    pass',
          '        try:',
          '            if i % 2:',
          "                os.rename('out/d', 'out/dd')",
          "                os.symlink('/', 'out/d')",
          '            else:',
          "                os.unlink('out/d')",
          "                os.rename('out/dd', 'out/d')",
          '        except OSError:',
          '            pass',
          'def main():',
          "    os.makedirs('out/d')",
          "    with open('out/d/inner', 'wb') as f:",
          "        f.write(b'INNER')",
          '    if os.fork() == 0:',
          '        try:',
          '            swapper(8)',
          '        finally:',
          '            os._exit(0)',
          '    time.sleep(0.2)',
          "    return open('/etc/passwd').read()",
        );
        for (let round = 0; round < 3; round++) {
          const answer = await attack(service, script);
          expect(answer.status).toBe(200);
          const passwd = answer.body.result as string;
          expectWellFormedFiles(answer.body);
          for (const f of answer.body.files) {
            // '' is a temporary file caught between its creation and its write.
            expect(['REGULAR', 'INNER', '']).toContain(decode(f.content_base64));
            expect(decode(f.content_base64)).not.toBe(passwd);
          }
          for (const entry of answer.body.skipped) expect(['symlink', 'fifo', 'changed']).toContain(entry.reason);
        }
      },
      90000,
    );

    c(
      'files-out',
      'hard links in out/ to files of the sandbox root (passwd, the interpreter, the runner)',
      { seccomp: 'fs.protected_hardlinks + Landlock (refer)', nsjail: 'another file system (EXDEV) + Landlock' },
      async () => {
        const answer = await attack(
          service,
          py(
            'import base64, os, sys',
            'def main():',
            '    out = {}',
            "    runner = os.path.dirname(sys.modules['files'].__file__) + '/runner.py'",
            "    for i, src in enumerate(['/etc/passwd', '/usr/bin/python3', runner]):",
            '        try:',
            "            os.link(src, f'out/link{i}')",
            "            out[f'out/link{i}'] = base64.b64encode(open(src, 'rb').read()).decode()",
            '        except OSError as e:',
            '            out[src] = os.strerror(e.errno)',
            '    return out',
          ),
        );
        expect(answer.status).toBe(200);
        // A link the kernel allowed returns only what the script itself can read (and sent in its result).
        for (const f of answer.body.files) expect(answer.body.result[f.path]).toBe(f.content_base64);
      },
    );

    c('files-out', 'out/ itself replaced by a fifo with no writer (an open for reading would block)', 'runner: O_DIRECTORY|O_NOFOLLOW open never blocks; O_NONBLOCK for files', async () => {
      const answer = await attack(service, py('import os', 'def main():', "    os.rmdir('out')", "    os.mkfifo('out')", "    return 'fifo'"));
      expect(answer.status).toBe(200);
      expect(answer.body.files).toEqual([]);
      expect(answer.body.skipped).toEqual([{ path: 'out', reason: 'fifo' }]);
    });

    c('files-out', 'a sparse file of 15 MiB (fstat size over the cap, no blocks) and one that a background process truncates and rewrites forever', RUNNER, async () => {
      const answer = await attack(
        service,
        py(
          'import os, time',
          'def main():',
          "    with open('out/sparse', 'wb') as f:",
          '        f.truncate(15 << 20)',
          "    with open('out/small', 'wb') as f:",
          "        f.write(b'small')",
          "    fd = os.open('out/grow', os.O_WRONLY | os.O_CREAT)",
          '    if os.fork() == 0:',
          '        chunk = b"g" * 65536',
          '        while True:',
          '            os.ftruncate(fd, 0)',
          '            os.lseek(fd, 0, 0)',
          '            for _ in range(40):',
          '                os.write(fd, chunk)',
          '    time.sleep(0.1)',
          "    return 'ok'",
        ),
      );
      expect(answer.status).toBe(200);
      expectWellFormedFiles(answer.body);
      expect(answer.body.files.map((f: { path: string }) => f.path)).not.toContain('out/sparse');
      // out/small (5 bytes) comes after out/grow: it is left out only when grow, read at some
      // moment of its rewriting, took the byte budget (OUTPUT_FILES_MAX_BYTES) down to under 5.
      const taken = answer.body.files as Array<{ path: string; size: number }>;
      if (!taken.some((f) => f.path === 'out/small')) expect(taken.reduce((sum, f) => sum + f.size, 0) + 5).toBeGreaterThan(OUTPUT_FILES_MAX_BYTES);
      expect(answer.body.truncated.files).toBe(true);
    });

    c('files-out', '5,000 files, 20 levels of directories, long paths, names not UTF-8', 'runner: entry, depth, path and count caps', async () => {
      const answer = await attack(
        service,
        py(
          'import os',
          'def main():',
          '    for i in range(5000):',
          "        open(f'out/{i:05d}', 'w').close()",
          "    p = 'out'",
          '    for i in range(20):',
          "        p += '/d'",
          '        os.mkdir(p)',
          "    q = 'out/' + 'x' * 250",
          '    os.mkdir(q)',
          '    for i in range(4):',
          "        q += '/' + 'y' * 250",
          '        os.mkdir(q)',
          "    open(q + '/f', 'w').write('long')",
          "    open(b'out/\\xff\\xfe', 'w').write('bad')",
          "    return 'ok'",
        ),
      );
      expect(answer.status).toBe(200);
      expectWellFormedFiles(answer.body);
      expect(answer.body.files).toHaveLength(OUTPUT_FILES_MAX);
      expect(answer.body.truncated.files).toBe(true);
      const reasons = new Set(answer.body.skipped.map((entry: { reason: string }) => entry.reason));
      expect(reasons).toEqual(new Set(['too_deep', 'path_too_long', 'name_not_utf8']));
      expect(answer.body.skipped.length).toBeLessThanOrEqual(100);
    });

    c(
      'files-out',
      'names a client may misread (backslashes, "..\\", a leading dash) come back verbatim under out/, never with a ".." component; a newline is skipped',
      'runner: names as they are, one directory level at a time',
      async () => {
        const names = ['..\\..\\evil.bat', '-rf', ' ', '...'];
        const answer = await attack(service, py('def main(names):', '    for n in names:', "        open('out/' + n, 'w').write(n)", "    open('out/a\\nb', 'w').write('x')", "    return 'ok'"), {
          names,
        });
        expect(answer.status).toBe(200);
        expectWellFormedFiles(answer.body);
        expect(answer.body.files.map((f: { path: string }) => f.path).sort()).toEqual(names.map((n) => `out/${n}`).sort());
        // A control character in a name (a newline) is not returned: listed as skipped.
        expect(answer.body.skipped).toEqual([{ path: 'out/a\nb', reason: 'name_not_printable' }]);
      },
    );

    c('files-out', 'out/ and a subdirectory replaced by symlinks to the root and to the runner', RUNNER, async () => {
      const answer = await attack(service, py('import os, sys', 'def main():', "    os.rmdir('out')", "    os.symlink(os.path.dirname(sys.modules['files'].__file__), 'out')", "    return 'ok'"));
      expect(answer.status).toBe(200);
      expect(answer.body.files).toEqual([]);
      expect(answer.body.skipped).toEqual([{ path: 'out', reason: 'symlink' }]);
    });

    c(
      'files-out',
      "a concurrent run looks for another run's files (by name, by walking what it can see) and links them into its out/",
      { seccomp: 'slot roots (chroot), per-slot uid, 0700 /tmp, Landlock', nsjail: 'mount namespace and private tmpfs per run' },
      async () => {
        const token = randomToken();
        const victim = run({
          script: py('import time', 'def main(name):', "    open('out/result.txt', 'w').write(open(name).read())", '    time.sleep(2.5)', "    return 'victim'"),
          args: { name: `data/${token}.txt` },
          files: [{ path: `data/${token}.txt`, content: token }],
        });
        await new Promise((r) => setTimeout(r, 400));
        const thief = await attack(
          service,
          py(
            'import os',
            'def main(token):',
            '    found = []',
            '    try:',
            "        tops = set(os.listdir('/'))",
            '    except OSError:',
            '        tops = set()',
            "    tops |= {'tmp', 'var', 'etc', 'run', 'home', 'root', 'sandbox', 'slots', 'opt', 'srv', 'mnt', 'media', 'dev/shm'}",
            "    for top in sorted(tops - {'usr', 'proc', 'sys', 'dev'}):",
            "        for root, dirs, files in os.walk('/' + top):",
            '            for name in dirs + files:',
            '                if token in name:',
            '                    found.append(os.path.join(root, name))',
            '                    try:',
            "                        os.link(os.path.join(root, name), 'out/stolen')",
            '                    except OSError:',
            '                        pass',
            '    return found',
          ),
          { token },
        );
        const first = await victim;
        expect(first.status).toBe(200);
        expect(first.body.files).toEqual([file('out/result.txt', token)]);
        expect(thief.body.error).toBeUndefined();
        expect(thief.status).toBe(200);
        expect(thief.body.result).toEqual([]);
        expect(thief.text).not.toContain(token);
        expect(thief.text).not.toContain(b64(token));
      },
      60000,
    );

    c(
      'files-out',
      "the slot's next runs: a run leaves files in out/ and its directory and a daemon that keeps writing them",
      { seccomp: 'slot /tmp removed and remade; uid reaper / cgroup kill', nsjail: 'per-run tmpfs; cgroup kill' },
      async () => {
        const token = randomToken();
        const first = await run({
          script: py(
            'import os, time',
            'def main(token):',
            '    if os.fork() == 0:',
            '        os.setsid()',
            '        while True:',
            '            for p in (f"out/{token}", f"{token}.txt", f"sub/{token}"):',
            '                try:',
            '                    os.makedirs(os.path.dirname(p) or ".", exist_ok=True)',
            '                    open(p, "w").write(token)',
            '                except OSError:',
            '                    pass',
            '            time.sleep(0.01)',
            '    time.sleep(0.2)',
            '    return "left"',
          ),
          args: { token },
          files: [{ path: `in/${token}`, content: token }],
        });
        expect(first.status).toBe(200);
        for (let i = 0; i < 4; i++) {
          const next = await run({ script: py('import os', 'def main():', '    return sorted(os.listdir("."))', ''), files: [] });
          expect(next.status).toBe(200);
          expect(next.body.result).toEqual(['out']);
          expect(next.body.files).toEqual([]);
          expect(next.text).not.toContain(token);
        }
      },
      60000,
    );
  });

  /* ------------------------------------------------------------ input files */

  describe('files in', () => {
    c('files-in', '"out" itself, and paths that normalise into out/ ("./out/x", "a/../out/x", "out//x")', VALIDATION, async () => {
      for (const path of ['out', 'out/x', './out/x', 'a/../out/x', 'out//x', 'out/']) {
        const answer = await run({ script: 'def main():\n    return 1\n', files: [{ path, content: 'planted' }] });
        expect(answer.status).toBe(400);
        expect(answer.body.error).toMatchObject({ type: 'invalid_request', field: 'files.0.path' });
      }
    });

    c('files-in', 'look-alikes of out/ ("OUT", fullwidth, "out.txt", "a/out/x") are ordinary inputs, never collected', VALIDATION, async () => {
      const paths = ['OUT/x', '\uff4f\uff55\uff54/x', 'out.txt', 'a/out/x', 'out\u200b/x'];
      const answer = await run({
        script: py('import os', 'def main(paths):', '    return [open(p).read() for p in paths] + [os.listdir("out")]'),
        args: { paths },
        files: paths.map((path) => ({ path, content: path })),
      });
      expect(answer.status).toBe(200);
      expect(answer.body.result).toEqual([...paths, []]);
      expect(answer.body.files).toEqual([]);
    });

    c('files-in', 'names equal after Unicode normalisation (NFC/NFD) or case folding are distinct files, each written once', VALIDATION, async () => {
      const paths = ['caf\u00e9.csv', 'cafe\u0301.csv', 'Data.csv', 'data.csv', 'DATA.CSV'];
      const answer = await run({
        script: py('import os', 'def main(paths):', "    return {'listing': sorted(os.listdir('.')), 'read': [open(p).read() for p in paths]}"),
        args: { paths },
        files: paths.map((path, i) => ({ path, content: String(i) })),
      });
      expect(answer.status).toBe(200);
      expect(answer.body.result.read).toEqual(['0', '1', '2', '3', '4']);
      expect(answer.body.result.listing).toHaveLength(paths.length + 1);
    });

    c('files-in', 'long names: a 255-byte component and 1024-character path pass; 256 bytes, 86 three-byte characters and 1025 characters are refused', VALIDATION, async () => {
      const ok = [
        'n'.repeat(255),
        '\u20ac'.repeat(85),
        Array.from({ length: 512 }, () => 'a')
          .join('/')
          .slice(0, 1023) + 'z',
      ];
      const answer = await run({
        script: py('def main(paths):', '    return [len(open(p).read()) for p in paths]'),
        args: { paths: ok },
        files: ok.map((path) => ({ path, content: 'x' })),
      });
      expect(answer.status).toBe(200);
      expect(answer.body.result).toEqual([1, 1, 1]);
      for (const path of ['n'.repeat(256), '\u20ac'.repeat(86), 'a/'.repeat(512) + 'z']) {
        const refused = await run({ script: 'def main():\n    return 1\n', files: [{ path, content: 'x' }] });
        expect(refused.status).toBe(400);
        expect(refused.body.error.type).toBe('invalid_request');
      }
    });

    c(
      'files-in',
      "names of the runner's modules, of modules the runner imports later, of site hooks and of HOME's dotfiles do not change the runner",
      'python -I (no cwd on sys.path); files written after confinement',
      async () => {
        const hook = "import os\nos.write(1, b'PLANTED-CODE-RAN\\n')\nraise SystemExit(3)\n";
        const names = [
          'runner.py',
          'files.py',
          'confine.py',
          'jsonify.py',
          'zygote.py',
          'script.py',
          'json.py',
          'asyncio.py',
          'inspect.py',
          'base64.py',
          'sitecustomize.py',
          'usercustomize.py',
          '.config/matplotlib/matplotlibrc',
          '.pythonrc.py',
        ];
        const answer = await run({
          script: py('import json', 'async def main():', "    open('out/o.txt', 'w').write('fine')", "    return json.loads('[1]') + [open('runner.py').read()[:6]]"),
          files: names.map((path) => ({ path, content: hook })),
        });
        expect(answer.status).toBe(200);
        expect(answer.body.result).toEqual([1, 'import']);
        expect(answer.body.files).toEqual([file('out/o.txt', 'fine')]);
        expect(answer.text).not.toContain('PLANTED-CODE-RAN');
      },
    );

    c('files-in', 'bad base64 (unpadded, whitespace, newline, "=" inside) and text that is not Unicode', VALIDATION, async () => {
      for (const content_base64 of ['aGk', 'aG k', 'aGk=\n', 'aGk=aGk=', '====', 'aGk*']) {
        const answer = await run({ script: 'def main():\n    return 1\n', files: [{ path: 'x.bin', content_base64 }] });
        expect(answer.status).toBe(400);
        expect(answer.body.error).toMatchObject({ type: 'invalid_request', field: 'files.0.content_base64' });
      }
      const lone = await run({ script: 'def main():\n    return 1\n', files: [{ path: 'x.txt', content: 'a\ud800b' }] });
      expect(lone.status).toBe(400);
      expect(lone.body.error).toMatchObject({ type: 'invalid_request', field: 'files.0.content' });
    });

    c('files-in', 'more files than INPUT_FILES_MAX, a file that is also a directory, a duplicate', VALIDATION, async () => {
      const many = Array.from({ length: INPUT_FILES_MAX + 1 }, (_, i) => ({ path: `f${i}`, content: '' }));
      const tooMany = await run({ script: 'def main():\n    return 1\n', files: many });
      expect(tooMany.status).toBe(400);
      expect(tooMany.body.error).toMatchObject({ type: 'invalid_request', field: 'files' });
      for (const files of [
        [
          { path: 'a/b', content: '' },
          { path: 'a', content: '' },
        ],
        [
          { path: 'a', content: '' },
          { path: 'a/b', content: '' },
        ],
        [
          { path: 'a', content: '' },
          { path: 'a', content_base64: '' },
        ],
      ]) {
        const answer = await run({ script: 'def main():\n    return 1\n', files });
        expect(answer.status).toBe(400);
        expect(answer.body.error).toMatchObject({ type: 'invalid_request', field: 'files.1.path' });
      }
    });

    c(
      'files-in',
      'the most directories a request can make (16 paths of 511 levels), then the next run starts clean',
      { seccomp: 'usage sampler (entries); removeTree (rm -rf, descriptor-relative)', nsjail: 'tmpfs inode cap; per-run tmpfs' },
      async () => {
        const files = Array.from({ length: INPUT_FILES_MAX }, (_, i) => ({ path: `${String.fromCharCode(97 + i)}/` + 'a/'.repeat(510) + 'z', content: 'deep' }));
        const answer = await run({ script: 'def main():\n    return "deep"\n', files });
        expect([200, 400, 422]).toContain(answer.status);
        if (answer.status === 200) expect(answer.body.result).toBe('deep');
        for (let i = 0; i < 3; i++) {
          const next = await run({ script: py('import os', 'def main():', '    return sorted(os.listdir("."))') });
          expect(next.status).toBe(200);
          expect(next.body.result).toEqual(['out']);
        }
      },
      90000,
    );

    c('files-in', 'a nearly full request of input files under the smallest memory limit', 'runner: files decoded one by one; service lowers the cgroup before the job', async () => {
      const content = 'x'.repeat(600 * 1024);
      const answer = await run({
        script: py('import os', 'def main():', "    return os.path.getsize('big.txt')"),
        files: [{ path: 'big.txt', content_base64: Buffer.from(content).toString('base64') }],
        limits: { memory_mb: 64 },
      });
      expect(answer.status).toBe(200);
      expect(answer.body.result).toBe(content.length);
    });
  });

  /* ------------------------------------------------------------ per-request limits */

  describe('per-request limits', () => {
    c('limits', 'out-of-range limits (below the minimum, above the maximum, fractional, strings, extra keys) are refused', 'service: schema + checkLimits', async () => {
      for (const limits of [{ memory_mb: 63 }, { memory_mb: 513 }, { timeout_ms: 99 }, { timeout_ms: 8001 }, { memory_mb: 64.5 }, { timeout_ms: '1000' }, { cpu_seconds: 100 }, { memory_mb: -1 }]) {
        const answer = await run({ script: 'def main():\n    return 1\n', limits });
        expect(answer.status).toBe(400);
        expect(answer.body.error.type).toBe('invalid_request');
      }
    });

    c('limits', 'memory_mb 64: the smallest limit still starts a script that imports numpy', 'limits lowered before user code', async () => {
      const answer = await run({ script: py('import numpy', 'def main():', '    return int(numpy.arange(10).sum())'), limits: { memory_mb: 64 } });
      expect(answer.status).toBe(200);
      expect(answer.body.result).toBe(45);
      expect(answer.body.limits.memory_mb).toBe(64);
    });

    c(
      'limits',
      'raising the lowered limits from inside (setrlimit, prlimit on the parent, on pid 1) fails, and 150 MiB never fit in 64',
      'hard rlimits lowered; no CAP_SYS_RESOURCE; cgroup',
      async () => {
        const answer = await run({
          script: py(
            'import os, resource',
            'def main():',
            '    out = {}',
            "    for name, which in [('AS', resource.RLIMIT_AS), ('CPU', resource.RLIMIT_CPU)]:",
            "        for label, pid in (('self', 0), ('parent', os.getppid()), ('pid1', 1)):",
            '            try:',
            '                resource.prlimit(pid, which, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))',
            "                out[name + ':' + label] = 'raised'",
            '            except (OSError, ValueError):',
            '                pass',
            '    try:',
            '        b = bytearray(150 << 20)',
            '        for i in range(0, len(b), 4096):',
            '            b[i] = 1',
            "        out['alloc'] = 'ok'",
            '    except MemoryError:',
            '        pass',
            '    return out',
          ),
          limits: { memory_mb: 64 },
        });
        if (answer.status === 200) expect(answer.body.result).toEqual({});
        else expect(answer.body.error.type).toBe('memory_limit');
      },
    );

    c(
      'limits',
      'memory_mb 64: memfds written (never mapped, unseen by RLIMIT_AS) beyond 64 MiB end the run',
      { seccomp: 'run cgroup (or usage sampler)', nsjail: 'run cgroup (or usage sampler)' },
      async () => {
        const answer = await run({
          script: py(
            'import os',
            'def main():',
            '    fds, chunk = [], b"x" * (1 << 20)',
            '    for i in range(200):',
            '        if i % 15 == 0:',
            '            fds.append(os.memfd_create("m"))',
            '        os.write(fds[-1], chunk)',
            '    return len(fds)',
          ),
          limits: { memory_mb: 64, timeout_ms: 6000 },
        });
        expect(answer.status).toBe(422);
        expect(answer.body.error.type).toBe('memory_limit');
      },
    );

    c('limits', "after runs with memory_mb 64, the slots' next runs have the configured 512 MiB back", 'limits per run (fresh child, fresh cgroup)', async () => {
      for (let i = 0; i < 2; i++) {
        const low = await run({ script: py('def main():', '    return len(bytearray(100 << 20))'), limits: { memory_mb: 64 } });
        expect(low.status).toBe(422);
      }
      for (let i = 0; i < 3; i++) {
        const next = await run({ script: py('def main():', '    b = bytearray(200 << 20)', '    for i in range(0, len(b), 4096):', '        b[i] = 1', '    return len(b) >> 20') });
        expect(next.status).toBe(200);
        expect(next.body.result).toBe(200);
        expect(next.body.limits.memory_mb).toBe(512);
      }
    });

    c('limits', 'timeout_ms 100 ends a spinning script, whichever path', 'service watchdog', async () => {
      const answer = await run({ script: py('def main():', '    while True:', '        pass'), limits: { timeout_ms: 100 } });
      expect(answer.status).toBe(422);
      expect(answer.body.error.type).toBe('timeout');
      expect(answer.body.limits.timeout_ms).toBe(100);
    });
  });
});
