/**
 * Filesystem: the script reads only what Python needs and writes only its private directory.
 * Targets are real: the service's compiled code and node_modules, its /proc entries, a
 * world-readable credentials file planted for the test (uid permissions alone would allow it).
 */
import { existsSync, promises as fs } from 'fs';
import * as os from 'os';
import * as path from 'path';
import { REPO, sandboxModes } from '../helpers/service';
import { attack, attackCase, CANARY_SECRET, execute, py, SECURITY_LIMITS, startService, TRY, type RunningService } from './helpers';

const READ = py(
  TRY,
  'def read(p):',
  '    if os.path.isdir(p):',
  '        return os.listdir(p)',
  "    with open(p, 'rb') as f:",
  '        return f.read(200)',
  'def reads(paths):',
  '    return {p: attempt(lambda: read(p)) for p in paths}',
);

const WRITE = py(TRY, 'def write(p):', "    with open(p, 'w') as f:", "        f.write('pwned')", 'def writes(paths):', '    return {p: attempt(lambda: write(p)) for p in paths}');

function expectAllDenied(result: Record<string, { ok: boolean }>): void {
  const allowed = Object.entries(result)
    .filter(([, outcome]) => outcome.ok)
    .map(([p]) => p);
  expect(allowed).toEqual([]);
}

const FS_READ_LAYER = { seccomp: 'Landlock (read paths)', nsjail: 'mount namespace (not mounted); Landlock' };
const FS_WRITE_LAYER = { seccomp: 'Landlock (write paths); uid permissions', nsjail: 'read-only bind mounts; Landlock' };

