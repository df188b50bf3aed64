/**
 * processUsage.ts against real Python processes (in-process, no service, no sandbox; runs as root):
 * memory the old statm/PSS sampler missed (shared anonymous mappings, memfds written and never
 * mapped, SysV segments) and disk held by files with no name left (unlinked while open, O_TMPFILE,
 * held by a mapping only), each counted once however many processes, descriptors and mappings
 * hold it.
 */
import { spawn, spawnSync, type ChildProcess } from 'child_process';
import { chmodSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, statfsSync, writeFileSync } from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as ts from 'typescript';
import { hiddenFileBytes, measureProcesses, memoryOfProcesses } from '../src/sandbox/processUsage';

const MiB = 1024 * 1024;
const PYTHON = '/usr/bin/python3';
const TMPFS_MAGIC = 0x01021994;

const PRELUDE = `
import ctypes, mmap, os, sys, threading, time
MiB = 1 << 20
def fill(m, size):
    chunk = b'\\x01' * MiB
    for offset in range(0, size, MiB):
        m[offset:offset + MiB] = chunk
def write_all(fd, size):
    chunk = b'\\x02' * MiB
    for _ in range(size // MiB):
        os.write(fd, chunk)
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
def map_only(fd, size):
    # mmap.mmap keeps a dup of the descriptor; this mapping holds the file by itself.
    address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    assert address not in (None, ctypes.c_void_p(-1).value), ctypes.get_errno()
    return address
def ready():
    print('ready', flush=True)
def hold():
    while True:
        time.sleep(3600)
`;

interface Python {
  pid: number;
  child: ChildProcess;
}

const running = new Set<Python>();

/** Starts python3 -c PRELUDE+script in its own process group and waits for its 'ready' line. */
function startPython(script: string, args: string[] = [], options: { uid?: number; gid?: number } = {}): Promise<Python> {
  const child = spawn(PYTHON, ['-c', PRELUDE + script, ...args], {
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { PATH: '/usr/bin:/bin', OPENBLAS_NUM_THREADS: '1', OMP_NUM_THREADS: '1' },
    ...options,
  });
  const python = { pid: child.pid!, child };
  running.add(python);
  return new Promise((resolve, reject) => {
    let out = '';
    let err = '';
    child.stdout!.on('data', (data: Buffer) => {
      out += data.toString();
      if (out.includes('ready\n')) resolve(python);
    });
    child.stderr!.on('data', (data: Buffer) => (err += data.toString()));
    child.on('error', reject);
    child.on('exit', (code, signal) => reject(new Error(`python exited (${code ?? signal}) before it was ready: ${err}`)));
  });
}

/** SIGKILL to the process group: the script and every child it forked. */
function stop(python: Python): void {
  running.delete(python);
  try {
    process.kill(-python.pid, 'SIGKILL');
  } catch {
    // already gone
  }
}

async function withPython<T>(script: string, args: string[], body: (python: Python) => T | Promise<T>, options: { uid?: number; gid?: number } = {}): Promise<T> {
  const python = await startPython(script, args, options);
  try {
    return await body(python);
  } finally {
    stop(python);
  }
}

function childrenOf(pid: number): number[] {
  return readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
}

/** What the old sampler's statm count (resident minus file and shmem pages) sees. */
function statmAnonymous(pids: number[]): number {
  return pids.reduce((sum, pid) => {
    const [, resident, shared] = readFileSync(`/proc/${pid}/statm`, 'utf8').split(' ').map(Number);
    return sum + (resident - shared) * 4096;
  }, 0);
}

/** The memory the same processes hold with nothing extra: the interpreter's own. */
let baseline = 0;
/** A directory on a disk filesystem (hidden files on tmpfs are memory, not disk). */
let diskDir = '';

beforeAll(async () => {
  const candidates = [os.tmpdir(), '/var/tmp', process.cwd()];
  const parent = candidates.find((dir) => {
    try {
      return Number(statfsSync(dir).type) !== TMPFS_MAGIC;
    } catch {
      return false;
    }
  });
  if (!parent) throw new Error('no disk-backed directory for the hidden-file tests');
  diskDir = mkdtempSync(path.join(parent, 'process-usage-'));
  await withPython('ready(); hold()', [], ({ pid }) => {
    baseline = measureProcesses([pid]).memoryBytes;
  });
});

afterAll(() => {
  for (const python of [...running]) stop(python);
  if (diskDir) rmSync(diskDir, { recursive: true, force: true });
});

