/**
 * What a run's processes hold, measured from /proc: the fallback for hosts where no cgroup can
 * hold a run's memory, called by the usage sampler (usageWatch.ts) every tick for each run.
 *
 * One pass over each process, synchronous on purpose (a run has at most a few tens of processes;
 * a blocking pass costs less than thread-pool round trips per entry):
 *
 *  - memoryBytes: anonymous memory, pages forked processes share counted once (PSS: smaps_rollup's
 *    Pss_Anon + SwapPss + Private_Hugetlb), plus every shared-memory inode the processes hold, each
 *    once, by what is allocated to it (st_blocks): MAP_SHARED|MAP_ANONYMOUS regions ("/dev/zero
 *    (deleted)"), memfds, SysV segments, /dev/shm and any other tmpfs, hugetlbfs, ramfs or
 *    memfd_secret file, whether mapped, open, or both.
 *  - hiddenFileBytes: disk that regular files on other filesystems hold while the run keeps them
 *    open or mapped with no name left (nlink 0: unlinked while open, O_TMPFILE, replaced by a
 *    rename), each inode once. A walk of the run's directory cannot see these.
 *
 * Where it looks, for each process: every thread's fd table (/proc/<pid>/task/<tid>/fd: a thread
 * can unshare(CLONE_FILES) and keep descriptors /proc/<pid>/fd does not list) and the memory map
 * (/proc/<pid>/maps; when the thread-group leader has exited alone, which empties that file, or a
 * thread exits while used, through another live thread). Files are reached only through the
 * kernel's handles, /proc/<pid>/task/<tid>/fd/<n> and /proc/<tid>/map_files/<range>, with stat and
 * statfs, never opened, and never by the names maps shows (those are the run's). Inodes are
 * identified by (st_dev, st_ino), read exactly (bigint). Of the mapped files, only those on an
 * in-memory filesystem and those maps marks " (deleted)" are stat'ed: the libraries a process maps
 * cost nothing beyond reading maps.
 *
 * Cost: reading maps and smaps_rollup is most of it (the kernel formats every mapping, and walks
 * the page tables for PSS); MeasureOptions.exactAbove skips PSS while a cheap upper bound is under
 * the limit, and { memory: false } skips all memory reads where a cgroup holds memory.
 *
 * Processes and threads exit mid-walk: whatever is gone is skipped. Reads the kernel refuses
 * (EACCES/EPERM: the service lacks CAP_SYS_PTRACE, or CAP_SYS_ADMIN for map_files) are not
 * silently skipped: memory then falls back to /proc/<pid>/status (RssAnon + VmSwap + RssShmem,
 * counted per process, so shared pages more than once) and the result says `incomplete`.
 *
 * Not seen: tmpfs files no process holds (written to /dev/shm and closed), SysV segments no
 * process has attached, descriptors in flight in Unix-socket messages, pipe and socket buffers,
 * and kernel memory (page tables, io_uring and other anon-inode buffers).
 */
import { readdirSync, readFileSync, statfsSync, statSync, type BigIntStats } from 'fs';

const PAGE = 4096;
const KIB = 1024;

/** In-memory filesystems (statfs f_type): their files are memory, not disk. */
const TMPFS_MAGIC = 0x01021994; // tmpfs, /dev/shm, and the kernel's own shm mount (memfd, SysV, shared anonymous)
const HUGETLBFS_MAGIC = 0x958458f6;
const RAMFS_MAGIC = 0x858458f6; // mountable in a user namespace; keeps no block count
const SECRETMEM_MAGIC = 0x5345434d; // memfd_secret; keeps no block count

/** How a filesystem's files are counted. */
const enum Fs {
  /** A disk: only files without a name left count (hiddenFileBytes). */
  Disk,
  /** Memory, allocated size in st_blocks. */
  MemoryBlocks,
  /** Memory that keeps no block count: the size, rounded up to pages (at least st_blocks). */
  MemorySize,
}

