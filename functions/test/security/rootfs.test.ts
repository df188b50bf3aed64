/**
 * The sandbox's own world (SANDBOX_ROOTFS): in every mode and path a script sees the sandbox's root
 * and nothing of the host. seccomp mode: chrooted into its run slot's own hard-link copy of the
 * root, with no /proc at all, no host file to read, stat or watch, and a private /tmp emptied after
 * every run. nsjail mode: the root's /usr and /etc are the jail's, beside its own /proc and tmpfs.
 * What scripts can import is the root's Python 3.13, never the host's.
 */
import { spawnSync } from 'child_process';
import { statSync } from 'fs';
import { REPO, sandboxModes } from '../helpers/service';
import { attack, attackCase, execute, py, SECURITY_LIMITS, startService, TRY, uidBase, type RunningService } from './helpers';

/** Modules the host's Python may have that the sandbox's root does not install. */
const HOST_ONLY_CANDIDATES = ['apt', 'six', 'jwt', 'pkg_resources', 'setuptools', 'pyflakes', 'flask', 'requests'];
const hostModules = HOST_ONLY_CANDIDATES.filter((name) => spawnSync('/usr/bin/python3', ['-I', '-c', `import ${name}`], { stdio: 'ignore' }).status === 0);

/** stat() of each path: its inode, or the error's name. */
const STAT = py(
  'import os',
  'def stat_all(paths):',
  '    out = {}',
  '    for p in paths:',
  '        try:',
  "            out[p] = {'ino': os.stat(p).st_ino}",
  '        except OSError as e:',
  "            out[p] = {'error': type(e).__name__}",
  '    return out',
);