describe('memory', () => {
  test('a baseline interpreter: its anonymous memory, no hidden files, nothing refused', async () => {
    await withPython('import numpy\nready(); hold()', [], ({ pid }) => {
      const usage = measureProcesses([pid]);
      const pssAnon = Number(/^Pss_Anon:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'))![1]) * 1024;
      expect(usage.incomplete).toBe(false);
      expect(usage.hiddenFileBytes).toBe(0);
      expect(usage.memoryBytes).toBeGreaterThanOrEqual(pssAnon * 0.9);
      expect(usage.memoryBytes).toBeLessThan(pssAnon * 1.5 + 4 * MiB);
      expect(memoryOfProcesses([pid])).toBeGreaterThan(MiB);
    });
  });

  test('(a) four forked children each filling its own 64 MiB MAP_SHARED|MAP_ANONYMOUS region: all 256 MiB', async () => {
    const script = `
r, w = os.pipe()
for _ in range(4):
    if os.fork() == 0:
        m = mmap.mmap(-1, 64 * MiB, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
        fill(m, 64 * MiB)
        os.write(w, b'k')
        hold()
got = 0
while got < 4:
    got += len(os.read(r, 4))
ready(); hold()
`;
    await withPython(script, [], ({ pid }) => {
      const pids = [pid, ...childrenOf(pid)];
      expect(pids).toHaveLength(5);
      // The old count saw none of it: shared pages are not anonymous to statm.
      expect(statmAnonymous(pids)).toBeLessThan(64 * MiB);
      const usage = measureProcesses(pids);
      expect(usage.memoryBytes).toBeGreaterThanOrEqual(256 * MiB);
      expect(usage.memoryBytes).toBeLessThan(512 * MiB);
      expect(usage.incomplete).toBe(false);
    });
  });

  test('one shared region and one private buffer inherited by four children count once', async () => {
    // 64 MiB MAP_SHARED|MAP_ANONYMOUS filled by every child, 64 MiB private copy-on-write left untouched.
    const script = `
shared = mmap.mmap(-1, 64 * MiB, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
private = bytearray(b'\\x03') * (64 * MiB)
r, w = os.pipe()
for _ in range(4):
    if os.fork() == 0:
        fill(shared, 64 * MiB)
        os.write(w, b'k')
        hold()
got = 0
while got < 4:
    got += len(os.read(r, 4))
ready(); hold()
`;
    await withPython(script, [], ({ pid }) => {
      const pids = [pid, ...childrenOf(pid)];
      expect(pids).toHaveLength(5);
      const memory = memoryOfProcesses(pids);
      expect(memory).toBeGreaterThanOrEqual(128 * MiB);
      expect(memory).toBeLessThan(256 * MiB);
      // statm counts the private buffer in every process.
      expect(statmAnonymous(pids)).toBeGreaterThan(256 * MiB);
      // With exactAbove, a cheap upper bound stands in for PSS while it is under the threshold.
      const bound = measureProcesses(pids, { exactAbove: 64 * 1024 * MiB }).memoryBytes;
      expect(bound).toBeGreaterThan(256 * MiB + 64 * MiB);
      const exact = measureProcesses(pids, { exactAbove: 256 * MiB }).memoryBytes;
      expect(Math.abs(exact - memory)).toBeLessThan(4 * MiB);
    });
  });

  test('(b) 128 MiB written into a memfd with os.write and never mapped', async () => {
    const script = `
fd = os.memfd_create('written')
write_all(fd, 128 * MiB)
ready(); hold()
`;
    await withPython(script, [], ({ pid }) => {
      const usage = measureProcesses([pid]);
      expect(usage.memoryBytes).toBeGreaterThanOrEqual(128 * MiB + baseline * 0.5);
      expect(usage.memoryBytes).toBeLessThan(256 * MiB);
      expect(usage.hiddenFileBytes).toBe(0); // memory, not disk
    });
  });

  test('(c) a 64 MiB memfd both mapped and kept open counts once', async () => {
    const script = `
fd = os.memfd_create('mapped')
os.ftruncate(fd, 64 * MiB)
m = mmap.mmap(fd, 64 * MiB)
fill(m, 64 * MiB)
dup = os.dup(fd)
ready(); hold()
`;
    await withPython(script, [], ({ pid }) => {
      const memory = memoryOfProcesses([pid]);
      expect(memory).toBeGreaterThanOrEqual(64 * MiB);
      expect(memory).toBeLessThan(128 * MiB);
    });
  });

  test('a 64 MiB SysV segment attached by a process and its two children counts once', async () => {
    const script = `
libc.shmget.restype = ctypes.c_int
libc.shmat.restype = ctypes.c_void_p
libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
shmid = libc.shmget(0, 64 * MiB, 0o600)
assert shmid >= 0, ctypes.get_errno()
address = libc.shmat(shmid, None, 0)
libc.shmctl(shmid, 0, None)  # IPC_RMID: gone once the last process detaches
ctypes.memset(address, 1, 64 * MiB)
r, w = os.pipe()
for _ in range(2):
    if os.fork() == 0:
        os.write(w, b'k')
        hold()
got = 0
while got < 2:
    got += len(os.read(r, 2))
ready(); hold()
`;
    await withPython(script, [], ({ pid }) => {
      const pids = [pid, ...childrenOf(pid)];
      expect(pids).toHaveLength(3);
      const memory = memoryOfProcesses(pids);
      expect(memory).toBeGreaterThanOrEqual(64 * MiB);
      expect(memory).toBeLessThan(128 * MiB);
    });
  });

  test('a named /dev/shm file, mapped and open, counts once as memory', async () => {
    // As a run is: not root (files only root may write are system files, not a run's).
    const file = `/dev/shm/process-usage-test-${process.pid}-${Date.now()}`;
    const script = `
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
write_all(fd, 64 * MiB)
m = mmap.mmap(fd, 64 * MiB)
ready(); hold()
`;
    try {
      await withPython(
        script,
        [file],
        ({ pid }) => {
          const usage = measureProcesses([pid]);
          expect(usage.memoryBytes).toBeGreaterThanOrEqual(64 * MiB);
          expect(usage.memoryBytes).toBeLessThan(128 * MiB);
          expect(usage.hiddenFileBytes).toBe(0);
        },
        { uid: 65534, gid: 65534 },
      );
    } finally {
      rmSync(file, { force: true });
    }
  });

  test("a named tmpfs file only root may write is a system file, not the run's; writable by others, it is", async () => {
    const file = `/dev/shm/process-usage-system-${process.pid}-${Date.now()}`;
    writeFileSync(file, Buffer.alloc(32 * MiB, 5), { mode: 0o644 });
    const script = `
fd = os.open(sys.argv[1], os.O_RDONLY)
m = mmap.mmap(fd, 32 * MiB, prot=mmap.PROT_READ)
ready(); hold()
`;
    try {
      await withPython(
        script,
        [file],
        ({ pid }) => {
          chmodSync(file, 0o644);
          expect(memoryOfProcesses([pid])).toBeLessThan(32 * MiB);
          chmodSync(file, 0o666);
          expect(memoryOfProcesses([pid])).toBeGreaterThanOrEqual(32 * MiB);
        },
        { uid: 65534, gid: 65534 },
      );
    } finally {
      rmSync(file, { force: true });
    }
  });

  test('a memfd held only in the fd table of a thread that unshared it', async () => {
    const script = `
def thread():
    assert libc.unshare(0x400) == 0  # CLONE_FILES: a table the process's /proc/<pid>/fd does not show
    fd = os.memfd_create('thread')
    write_all(fd, 64 * MiB)
    ready(); hold()
threading.Thread(target=thread, daemon=True).start()
hold()
`;
    await withPython(script, [], ({ pid }) => {
      const memory = memoryOfProcesses([pid]);
      expect(memory).toBeGreaterThanOrEqual(64 * MiB);
      expect(memory).toBeLessThan(128 * MiB);
    });
  });

  test('a process whose leader thread has exited alone: its memory and hidden files through a live thread', async () => {
    const script = `
held = threading.Event()
def thread():
    m = mmap.mmap(-1, 64 * MiB, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
    fill(m, 64 * MiB)
    f = open(os.path.join(sys.argv[1], 'leader-gone'), 'w+b')
    write_all(f.fileno(), 64 * MiB)
    map_only(f.fileno(), 64 * MiB)
    os.unlink(f.name)
    f.close()
    held.ready = m
    held.set()
    hold()
threading.Thread(target=thread).start()
held.wait()
ready()
exit_syscall = {'x86_64': 60, 'aarch64': 93, 'riscv64': 93, 'ppc64le': 1, 's390x': 1}[os.uname().machine]
libc.syscall(exit_syscall, 0)  # only this thread ends; the leader stays a zombie
`;
    await withPython(script, [diskDir], async ({ pid }) => {
      for (let i = 0; i < 200 && !/^State:\s+Z/m.test(readFileSync(`/proc/${pid}/status`, 'utf8')); i++) {
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
      expect(readFileSync(`/proc/${pid}/status`, 'utf8')).toMatch(/^State:\s+Z/m);
      expect(readFileSync(`/proc/${pid}/maps`, 'utf8')).toBe(''); // what the old sampler read
      const usage = measureProcesses([pid]);
      expect(usage.memoryBytes).toBeGreaterThanOrEqual(64 * MiB);
      expect(usage.memoryBytes).toBeLessThan(128 * MiB + 2 * baseline);
      expect(usage.hiddenFileBytes).toBeGreaterThanOrEqual(64 * MiB);
      expect(usage.hiddenFileBytes).toBeLessThan(128 * MiB);
    });
  });

  test('a process whose leader has exited and whose threads keep replacing each other is still seen', async () => {
    // Each thread starts the next and exits: whichever thread the memory is read through may be gone
    // by the next read. The measure moves to another live thread; it must see the region nearly always.
    const script = `
m = mmap.mmap(-1, 64 * MiB, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
fill(m, 64 * MiB)
def relay():
    threading.Thread(target=relay).start()
threading.Thread(target=relay).start()
ready()
exit_syscall = {'x86_64': 60, 'aarch64': 93, 'riscv64': 93, 'ppc64le': 1, 's390x': 1}[os.uname().machine]
libc.syscall(exit_syscall, 0)
`;
    await withPython(script, [], async ({ pid }) => {
      for (let i = 0; i < 200 && !/^State:\s+Z/m.test(readFileSync(`/proc/${pid}/status`, 'utf8')); i++) {
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
      let seen = 0;
      for (let i = 0; i < 100; i++) if (memoryOfProcesses([pid]) >= 64 * MiB) seen++;
      expect(seen).toBeGreaterThanOrEqual(50);
    });
  });
});

describe('hidden files', () => {
  test('(d) a 64 MiB file unlinked while open', async () => {
    const script = `
f = open(os.path.join(sys.argv[1], 'unlinked'), 'w+b')
write_all(f.fileno(), 64 * MiB)
os.unlink(f.name)
again = os.dup(f.fileno())
ready(); hold()
`;
    await withPython(script, [diskDir], ({ pid }) => {
      const usage = measureProcesses([pid]);
      expect(usage.hiddenFileBytes).toBeGreaterThanOrEqual(64 * MiB);
      expect(usage.hiddenFileBytes).toBeLessThan(128 * MiB);
      expect(usage.memoryBytes).toBeLessThan(64 * MiB); // its page cache is not the run's memory
      expect(hiddenFileBytes([pid])).toBe(usage.hiddenFileBytes);
    });
  });

  test('(e) a 64 MiB O_TMPFILE file', async () => {
    const script = `
fd = os.open(sys.argv[1], os.O_TMPFILE | os.O_RDWR, 0o600)
write_all(fd, 64 * MiB)
ready(); hold()
`;
    await withPython(script, [diskDir], ({ pid }) => {
      const hidden = hiddenFileBytes([pid]);
      expect(hidden).toBeGreaterThanOrEqual(64 * MiB);
      expect(hidden).toBeLessThan(128 * MiB);
    });
  });

  test('(f) a 64 MiB file written, mapped, closed and unlinked: held by the mapping only', async () => {
    const script = `
name = os.path.join(sys.argv[1], 'mapped')
with open(name, 'w+b') as f:
    write_all(f.fileno(), 64 * MiB)
    map_only(f.fileno(), 64 * MiB)
os.unlink(name)
ready(); hold()
`;
    await withPython(script, [diskDir], ({ pid }) => {
      const links = readdirSync(`/proc/${pid}/fd`).map((fd) => readlinkSync(`/proc/${pid}/fd/${fd}`));
      expect(links.filter((link) => link.includes('mapped'))).toEqual([]);
      expect(readFileSync(`/proc/${pid}/maps`, 'utf8')).toMatch(/\/mapped \(deleted\)$/m);
      const hidden = hiddenFileBytes([pid]);
      expect(hidden).toBeGreaterThanOrEqual(64 * MiB);
      expect(hidden).toBeLessThan(128 * MiB);
    });
  });

  test('a 64 MiB file open, mapped and replaced by a rename, held by a process and its child, counts once', async () => {
    const script = `
target = os.path.join(sys.argv[1], 'target')
other = os.path.join(sys.argv[1], 'other')
f = open(target, 'w+b')
write_all(f.fileno(), 64 * MiB)
m = mmap.mmap(f.fileno(), 64 * MiB)
open(other, 'wb').close()
os.rename(other, target)
r, w = os.pipe()
if os.fork() == 0:
    os.write(w, b'k')
    hold()
os.read(r, 1)
ready(); hold()
`;
    await withPython(script, [diskDir], ({ pid }) => {
      const pids = [pid, ...childrenOf(pid)];
      expect(pids).toHaveLength(2);
      const hidden = hiddenFileBytes(pids);
      expect(hidden).toBeGreaterThanOrEqual(64 * MiB);
      expect(hidden).toBeLessThan(128 * MiB);
    });
  });

  test("files that still have a name are the directory walk's, not counted here", async () => {
    const script = `
f = open(os.path.join(sys.argv[1], 'named'), 'w+b')
write_all(f.fileno(), 16 * MiB)
m = mmap.mmap(f.fileno(), 16 * MiB)
ready(); hold()
`;
    await withPython(script, [diskDir], ({ pid }) => {
      expect(hiddenFileBytes([pid])).toBe(0);
    });
  });
});

describe('robustness', () => {
  test('pids that do not exist (or exited) count nothing and throw nothing', () => {
    expect(measureProcesses([99999999, 4194304 + 7, -1, 0, Number.NaN])).toEqual({ memoryBytes: 0, hiddenFileBytes: 0, incomplete: false });
    expect(measureProcesses([])).toEqual({ memoryBytes: 0, hiddenFileBytes: 0, incomplete: false });
  });

  test('a pid listed twice counts once', async () => {
    await withPython('fd = os.memfd_create("x")\nwrite_all(fd, 32 * MiB)\nready(); hold()', [], ({ pid }) => {
      expect(memoryOfProcesses([pid, pid])).toBe(memoryOfProcesses([pid]));
    });
  });

  test('processes exiting while they are measured', async () => {
    // Short-lived children forked continuously, each holding memory; no call may throw.
    const script = `
ready()
while True:
    pid = os.fork()
    if pid == 0:
        fd = os.memfd_create('brief')
        write_all(fd, MiB)
        m = mmap.mmap(-1, MiB, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
        os._exit(0)
    os.waitpid(pid, 0)
`;
    await withPython(script, [], ({ pid }) => {
      for (let i = 0; i < 200; i++) {
        let pids: number[] = [pid];
        try {
          pids = [pid, ...childrenOf(pid)];
        } catch {
          // the parent was between forks
        }
        const usage = measureProcesses(pids);
        expect(usage.memoryBytes).toBeGreaterThan(0);
        expect(usage.incomplete).toBe(false);
      }
    });
  });

  test('without CAP_SYS_PTRACE and CAP_SYS_ADMIN: says so, and still counts anonymous and mapped shared memory', async () => {
    // The module, compiled on its own, measuring a process of another uid from a node without those capabilities.
    const work = mkdtempSync(path.join(os.tmpdir(), 'process-usage-caps-'));
    try {
      const source = readFileSync(path.join(__dirname, '../src/sandbox/processUsage.ts'), 'utf8');
      const compiled = ts.transpileModule(source, { compilerOptions: { module: ts.ModuleKind.CommonJS, target: ts.ScriptTarget.ES2022 } });
      writeFileSync(path.join(work, 'processUsage.js'), compiled.outputText);
      const script = `
shared = mmap.mmap(-1, 64 * MiB, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
fill(shared, 64 * MiB)
private = bytearray(b'\\x04') * (64 * MiB)
ready(); hold()
`;
      const python = await startPython(script, [], { uid: 65534, gid: 65534 });
      try {
        const measure = (drop: string) => {
          const result = spawnSync(
            'setpriv',
            [
              '--inh-caps=-all',
              `--bounding-set=${drop}`,
              process.execPath,
              '-e',
              `console.log(JSON.stringify(require(${JSON.stringify(path.join(work, 'processUsage.js'))}).measureProcesses([${python.pid}])))`,
            ],
            { encoding: 'utf8' },
          );
          expect(result.stderr).toBe('');
          return JSON.parse(result.stdout) as { memoryBytes: number; hiddenFileBytes: number; incomplete: boolean };
        };
        const full = measure('-checkpoint_restore'); // everything a root service normally has
        expect(full.incomplete).toBe(false);
        expect(full.memoryBytes).toBeGreaterThanOrEqual(128 * MiB);
        for (const drop of ['-sys_ptrace,-sys_admin,-checkpoint_restore', '-sys_admin,-checkpoint_restore']) {
          const degraded = measure(drop);
          expect(degraded.incomplete).toBe(true);
          expect(degraded.memoryBytes).toBeGreaterThanOrEqual(128 * MiB);
        }
      } finally {
        stop(python);
      }
    } finally {
      rmSync(work, { recursive: true, force: true });
    }
  });
});