export interface ProcessUsage {
  /** Bytes of memory the processes hold: PSS of anonymous memory, plus shared-memory inodes once each. */
  memoryBytes: number;
  /** Bytes of disk held by open or mapped regular files that have no name left, each inode once. */
  hiddenFileBytes: number;
  /**
   * True when the kernel refused a read (no CAP_SYS_PTRACE or CAP_SYS_ADMIN): memoryBytes then
   * used per-process fallbacks, and memfds held only by a descriptor or hidden files may be missing.
   */
  incomplete: boolean;
}

export interface MeasureOptions {
  /** False when only hiddenFileBytes is wanted (a cgroup holds memory): no memory reads at all. Default true. */
  memory?: boolean;
  /**
   * Reads PSS (smaps_rollup, the costliest read: it walks the page tables) only when a cheap upper
   * bound of memoryBytes (RssAnon + VmSwap + HugetlbPages from status, per process, plus the shared
   * inodes) is above this many bytes; otherwise memoryBytes is that bound. Pass the limit: the answer
   * to "over the limit?" is the same, and a run well under it costs less. Default: always PSS.
   */
  exactAbove?: number;
}

/** One pass over the processes: memory (PSS + shared-memory inodes) and hidden files, each inode once. */
export function measureProcesses(pids: readonly number[], options: MeasureOptions = {}): ProcessUsage {
  const pass = new Pass(options.memory !== false);
  const views: MemoryView[] = [];
  for (const pid of new Set(pids)) {
    if (!Number.isInteger(pid) || pid <= 0) continue;
    const view = measurePid(pid, pass);
    if (view) views.push(view);
  }
  let hiddenFileBytes = 0;
  for (const bytes of pass.hidden.values()) hiddenFileBytes += bytes;
  if (!pass.memory) return { memoryBytes: 0, hiddenFileBytes, incomplete: pass.incomplete };
  let shared = 0;
  for (const bytes of pass.shared.values()) shared += bytes;
  let memoryBytes = shared;
  if (options.exactAbove !== undefined) {
    for (const view of views) memoryBytes += anonymousOf(view, pass, false);
    if (memoryBytes <= options.exactAbove) return { memoryBytes, hiddenFileBytes, incomplete: pass.incomplete };
    memoryBytes = shared;
  }
  for (const view of views) memoryBytes += anonymousOf(view, pass, true);
  return { memoryBytes, hiddenFileBytes, incomplete: pass.incomplete };
}

/** Bytes of memory the processes hold (see measureProcesses). */
export function memoryOfProcesses(pids: readonly number[]): number {
  return measureProcesses(pids).memoryBytes;
}

/** Bytes of disk held by the processes' open or mapped files that have no name left (see measureProcesses). */
export function hiddenFileBytes(pids: readonly number[]): number {
  return measureProcesses(pids, { memory: false }).hiddenFileBytes;
}

/** The state of one call: inodes seen so far (each counted once) and what is known of each device. */
class Pass {
  /** Shared-memory inodes: key -> bytes allocated. */
  readonly shared = new Map<string, number>();
  /** Hidden disk files: key -> bytes allocated. */
  readonly hidden = new Map<string, number>();
  /** st_dev -> how its files count; filled once per device per call (a device number can be reused). */
  readonly devices = new Map<string, Fs>();
  incomplete = false;

  constructor(readonly memory: boolean) {}

  /** A file reached through `handle` (a /proc fd or map_files link): counts it if it is memory or hidden disk. */
  file(handle: string, sysv = false, stat = this.stat(handle)): Outcome {
    if (!stat) return this.lastFailure;
    if (!stat.isFile()) return 'counted'; // pipes, sockets, devices, anon inodes, directories: nothing to count
    const fs = this.fsOf(String(stat.dev), handle);
    if (fs === undefined) return this.lastFailure;
    const key = `${sysv ? 's' : 'f'}${stat.dev}:${stat.ino}`;
    if (fs === Fs.Disk) {
      if (stat.nlink === 0n) keepMax(this.hidden, key, Number(stat.blocks) * 512);
    } else if (this.memory && !systemFile(stat)) {
      let bytes = Number(stat.blocks) * 512;
      if (fs === Fs.MemorySize) bytes = Math.max(bytes, Math.ceil(Number(stat.size) / PAGE) * PAGE);
      keepMax(this.shared, key, bytes);
    }
    return 'counted';
  }