describe.each(sandboxModes())("security: the sandbox's own root in %s mode", (mode) => {
  let service: RunningService;
  beforeAll(async () => {
    service = await startService({ ...SECURITY_LIMITS, SANDBOX_UID_BASE: String(uidBase()) }, mode);
  });
  afterAll(async () => {
    await service?.stop();
  });
  const c = (category: string, name: string, layer: Parameters<typeof attackCase>[2], body: () => Promise<void>, timeoutMs?: number) =>
    attackCase(category, name, layer, mode, () => service, body, timeoutMs);

  c('rootfs', "sys.version_info is the root's Python 3.13", { seccomp: 'chroot into the root', nsjail: "the root's /usr bound" }, async () => {
    const answer = await attack(service, py('import sys', 'def main():', "    return [list(sys.version_info[:2]), sys.prefix, [p for p in sys.path if 'dist-packages' in p or 'site-packages' in p]]"));
    expect(answer.status).toBe(200);
    expect(answer.body.result[0]).toEqual([3, 13]);
    expect(answer.body.result[1]).toBe('/usr');
    expect(answer.body.result[2].every((p: string) => p.includes('python3'))).toBe(true);
  });

  c('rootfs', "the host's Python modules cannot be imported; the root's can", { seccomp: 'chroot into the root', nsjail: "the root's /usr bound" }, async () => {
    if (hostModules.length === 0) process.stderr.write(`\n*** The host's Python has none of ${HOST_ONLY_CANDIDATES.join(', ')}: only the root's modules are checked. ***\n\n`);
    const answer = await attack(
      service,
      py(
        'import importlib',
        'def main(names):',
        '    out = {}',
        "    for name in names + ['numpy', 'pandas', 'scipy', 'matplotlib', 'openpyxl', 'seccomp']:",
        '        try:',
        '            importlib.import_module(name)',
        "            out[name] = 'imported'",
        '        except ImportError as e:',
        '            out[name] = type(e).__name__',
        '    return out',
      ),
      { names: hostModules },
    );
    expect(answer.status).toBe(200);
    for (const name of hostModules) expect([name, answer.body.result[name]]).toEqual([name, 'ModuleNotFoundError']);
    for (const name of ['numpy', 'pandas', 'scipy', 'matplotlib', 'openpyxl', 'seccomp']) expect([name, answer.body.result[name]]).toEqual([name, 'imported']);
  });

  c(
    'rootfs',
    "host files cannot even be stat()ed: the host's /etc/shadow, the service's node, checkout and /work",
    { seccomp: 'chroot into the slot root', nsjail: 'mount namespace: only the root is bound' },
    async () => {
      const hostShadow = statSync('/etc/shadow').ino;
      const paths = ['/etc/shadow', process.execPath, REPO, `${REPO}/package.json`, '/work', '/var/cache/pyexec-rootfs', '/opt/sandbox', '/root', '/home'];
      const answer = await attack(service, py(STAT, 'def main(paths):', '    return stat_all(paths)'), { paths });
      expect(answer.status).toBe(200);
      const seen = answer.body.result;
      // /etc/shadow is the root's own (another file than the host's), unreadable to the run.
      expect(seen['/etc/shadow'].ino === undefined || seen['/etc/shadow'].ino !== hostShadow).toBe(true);
      for (const p of [process.execPath, REPO, `${REPO}/package.json`, '/work', '/var/cache/pyexec-rootfs', '/opt/sandbox']) expect([p, seen[p]]).toEqual([p, { error: 'FileNotFoundError' }]);
    },
  );

  c('rootfs', 'inotify on host directories: nothing to watch', { seccomp: 'chroot into the slot root', nsjail: 'mount namespace' }, async () => {
    const answer = await attack(
      service,
      py(
        'import ctypes, os',
        'def main(paths):',
        '    libc = ctypes.CDLL(None, use_errno=True)',
        '    fd = libc.inotify_init1(0)',
        '    if fd < 0:',
        "        return {'init': os.strerror(ctypes.get_errno())}",
        '    out = {}',
        '    for p in paths:',
        '        wd = libc.inotify_add_watch(fd, p.encode(), 0xfff)',
        "        out[p] = 'watching' if wd >= 0 else os.strerror(ctypes.get_errno())",
        '    return out',
      ),
      { paths: [REPO, '/work', process.execPath] },
    );
    expect(answer.status).toBe(200);
    for (const value of Object.values(answer.body.result)) expect(value).not.toBe('watching');
  });

  if (mode === 'seccomp') {
    c('rootfs', 'no /proc at all: not /proc/net/*, /proc/self/mountinfo, nor any pid', { seccomp: 'chroot into the slot root (it has no /proc)', nsjail: '' }, async () => {
      // (/proc itself is the root's empty directory.)
      const paths = ['/proc/self', '/proc/self/mountinfo', '/proc/net/tcp', '/proc/net/unix', '/proc/1', '/proc/1/environ', `/proc/${service.process.pid}`, '/sys/fs/cgroup'];
      const answer = await attack(service, py(TRY, STAT, 'def main(paths):', "    return {'stat': stat_all(paths), 'read': attempt(lambda: open('/proc/self/mountinfo').read())}"), { paths });
      expect(answer.status).toBe(200);
      const { stat, read } = answer.body.result;
      for (const p of paths) expect([p, stat[p]]).toEqual([p, { error: 'FileNotFoundError' }]);
      expect(read.ok).toBe(false);
    });
  }

  c('rootfs', 'two runs at once write the same /tmp file name: both succeed, neither sees the other', { seccomp: "each slot's own root and /tmp", nsjail: 'per-run tmpfs' }, async () => {
    const script = py(
      'import os, time',
      'def main(tag):',
      "    open('/tmp/same.txt', 'w').write(tag)",
      '    time.sleep(1.0)',
      "    return {'read': open('/tmp/same.txt').read(), 'tmp': sorted(os.listdir('/tmp'))}",
    );
    const [a, b] = await Promise.all([attack(service, script, { tag: 'run-a' }), attack(service, script, { tag: 'run-b' })]);
    expect(a.status).toBe(200);
    expect(b.status).toBe(200);
    expect(a.body.result.read).toBe('run-a');
    expect(b.body.result.read).toBe('run-b');
    // /tmp is the working directory: the run's own out/ (for output files) and its file.
    expect(a.body.result.tmp).toEqual(['out', 'same.txt']);
    expect(b.body.result.tmp).toEqual(['out', 'same.txt']);
  });

  c('rootfs', 'nothing written to /tmp survives into the next run of the slot', { seccomp: "the slot's /tmp emptied after each run", nsjail: 'per-run tmpfs' }, async () => {
    const plant = py(
      'import os',
      'def main():',
      "    os.makedirs('/tmp/a/b/c', exist_ok=True)",
      "    open('/tmp/a/b/c/deep.txt', 'w').write('x')",
      "    open('/tmp/top.txt', 'w').write('x')",
      "    os.symlink('/usr', '/tmp/link')",
      "    return sorted(os.listdir('/tmp'))",
    );
    const look = py('import os', 'def main():', "    return sorted(os.listdir('/tmp'))");
    // Sequential runs take the same (lowest free) slot; a few rounds cover it either way.
    for (let round = 0; round < 3; round++) {
      const planted = await attack(service, plant);
      expect(planted.status).toBe(200);
      expect(planted.body.result).toEqual(['a', 'link', 'out', 'top.txt']);
      const next = await execute(service, look);
      expect(next.status).toBe(200);
      expect(next.body.result).toEqual(['out']); // a fresh, empty one (files.test.ts)
    }
  });
});