describe.each(sandboxModes())('security: filesystem in %s mode', (mode) => {
  let service: RunningService;
  let planted: string;
  beforeAll(async () => {
    service = await startService(SECURITY_LIMITS, mode);
    // A credentials file any local user could read: only the sandbox's own layers keep it out.
    planted = await fs.mkdtemp(path.join(os.tmpdir(), 'sec-creds-'));
    await fs.chmod(planted, 0o755);
    await fs.writeFile(path.join(planted, 'application_default_credentials.json'), JSON.stringify({ private_key: CANARY_SECRET }), { mode: 0o644 });
  });
  afterAll(async () => {
    await service?.stop();
    await fs.rm(planted, { recursive: true, force: true });
  });
  const c = (category: string, name: string, layer: Parameters<typeof attackCase>[2], body: () => Promise<void>) => attackCase(category, name, layer, mode, () => service, body);

  c('fs-read', '/etc/shadow, /etc/passwd, /etc/hosts, /etc/resolv.conf', FS_READ_LAYER, async () => {
    const answer = await attack(service, py(READ, 'def main():', "    return reads(['/etc/shadow', '/etc/gshadow', '/etc/passwd', '/etc/hosts', '/etc/resolv.conf', '/etc'])"));
    // /etc is the sandbox root's, whose passwd (Debian's system users, nothing of the host) the
    // interpreter may read; none of the host's /etc is there.
    const { '/etc/passwd': passwd, ...rest } = answer.body.result;
    expectAllDenied(rest);
    const hostOnly = (await fs.readFile('/etc/passwd', 'utf8'))
      .split('\n')
      .map((l) => l.split(':')[0])
      .filter((user) => user && !/^(root|daemon|bin|sys|sync|games|man|lp|mail|news|uucp|proxy|www-data|backup|list|irc|_apt|nobody|gnats)$/.test(user));
    for (const user of hostOnly) expect(passwd.value ?? '').not.toContain(`${user}:`);
  });

  c('fs-read', "the service's compiled code (functions/build) and sources", FS_READ_LAYER, async () => {
    const targets = ['functions/build/index.js', 'functions/build/config.js', 'functions/build', 'functions/src', 'package.json', '.git/config', ''].map((p) => path.join(REPO, p));
    const answer = await attack(service, py(READ, 'def main(paths):', '    return reads(paths)'), { paths: targets });
    expectAllDenied(answer.body.result);
  });

  c('fs-read', "the service's node_modules", FS_READ_LAYER, async () => {
    const targets = ['node_modules', 'node_modules/.package-lock.json', 'node_modules/@google-cloud/functions-framework/package.json'].map((p) => path.join(REPO, p));
    const answer = await attack(service, py(READ, 'def main(paths):', '    return reads(paths)'), { paths: targets });
    expectAllDenied(answer.body.result);
  });

  c('fs-read', 'a world-readable credentials file outside the allowed paths', FS_READ_LAYER, async () => {
    const answer = await attack(service, py(READ, 'def main(paths):', '    return reads(paths)'), { paths: [planted, path.join(planted, 'application_default_credentials.json')] });
    expectAllDenied(answer.body.result);
  });

  c('fs-read', 'credential places: /root, ~/.config/gcloud, ~/.ssh, /var/run/secrets, /home', FS_READ_LAYER, async () => {
    const answer = await attack(
      service,
      py(READ, 'def main():', "    return reads(['/root', '/root/.config/gcloud', '/root/.ssh', '/root/.bash_history', '/var/run/secrets', '/run/secrets', '/home', '/var/lib', '/opt'])"),
    );
    expectAllDenied(answer.body.result);
  });

  c('fs-read', '/proc/1/environ and every readable environ: no service secret', { seccomp: 'Landlock (/proc/self only); env allow-list', nsjail: 'pid namespace; env allow-list' }, async () => {
    const answer = await attack(
      service,
      py(
        TRY,
        'def main():',
        '    found = {}',
        '    try:',
        "        pids = [p for p in os.listdir('/proc') if p.isdigit()]",
        '    except OSError:  # seccomp mode: /proc is not listable; try every low pid',
        '        pids = [str(p) for p in range(1, 5000)]',
        '    for pid in pids:',
        '        try:',
        "            found[pid] = open(f'/proc/{pid}/environ', 'rb').read().decode(errors='replace')",
        '        except OSError:',
        '            pass',
        "    return {'pid1': attempt(lambda: open('/proc/1/environ', 'rb').read()), 'environs': found}",
      ),
    );
    expect(answer.status).toBe(200);
    expect(answer.text).not.toContain('SECRET_API_KEY');
    // Only the run's own processes (allow-listed environment) are readable.
    for (const env of Object.values(answer.body.result.environs) as string[]) expect(env).toMatch(/^(PATH=|$)/);
  });

  c(
    'fs-read',
    "the service's own /proc/<pid>: environ, cmdline, maps, mem, fd, cwd, root",
    { seccomp: 'Landlock (/proc/self only); uid + ptrace access checks', nsjail: 'pid namespace (invisible)' },
    async () => {
      const pid = service.process.pid!;
      const answer = await attack(
        service,
        py(
          READ,
          'def main(pid):',
          "    base = f'/proc/{pid}'",
          "    return reads([f'{base}/environ', f'{base}/mem', f'{base}/maps', f'{base}/fd', f'{base}/cwd/', f'{base}/root/etc/shadow', f'{base}/cwd/package.json'])",
        ),
        { pid },
      );
      expectAllDenied(answer.body.result);
    },
  );

  c('fs-read', "the service's run directories (other runs' private dirs)", { seccomp: 'Landlock; 0700 dirs of other uids', nsjail: 'mount namespace' }, async () => {
    const answer = await attack(
      service,
      py(READ, 'import glob', 'def main():', "    return {**reads(['/tmp', '/tmp/pyexec-runs', '/var/tmp']), 'glob': attempt(lambda: glob.glob('/tmp/pyexec-runs/*/*'))}"),
    );
    const result = answer.body.result;
    const { glob, ...rest } = result;
    // /tmp is the run's own (nsjail: a tmpfs; seccomp: its slot root's), which holds nothing of the service's.
    const { '/tmp': tmp, ...others } = rest;
    expectAllDenied(others);
    expect(tmp.value ?? '[]').not.toMatch(/pyexec-runs|run-/);
    expect(glob.value ?? '[]').toBe('[]');
  });

  c(
    'fs-read',
    'host kernel and device info: /sys/class/net, /sys/kernel, /dev/mem, /dev/kmsg, /boot',
    { seccomp: 'Landlock; uid permissions', nsjail: 'mount namespace (minimal /dev, no /sys)' },
    async () => {
      const answer = await attack(service, py(READ, 'def main():', "    return reads(['/sys/class/net', '/sys/kernel/security', '/dev/mem', '/dev/kmsg', '/dev/vda', '/boot', '/sys/fs/cgroup'])"));
      expectAllDenied(answer.body.result);
    },
  );

  c('fs-write', 'system directories: /etc, /usr/bin, /bin, /, /root, /var/spool/cron', FS_WRITE_LAYER, async () => {
    const answer = await attack(
      service,
      py(WRITE, 'def main():', "    return writes(['/etc/pwned', '/usr/bin/pwned', '/bin/pwned', '/pwned', '/root/pwned', '/var/spool/cron/crontabs/root', '/etc/ld.so.preload'])"),
    );
    expectAllDenied(answer.body.result);
    expect(existsSync('/etc/pwned')).toBe(false);
    expect(existsSync('/etc/ld.so.preload')).toBe(false);
  });

  c('fs-write', 'site-packages / dist-packages: sitecustomize.py and a .pth file', FS_WRITE_LAYER, async () => {
    const answer = await attack(
      service,
      py(
        WRITE,
        'import site, sys, sysconfig',
        'def main():',
        "    dirs = set(site.getsitepackages() + [sysconfig.get_paths()['purelib'], sysconfig.get_paths()['stdlib'], '/usr/lib/python3/dist-packages'])",
        "    return writes([d + '/sitecustomize.py' for d in dirs] + [d + '/pwned.pth' for d in dirs])",
      ),
    );
    expectAllDenied(answer.body.result);
    expect(existsSync('/usr/lib/python3/dist-packages/sitecustomize.py')).toBe(false);
  });

  c('fs-write', "the runner's own code and the seccomp policy", { seccomp: 'Landlock (read-only)', nsjail: 'read-only bind mounts; Landlock' }, async () => {
    const answer = await attack(
      service,
      py(
        WRITE,
        'import sys',
        'def main():',
        "    runner = sys.modules['__main__'].__file__",
        '    d = os.path.dirname(runner)',
        "    return writes([runner, d + '/jsonify.py', os.path.join(os.path.dirname(d), 'seccomp-policy.json')])",
      ),
    );
    expectAllDenied(answer.body.result);
  });

  c('fs-write', '/dev/shm, /tmp and /var/tmp of the host', { seccomp: 'Landlock (write paths)', nsjail: 'private tmpfs (never the host)' }, async () => {
    const name = `sec-${Date.now()}`;
    const answer = await attack(service, py(WRITE, 'def main(name):', "    return writes([f'/dev/shm/{name}', f'/tmp/{name}', f'/var/tmp/{name}'])"), { name });
    // The run's own /tmp takes the file (seccomp: its slot root's; nsjail: its tmpfs); the host's places never do.
    const { [`/tmp/${name}`]: own, ...others } = answer.body.result;
    expect(own.ok).toBe(true);
    if (mode === 'seccomp') expectAllDenied(others);
    for (const place of ['/dev/shm', '/tmp', '/var/tmp']) expect(existsSync(`${place}/${name}`)).toBe(false);
  });

  c(
    'fs-write',
    'symlink tricks: a link in the private dir to a system file, written through and read through',
    { seccomp: 'Landlock (checks the target)', nsjail: 'mount namespace; read-only binds' },
    async () => {
      const target = path.join(REPO, 'functions/build/index.js');
      const answer = await attack(
        service,
        py(
          TRY,
          'def main(target):',
          "    os.symlink(target, 'code.js')",
          "    os.symlink('/etc/ld.so.preload', 'preload')",
          "    os.symlink('/usr/lib/python3/dist-packages', 'site')",
          '    def write_via(p):',
          "        with open(p, 'w') as f: f.write('x')",
          "    return {'read_code': attempt(lambda: open('code.js').read(50)), 'write_preload': attempt(lambda: write_via('preload')),",
          "            'write_site': attempt(lambda: write_via('site/pwned.pth'))}",
        ),
        { target },
      );
      expectAllDenied(answer.body.result);
      expect(existsSync('/etc/ld.so.preload')).toBe(false);
    },
  );

  c('fs-write', 'hard links and renames of files outside the private dir', { seccomp: 'Landlock (refer, make_reg); protected_hardlinks', nsjail: 'read-only binds (EXDEV)' }, async () => {
    const answer = await attack(
      service,
      py(
        TRY,
        'def main():',
        "    return {'link_shadow': attempt(lambda: os.link('/etc/shadow', 'shadow')), 'link_python': attempt(lambda: os.link('/usr/bin/python3', 'py')),",
        "            'rename_in': attempt(lambda: os.rename('/etc/hostname', 'h'))}",
      ),
    );
    expectAllDenied(answer.body.result);
  });

  c('fs-write', 'chmod, chown and utime of system files; kernel knobs in /proc/sys', { seccomp: 'uid permissions; Landlock', nsjail: 'read-only binds and /proc; uid' }, async () => {
    const answer = await attack(
      service,
      py(
        TRY,
        'def main():',
        '    def write(p, v):',
        "        with open(p, 'w') as f: f.write(v)",
        "    return {'chmod': attempt(lambda: os.chmod('/tmp' if os.getcwd() != '/tmp' else '/usr', 0o777)), 'chown': attempt(lambda: os.chown('/usr/bin/python3', os.getuid(), -1)),",
        "            'drop_caches': attempt(lambda: write('/proc/sys/vm/drop_caches', '3')), 'core_pattern': attempt(lambda: write('/proc/sys/kernel/core_pattern', '|/tmp/x')),",
        "            'sysrq': attempt(lambda: write('/proc/sysrq-trigger', 'b'))}",
      ),
    );
    expectAllDenied(answer.body.result);
  });

  test('fs-write: the private directory itself is writable and usable [control]', async () => {
    const answer = await execute(
      service,
      py('import os, tempfile', 'def main():', "    open('a.txt', 'w').write('hi')", "    with tempfile.NamedTemporaryFile('w') as f:", "        f.write('x')", "    return open('a.txt').read()"),
    );
    expect(answer.body.result).toBe('hi');
  });
});