  /**
   * How files on device `dev` count, learnt from statfs of `handle`, a file on it. The handle is
   * stat'ed again afterwards: if it no longer is on `dev` (the run replaced the descriptor or the
   * mapping meanwhile), nothing is learnt and the file is skipped this time.
   */
  fsOf(dev: string, handle: string): Fs | undefined {
    const known = this.devices.get(dev);
    if (known !== undefined) return known;
    let type: number;
    try {
      type = Number(statfsSync(handle).type);
    } catch (error) {
      this.failed(error);
      return undefined;
    }
    const check = this.stat(handle);
    if (!check) return undefined;
    if (String(check.dev) !== dev) {
      this.lastFailure = 'gone'; // replaced meanwhile: as if gone
      return undefined;
    }
    const fs = type === TMPFS_MAGIC || type === HUGETLBFS_MAGIC ? Fs.MemoryBlocks : type === RAMFS_MAGIC || type === SECRETMEM_MAGIC ? Fs.MemorySize : Fs.Disk;
    this.devices.set(dev, fs);
    return fs;
  }

  /** Why the last read failed: gone (exited, unmapped, closed) is normal; refused means numbers may be low. */
  lastFailure: 'gone' | 'refused' = 'gone';

  failed(error: unknown): void {
    const code = (error as NodeJS.ErrnoException | undefined)?.code;
    this.lastFailure = code === 'ENOENT' || code === 'ESRCH' ? 'gone' : 'refused';
    if (this.lastFailure === 'refused') this.incomplete = true;
  }

  /** Reads a /proc file; undefined when it is gone or refused (see lastFailure). */
  read(file: string): string | undefined {
    try {
      return readFileSync(file, 'latin1');
    } catch (error) {
      this.failed(error);
      return undefined;
    }
  }

  stat(handle: string): BigIntStats | undefined {
    try {
      return statSync(handle, { bigint: true });
    } catch (error) {
      this.failed(error);
      return undefined;
    }
  }
}

/**
 * A file with a name that only root may write: a system file (a library on an in-memory root
 * filesystem), which no run filled. A run's processes are not root on the host, so every file
 * they can have written is owned by another uid, writable by others, or nameless (always counted).
 */
function systemFile(stat: BigIntStats): boolean {
  return stat.nlink > 0n && stat.uid === 0n && (stat.mode & 0o022n) === 0n;
}

/** What became of one file: counted (or nothing to count), gone meanwhile, or refused by the kernel. */
type Outcome = 'counted' | 'gone' | 'refused';

function keepMax(map: Map<string, number>, key: string, bytes: number): void {
  const seen = map.get(key);
  if (seen === undefined || bytes > seen) map.set(key, bytes);
}

/** Rounds of listing a process's threads: new ones (listed ones may exit while walked) are walked too. */
const THREAD_ROUNDS = 3;
/** How many times one call may move to another thread of a process whose threads keep exiting. */
const MAX_SWITCHES = 16;

/**
 * The tasks through which a process's memory can be read: threads share one memory map, so any live
 * one will do. The leader first; when it has exited alone (its maps is then empty) or a thread
 * exits while it is used, the next thread, listing them again when the list runs out.
 */
class MemoryView {
  private tasks: { base: string; mapFiles: string }[];
  private index = 0;
  private switches = 0;
  /** The map could not be walked (refused): mapped shared memory is counted per process instead. */
  sharedUnseen = false;

  constructor(
    readonly pid: number,
    tids: string[],
    private readonly pass: Pass,
  ) {
    this.tasks = tasksOf(pid, tids);
  }

  /** /proc/<pid> or /proc/<pid>/task/<tid>. */
  get base(): string {
    return this.tasks[this.index].base;
  }

  /** /proc/<pid>/map_files or /proc/<tid>/map_files (a thread has none under task/). */
  get mapFiles(): string {
    return this.tasks[this.index].mapFiles;
  }

  /** A new budget of switches, for the next phase of the call. */
  resetSwitches(): void {
    this.switches = 0;
  }

  /** Moves to another thread; false when none is left or the call has switched enough. */
  next(): boolean {
    if (++this.switches > MAX_SWITCHES) return false;
    if (++this.index < this.tasks.length) return true;
    this.tasks = tasksOf(this.pid, threadsOf(this.pid, this.pass));
    this.index = 0;
    return this.tasks.length > 1 || alive(this.tasks[0].base);
  }
}

