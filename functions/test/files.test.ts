/**
 * Files in and out, and per-request limits, end to end: real HTTP, real service, real Python in
 * each available sandbox mode (and, in the warm project, on the warm path). The runner writes the
 * request's files and collects out/ inside the sandbox (runner/files.py); the service never opens
 * a path a script chose.
 */
import { createHash } from 'crypto';
import { executeBody, py, sandboxModes, startService, type RunningService } from './helpers/service';

const LIMITS = { SCRIPT_TIMEOUT_MS: '6000', SCRIPT_MEMORY_MB: '512', OUTPUT_FILES_MAX: '4', OUTPUT_FILES_MAX_BYTES: '3000' };

describe.each(sandboxModes())('files and limits in %s mode', (mode) => {
  let service: RunningService;
  beforeAll(async () => {
    service = await startService(LIMITS, mode);
  });
  afterAll(async () => {
    await service?.stop();
  });

  describe('files in', () => {
    test('text and bytes are written under the working directory before the script starts, directories made', async () => {
      const bytes = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
      const answer = await executeBody(service, {
        script: py(
          'import hashlib, os',
          'def main():',
          "    text = open('data/in.csv').read()",
          "    raw = open('deep/er/all.bin', 'rb').read()",
          "    return {'text': text, 'sha': hashlib.sha256(raw).hexdigest(), 'n': len(raw), 'mode': oct(os.stat('data/in.csv').st_mode & 0o777), 'out': os.listdir('out')}",
        ),
        files: [
          { path: 'data/in.csv', content: 'a,b\n1,2\né,ü\n' },
          { path: 'deep/er/all.bin', content_base64: bytes.toString('base64') },
        ],
      });
      expect(answer.status).toBe(200);
      expect(answer.body.result).toEqual({ text: 'a,b\n1,2\né,ü\n', sha: createHash('sha256').update(bytes).digest('hex'), n: 256, mode: '0o644', out: [] });
    });

    test('a path that leaves the working directory is refused before anything runs', async () => {
      for (const path of ['../escape.txt', '/etc/x', 'a/../../b', 'out/x']) {
        const answer = await executeBody(service, { script: 'def main():\n    return 1\n', files: [{ path, content: 'x' }] });
        expect(answer.status).toBe(400);
        expect(answer.body.error).toMatchObject({ type: 'invalid_request', field: 'files.0.path' });
      }
    });

    test("a run's input files are not there for the slot's next run", async () => {
      const first = await executeBody(service, { script: 'def main():\n    return open("secret.txt").read()\n', files: [{ path: 'secret.txt', content: 'run one' }] });
      expect(first.body.result).toBe('run one');
      for (let i = 0; i < 3; i++) {
        const next = await executeBody(service, { script: py('import os', 'def main():', "    return sorted(os.listdir('.'))") });
        expect(next.status).toBe(200);
        expect(next.body.result).not.toContain('secret.txt');
      }
    });
  });

  describe('files out', () => {
    test('CSV in, a PNG chart and a CSV out: sorted by path, with sizes and base64', async () => {
      const answer = await executeBody(service, {
        script: py(
          'import pandas as pd, matplotlib',
          'matplotlib.use("Agg")',
          'import matplotlib.pyplot as plt',
          'def main():',
          "    df = pd.read_csv('in.csv')",
          "    df['total'] = df['a'] + df['b']",
          "    df.to_csv('out/result.csv', index=False)",
          '    fig, ax = plt.subplots(figsize=(1, 1), dpi=20)',
          "    ax.plot(df['a'], df['total'])",
          "    fig.savefig('out/chart.png')",
          "    return {'rows': len(df)}",
        ),
        files: [{ path: 'in.csv', content: 'a,b\n1,2\n3,4\n' }],
      });
      expect(answer.status).toBe(200);
      expect(answer.body.result).toEqual({ rows: 2 });
      expect(answer.body.files.map((f: { path: string }) => f.path)).toEqual(['out/chart.png', 'out/result.csv']);
      const [png, csv] = answer.body.files.map((f: { content_base64: string }) => Buffer.from(f.content_base64, 'base64'));
      expect(png.subarray(0, 8)).toEqual(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]));
      expect(answer.body.files[0].size).toBe(png.length);
      expect(csv.toString()).toBe('a,b,total\n1,2,3\n3,4,7\n');
      expect(answer.body.skipped).toEqual([]);
      expect(answer.body.truncated).toEqual({ stdout: false, stderr: false, files: false });
    });

    test('symlinks (to /etc/passwd, to another run, to the root), and fifos are skipped, never followed', async () => {
      const answer = await executeBody(service, {
        script: py(
          'import os',
          'def main():',
          "    os.symlink('/etc/passwd', 'out/passwd')",
          "    os.symlink('/', 'out/root')",
          "    os.symlink('..', 'out/up')",
          "    os.symlink('/proc/1/root/etc/shadow', 'out/shadow')",
          "    os.mkfifo('out/fifo')",
          "    open('out/new\\nline', 'w').write('x')",
          "    os.makedirs('out/sub')",
          "    open('out/sub/real.txt', 'w').write('real')",
          '    return 1',
        ),
      });
      expect(answer.body.error).toBeUndefined();
      expect(answer.body.files).toEqual([{ path: 'out/sub/real.txt', size: 4, content_base64: Buffer.from('real').toString('base64') }]);
      const skipped = Object.fromEntries(answer.body.skipped.map((s: { path: string; reason: string }) => [s.path, s.reason]));
      expect(skipped).toEqual({ 'out/passwd': 'symlink', 'out/root': 'symlink', 'out/up': 'symlink', 'out/shadow': 'symlink', 'out/fifo': 'fifo', 'out/new\nline': 'name_not_printable' });
      expect(answer.text).not.toContain('root:x:0');
    });

    test('out/ replaced by a symlink to the root returns nothing and says why', async () => {
      const answer = await executeBody(service, { script: py('import os, shutil', 'def main():', "    os.rmdir('out')", "    os.symlink('/', 'out')", '    return 1') });
      expect(answer.status).toBe(200);
      expect(answer.body.files).toEqual([]);
      expect(answer.body.skipped).toEqual([{ path: 'out', reason: 'symlink' }]);
    });

    test('count and bytes are capped: files past either are left out and truncated.files is set', async () => {
      // OUTPUT_FILES_MAX 4, OUTPUT_FILES_MAX_BYTES 3000: a (1000), b (2500: does not fit after a), c (1000), d, e, f (10 each).
      const answer = await executeBody(service, {
        script: py(
          'def main():',
          "    for name, size in [('a', 1000), ('b', 2500), ('c', 1000), ('d', 10), ('e', 10), ('f', 10)]:",
          "        open('out/' + name, 'wb').write(b'x' * size)",
          '    return 1',
        ),
      });
      expect(answer.status).toBe(200);
      expect(answer.body.files.map((f: { path: string; size: number }) => [f.path, f.size])).toEqual([
        ['out/a', 1000],
        ['out/c', 1000],
        ['out/d', 10],
        ['out/e', 10],
      ]);
      expect(answer.body.truncated.files).toBe(true);
    });

    test('out/ starts empty in every run, and files come back only when main() returned', async () => {
      await executeBody(service, { script: "def main():\n    open('out/left.txt', 'w').write('x')\n    return 1\n" });
      const next = await executeBody(service, { script: "import os\ndef main():\n    return os.listdir('out')\n" });
      expect(next.body.result).toEqual([]);
      const failed = await executeBody(service, { script: "def main():\n    open('out/partial.txt', 'w').write('x')\n    raise ValueError('no')\n" });
      expect(failed.status).toBe(422);
      expect(failed.body.files).toBeUndefined();
      expect(failed.body.truncated).toEqual({ stdout: false, stderr: false, files: false });
    });
  });

  describe('per-request limits', () => {
    test('the limits that applied are echoed: the configured ones by default, the asked ones when lower', async () => {
      const plain = await executeBody(service, { script: 'def main():\n    return 1\n' });
      expect(plain.body.limits).toEqual({ timeout_ms: 6000, memory_mb: 512 });
      const asked = await executeBody(service, { script: 'def main():\n    return 1\n', limits: { timeout_ms: 2000, memory_mb: 200 } });
      expect(asked.status).toBe(200);
      expect(asked.body.limits).toEqual({ timeout_ms: 2000, memory_mb: 200 });
    });

    test('above the configured maximum: 400 naming the field and the maximum', async () => {
      const answer = await executeBody(service, { script: 'def main():\n    return 1\n', limits: { timeout_ms: 6001 } });
      expect(answer.status).toBe(400);
      expect(answer.body.error).toMatchObject({ type: 'invalid_request', field: 'limits.timeout_ms', limit: 6000 });
    });

    test('a lower time limit really applies', async () => {
      const answer = await executeBody(service, { script: 'def main():\n    while True:\n        pass\n', limits: { timeout_ms: 700 } });
      expect(answer.status).toBe(422);
      expect(answer.body.error.type).toBe('timeout');
      expect(answer.body.error.message).toMatch(/700 ms|1 s/);
      expect(answer.body.limits).toEqual({ timeout_ms: 700, memory_mb: 512 });
    });

    test('a lower memory limit really applies, to the same script that fits the default', async () => {
      const script = py('def main():', '    block = bytearray(240 * 2**20)', '    return len(block)');
      const fits = await executeBody(service, { script });
      expect(fits.body.error).toBeUndefined();
      const lowered = await executeBody(service, { script, limits: { memory_mb: 128 } });
      expect(lowered.status).toBe(422);
      expect(lowered.body.error.type).toBe('memory_limit');
      expect(lowered.body.limits.memory_mb).toBe(128);
      // The slot's next run has the configured limits again.
      const again = await executeBody(service, { script });
      expect(again.status).toBe(200);
    });

    test('a lower memory limit holds for what the address-space limit does not see (memfds written, never mapped)', async () => {
      // 14 memfds of 15 MiB (each under RLIMIT_FSIZE's 16 MiB): 210 MiB, fine under 512, not under 128.
      const script = py(
        'import os',
        'def main():',
        '    chunk = b"x" * 2**20',
        '    fds = [os.memfd_create("hold") for _ in range(14)]',
        '    for fd in fds:',
        '        for _ in range(15):',
        '            os.write(fd, chunk)',
        '    return 1',
      );
      const fits = await executeBody(service, { script });
      expect(fits.body.error).toBeUndefined();
      const lowered = await executeBody(service, { script, limits: { memory_mb: 128 } });
      expect(lowered.status).toBe(422);
      expect(lowered.body.error.type).toBe('memory_limit');
    });
  });
});
