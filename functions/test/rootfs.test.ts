/**
 * The sandbox's root file system (sandbox-image/rootfs/): the real root that scripts/setup.sh built
 * (or found cached) for the committed package list. Its installed packages must equal the committed
 * lock, sandbox-image/rootfs/manifest.txt, so any drift (a changed list, a Debian point release) shows
 * in review; and it must work: its python3 is 3.13 and every listed Python package imports inside it,
 * run through chroot as an unprivileged user (as root only: skipped loudly otherwise).
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';

const REPO = path.resolve(__dirname, '..', '..');
const ROOTFS = path.join(REPO, 'sandbox-image', 'rootfs');
const BUILD = path.join(ROOTFS, 'build.sh');
const NOBODY = 65534;

function run(command: string, args: string[], timeout = 120000): { status: number | null; stdout: string; stderr: string } {
  const result = spawnSync(command, args, { encoding: 'utf8', timeout, maxBuffer: 64 * 1024 * 1024 });
  if (result.error) throw result.error;
  return { status: result.status, stdout: result.stdout, stderr: result.stderr };
}

function lines(text: string): string[] {
  return text.split('\n').filter((l) => l.trim() !== '');
}

/** The packages of packages.txt (comments and blank lines dropped), as build.sh reads them. */
const listed = lines(fs.readFileSync(path.join(ROOTFS, 'packages.txt'), 'utf8').replace(/#.*/g, '')).map((l) => l.trim());
const committed = lines(fs.readFileSync(path.join(ROOTFS, 'manifest.txt'), 'utf8'));

// Where build.sh keeps the root for this list ($PYEXEC_ROOTFS_CACHE/<hash of the list>/root).
const where = run('bash', [BUILD, '--path']);
if (where.status !== 0) throw new Error(`build.sh --path failed: ${where.stderr}`);
const root = where.stdout.trim();
const built = fs.existsSync(path.join(root, 'usr', 'bin', 'python3'));
const isRoot = process.getuid?.() === 0;

if (!built) {
  process.stderr.write(`\n*** SKIPPING the sandbox root tests: no root is built at ${root} for this package list. ` + 'scripts/setup.sh --test builds it (as root: debootstrap needs root). ***\n\n');
} else if (!isRoot) {
  process.stderr.write('\n*** SKIPPING the tests that run Python inside the sandbox root or read all of it: they need root (chroot; /root is 0700). ***\n\n');
}
const whenBuilt = built ? test : test.skip;
const whenRunnable = built && isRoot ? test : test.skip; // as root only

/** The root's installed packages, read from its own dpkg database, in manifest.txt's format. */
function installed(): string[] {
  const query = run('dpkg-query', [`--admindir=${path.join(root, 'var', 'lib', 'dpkg')}`, '-W', '-f', '${db:Status-Status} ${Package} ${Version}\\n']);
  expect(query.stderr).toBe('');
  expect(query.status).toBe(0);
  return lines(query.stdout)
    .filter((l) => l.startsWith('installed '))
    .map((l) => l.slice('installed '.length))
    .sort((a, b) => (a < b ? -1 : a > b ? 1 : 0)); // byte order, as `LC_ALL=C sort`
}

/**
 * Python inside the root: a private mount namespace with a fresh tmpfs on the root's /tmp (the
 * sandboxes give every run a private writable /tmp; the root itself is writable by no one but
 * root), then chroot into it as nobody, with an empty environment but for PATH, HOME, TMPDIR, LANG.
 */
function pythonInRoot(code: string): { status: number | null; stdout: string; stderr: string } {
  const script =
    'mount -t tmpfs -o size=64m,mode=1777 tmpfs "$1/tmp" && exec chroot --userspec="$2:$2" "$1" /usr/bin/env -i PATH=/usr/bin:/bin HOME=/tmp TMPDIR=/tmp LANG=C.UTF-8 /usr/bin/python3 -I -c "$3"';
  return run('unshare', ['--mount', '--propagation', 'private', 'sh', '-c', script, 'sh', root, String(NOBODY), code]);
}

/** Top-level modules a Debian package installs into dist-packages, from the root's dpkg file lists. */
function modulesOf(pkg: string): string[] {
  const info = path.join(root, 'var', 'lib', 'dpkg', 'info');
  const list = [`${pkg}.list`, `${pkg}:amd64.list`].map((f) => path.join(info, f)).find((f) => fs.existsSync(f));
  if (!list) throw new Error(`no dpkg file list for ${pkg} in the root`);
  const modules = new Set<string>();
  for (const file of lines(fs.readFileSync(list, 'utf8'))) {
    const m = /^\/usr\/lib\/python3\/dist-packages\/([^/]+)$/.exec(file);
    if (!m || m[1] === '__pycache__' || /\.(dist-info|egg-info|pth)$/.test(m[1])) continue;
    const name = m[1].replace(/\.py$/, '').replace(/\.cpython-[^.]+\.so$/, '');
    if (/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) modules.add(name);
  }
  return [...modules].sort();
}

describe('the sandbox root file system', () => {
  test('the package list is Debian 13 (trixie) names, one a line, each once', () => {
    expect(listed.length).toBeGreaterThan(0);
    for (const p of listed) expect(p).toMatch(/^[a-z0-9][a-z0-9+.-]+$/);
    expect(new Set(listed).size).toBe(listed.length);
    expect(fs.readFileSync(BUILD, 'utf8')).toMatch(/^suite=trixie$/m);
    for (const p of ['python3', 'python3-numpy', 'python3-pandas', 'python3-scipy', 'python3-matplotlib', 'python3-seccomp', 'tzdata']) {
      expect(listed).toContain(p);
    }
  });

  // As root nothing excuses a missing root: set-up could have built it, so this fails instead of skipping.
  (isRoot ? test : test.skip)('the root for the committed package list is built', () => {
    expect({ root, built, hint: 'bash scripts/setup.sh --test builds it' }).toEqual({ root, built: true, hint: 'bash scripts/setup.sh --test builds it' });
  });

  whenBuilt("the root's packages and versions equal the committed manifest.txt (the lock)", () => {
    // On a difference: if Debian moved on or packages.txt changed on purpose, copy the built
    // manifest (build.sh prints where) over sandbox-image/rootfs/manifest.txt and commit it.
    expect(installed()).toEqual(committed);
    // The manifest build.sh wrote beside the root says the same.
    expect(lines(fs.readFileSync(path.join(path.dirname(root), 'manifest.txt'), 'utf8'))).toEqual(committed);
  });

  whenBuilt('every listed package is installed', () => {
    const names = new Set(installed().map((l) => l.split(' ')[0]));
    for (const p of listed) expect({ p, installed: names.has(p) }).toEqual({ p, installed: true });
  });

  whenBuilt('headless: no GUI toolkit, Tcl/Tk or X11 client library', () => {
    const gui = installed()
      .map((l) => l.split(' ')[0])
      .filter((p) => /^(python3(\.\d+)?-tk|tk\d|libtk|libtcl|tcl\d|blt$|libx11-|x11-common|python3-gi$|python3-pyqt|python3-pyside|libgtk|libqt|python3-wxgtk)/.test(p));
    expect(gui).toEqual([]);
  });

  whenRunnable('root-owned; nothing writable by group or others; no setuid/setgid; no device nodes', () => {
    const find = run('find', [
      root,
      '-xdev',
      '(',
      '!',
      '-user',
      '0',
      '-o',
      '!',
      '-group',
      '0',
      '-o',
      '(',
      '!',
      '-type',
      'l',
      '-perm',
      '/6022',
      ')',
      '-o',
      '-type',
      'b',
      '-o',
      '-type',
      'c',
      ')',
      '-print',
    ]);
    expect(find.stderr).toBe('');
    expect(lines(find.stdout)).toEqual([]);
  });

  whenRunnable('python3 in the root is 3.13', () => {
    const r = pythonInRoot('import sys; print("%d.%d" % sys.version_info[:2])');
    expect(r.stderr).toBe('');
    expect(r.stdout.trim()).toBe('3.13');
    expect(r.status).toBe(0);
  });

  whenRunnable('every listed Python package imports inside the root, as an unprivileged user', () => {
    const modules = listed.filter((p) => p.startsWith('python3-')).flatMap(modulesOf);
    // The ones the service promises, found through the dpkg lists (the lists are read right).
    for (const m of ['numpy', 'pandas', 'scipy', 'matplotlib', 'openpyxl', 'dateutil', 'pytz', 'yaml', 'seccomp', 'xlrd', 'lxml', 'bs4']) {
      expect(modules).toContain(m);
    }
    const code = [
      'import importlib, json',
      `names = ${JSON.stringify(modules)}`,
      'failed = {}',
      'for n in names:',
      '    try:',
      '        importlib.import_module(n)',
      '    except BaseException as e:',
      '        failed[n] = "%s: %s" % (type(e).__name__, e)',
      'print(json.dumps({"imported": [n for n in names if n not in failed], "failed": failed}))',
    ].join('\n');
    const r = pythonInRoot(code);
    expect(r.status).toBe(0);
    const out = JSON.parse(r.stdout) as { imported: string[]; failed: Record<string, string> };
    expect(out.failed).toEqual({});
    expect(out.imported.sort()).toEqual([...modules].sort());
  });

  whenRunnable('it does what a transform needs: pandas + Excel, Agg charts, time zones, the seccomp bindings; no Tk', () => {
    const code = [
      'import io, json, zoneinfo',
      'import pandas as pd, numpy as np, matplotlib',
      'import matplotlib.pyplot as plt',
      'import seccomp',
      'buf = io.BytesIO()',
      'pd.DataFrame({"k": ["a", "b", "a"], "v": [1, 2, 5]}).to_excel(buf, index=False)',
      'df = pd.read_excel(io.BytesIO(buf.getvalue()))',
      'png = io.BytesIO()',
      'plt.plot(np.arange(10)); plt.savefig(png, format="png")',
      'seccomp.SyscallFilter(defaction=seccomp.ALLOW)',
      'try:',
      '    import tkinter',
      '    tk = True',
      'except ImportError:',
      '    tk = False',
      'print(json.dumps({"sums": df.groupby("k")["v"].sum().to_dict(), "backend": matplotlib.get_backend(),',
      '    "png": png.getvalue()[:8].hex(), "paris": str(zoneinfo.ZoneInfo("Europe/Paris")), "tk": tk}))',
    ].join('\n');
    const r = pythonInRoot(code);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual({ sums: { a: 6, b: 2 }, backend: 'agg', png: '89504e470d0a1a0a', paris: 'Europe/Paris', tk: false });
  });
});