/** Files the process holds (its fd tables and memory map); returns the view to read its anonymous memory through. */
function measurePid(pid: number, pass: Pass): MemoryView | undefined {
  const walked = new Set<string>();
  let view: MemoryView | undefined;
  for (let round = 0; round < THREAD_ROUNDS; round++) {
    const tids = threadsOf(pid, pass);
    if (tids.length === 0) break; // exited
    const fresh = tids.filter((tid) => !walked.has(tid));
    if (fresh.length === 0) break;
    // Every thread's fd table: threads usually share one, but a thread that unshared its table holds
    // descriptors its process's /proc/<pid>/fd does not list (and a leader that exited lists none).
    // Threads started meanwhile are walked in the next round.
    for (const tid of fresh) {
      walked.add(tid);
      walkFds(`/proc/${pid}/task/${tid}/fd`, pass);
    }
    if (!view) {
      const candidate = new MemoryView(pid, tids, pass);
      if (walkMaps(candidate, pass)) view = candidate;
    }
  }
  return view;
}

function threadsOf(pid: number, pass: Pass): string[] {
  try {
    return readdirSync(`/proc/${pid}/task`);
  } catch (error) {
    pass.failed(error);
    return [];
  }
}

/** The task paths a process's memory can be read through: the leader's, then each other thread's. */
function tasksOf(pid: number, tids: string[]): { base: string; mapFiles: string }[] {
  const leader = String(pid);
  return [
    { base: `/proc/${pid}`, mapFiles: `/proc/${pid}/map_files` },
    ...tids.filter((tid) => tid !== leader).map((tid) => ({ base: `/proc/${pid}/task/${tid}`, mapFiles: `/proc/${tid}/map_files` })),
  ];
}

/** The task still has its memory map (statm reads zeros once it has exited). */
function alive(base: string): boolean {
  try {
    return !readFileSync(`${base}/statm`, 'latin1').startsWith('0 ');
  } catch {
    return false;
  }
}

function walkFds(dir: string, pass: Pass): void {
  let fds: string[];
  try {
    fds = readdirSync(dir);
  } catch (error) {
    pass.failed(error);
    return;
  }
  for (const fd of fds) pass.file(`${dir}/${fd}`);
}

/**
 * The files the process's memory map holds. False when no thread shows a memory map (the process
 * has exited). Where maps or map_files are refused (missing capabilities), sets view.sharedUnseen.
 */
function walkMaps(view: MemoryView, pass: Pass): boolean {
  let maps: string | undefined;
  for (;;) {
    maps = pass.read(`${view.base}/maps`);
    if (maps === undefined && pass.lastFailure === 'refused') {
      view.sharedUnseen = true;
      return true;
    }
    if (maps) break;
    if (!view.next()) return false; // empty: this thread has no memory map (exited, or the leader that exited alone)
  }
  const seen = new Set<string>();
  let start = 0;
  while (start < maps.length) {
    let end = maps.indexOf('\n', start);
    if (end < 0) end = maps.length;
    const line = maps.slice(start, end);
    start = end + 1;
    // "start-end perms offset major:minor inode   name"
    const afterRange = line.indexOf(' ');
    if (afterRange < 0) continue;
    const afterOffset = line.indexOf(' ', afterRange + 6);
    const afterDev = afterOffset < 0 ? -1 : line.indexOf(' ', afterOffset + 1);
    if (afterDev < 0) continue;
    const dev = line.slice(afterOffset + 1, afterDev);
    if (dev === '00:00') continue; // anonymous: counted by PSS (a file always has a nonzero device)
    let afterInode = line.indexOf(' ', afterDev + 1);
    if (afterInode < 0) afterInode = line.length;
    const inode = line.slice(afterDev + 1, afterInode);
    const name = line.slice(afterInode).trimStart();
    const deleted = name.endsWith(' (deleted)');
    // A named file matters only on an in-memory filesystem (a disk's are the directory walk's).
    if (!deleted && !pass.memory) continue;
    // SysV segments take their shmid as inode number, which may equal a memfd's on the same mount.
    const sysv = deleted && /^\/SYSV[0-9a-f]{8} \(deleted\)$/.test(name);
    const once = `${dev} ${inode}${deleted ? ' d' : ''}${sysv ? ' s' : ''}`;
    if (seen.has(once)) continue;
    seen.add(once);
    const range = mapFilesName(line.slice(0, afterRange));
    for (;;) {
      const handle = `${view.mapFiles}/${range}`;
      let outcome: Outcome;
      if (deleted) outcome = pass.file(handle, sysv);
      else {
        const fs = pass.fsOf(deviceNumber(dev), handle);
        outcome = fs === undefined ? pass.lastFailure : fs === Fs.Disk ? 'counted' : pass.file(handle, false);
      }
      if (outcome === 'refused') {
        view.sharedUnseen = true; // map_files needs CAP_SYS_ADMIN
        return true;
      }
      // Gone: the mapping was removed meanwhile (fine), or the thread it was read through exited:
      // then the same range through another thread.
      if (outcome === 'counted' || alive(view.base) || !view.next()) break;
    }
  }
  return true;
}

/**
 * A process's anonymous memory. Exact: PSS from smaps_rollup (Pss_Anon + SwapPss + Private_Hugetlb),
 * so pages forked processes share count once in all. Not exact, or where smaps_rollup is refused:
 * status's RssAnon + VmSwap + HugetlbPages, an upper bound (shared pages count in each process).
 * Mapped shared memory is added here only for a process whose map could not be walked.
 */
function anonymousOf(view: MemoryView, pass: Pass, exact: boolean): number {
  view.resetSwitches();
  do {
    if (exact) {
      const rollup = pass.read(`${view.base}/smaps_rollup`);
      if (rollup) {
        const anon = kib(rollup, 'Pss_Anon') ?? kib(rollup, 'Anonymous') ?? 0;
        return anon + (kib(rollup, 'SwapPss') ?? 0) + (kib(rollup, 'Private_Hugetlb') ?? 0) + (view.sharedUnseen ? (kib(rollup, 'Pss_Shmem') ?? 0) : 0);
      }
      if (rollup === undefined && pass.lastFailure === 'refused') exact = false;
      else continue; // this thread has exited: another one
    }
    const status = pass.read(`${view.base}/status`);
    const anon = status === undefined ? undefined : kib(status, 'RssAnon');
    if (status === undefined || anon === undefined) continue; // no memory map through this thread
    return anon + (kib(status, 'VmSwap') ?? 0) + (kib(status, 'HugetlbPages') ?? 0) + (view.sharedUnseen ? (kib(status, 'RssShmem') ?? 0) : 0);
  } while (view.next());
  return 0; // exited
}

/** A "Name:   123 kB" field of smaps_rollup or status, in bytes. */
function kib(text: string, field: string): number | undefined {
  const at = text.indexOf(`\n${field}:`);
  const from = at >= 0 ? at + field.length + 2 : text.startsWith(`${field}:`) ? field.length + 1 : -1;
  if (from < 0) return undefined;
  const end = text.indexOf('\n', from);
  const value = parseInt(text.slice(from, end < 0 ? text.length : end), 10);
  return Number.isFinite(value) ? value * KIB : undefined;
}

/** maps prints "%08lx-%08lx"; map_files names have no leading zeros (the kernel refuses them). */
function mapFilesName(range: string): string {
  const dash = range.indexOf('-');
  return `${trimZeros(range.slice(0, dash))}-${trimZeros(range.slice(dash + 1))}`;
}

function trimZeros(hex: string): string {
  let i = 0;
  while (i < hex.length - 1 && hex[i] === '0') i++;
  return hex.slice(i);
}

/** maps' "major:minor" (hex) as stat's st_dev (glibc's makedev encoding, which Node reports). */
function deviceNumber(dev: string): string {
  const colon = dev.indexOf(':');
  const major = BigInt(parseInt(dev.slice(0, colon), 16));
  const minor = BigInt(parseInt(dev.slice(colon + 1), 16));
  return String(((major & 0xfffn) << 8n) | ((major & ~0xfffn) << 32n) | (minor & 0xffn) | ((minor & ~0xffn) << 12n));
}
