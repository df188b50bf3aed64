/**
 * Per-run cgroups: the kernel enforces a run's memory (every page it allocates, shared memory,
 * memfds and tmpfs pages included) and its number of tasks, and the run is ended and accounted
 * through its cgroup. Each run gets a fresh cgroup, so ending one run can never touch another.
 *
 * Which hierarchy a host offers is found by trying (probeCgroups): cgroup v2 where the service's
 * own cgroup can delegate memory and pids to children, otherwise the v1 memory and pids
 * controllers (plus freezer, to kill a fork bomb in one step), otherwise none (the sampler of
 * usageWatch.ts is then all there is, which docs/SECURITY.md states).
 */
import { spawn } from 'child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmdirSync, statSync, writeFileSync } from 'fs';
import * as path from 'path';
import type { CgroupSetting } from '../../config';
import type { RunLimits } from '../limits';

export type CgroupVersion = 'v1' | 'v2';

export interface RunCgroupLimits {
  memoryBytes: number;
  maxTasks: number;
}

/** One run's cgroup (one directory per controller in v1, one directory in v2). */
export interface RunCgroup {
  readonly name: string;
  /** Moves a process (and so all it will start) into the cgroup. */
  place(pid: number): void;
  /** The cgroup.procs files a process may write its own pid to, to join (the cold launcher does). */
  readonly procsFiles: string[];
  /** Processes in the cgroup that have not finished exiting. */
  pids(): number[];
  /** How many times the kernel's OOM killer ended a process of the run. */
  oomKills(): number;
  /**
   * Lowers the memory (and, on v1, memory+swap) and task limits to a run's own (cgroupLimits):
   * a warm child's cgroup is made with the configured limits before its run exists, and lowered
   * to the run's before its job is sent. Never raises a limit (throws instead). Throws when the
   * kernel refuses, e.g. memory in use above the new limit that reclaim cannot free (v1: EBUSY;
   * v2 would OOM-kill instead, so it is refused before writing); the run must not start then.
   */
  lower(limits: RunCgroupLimits): Promise<void>;
  /** Kills every process in the cgroup; resolves once none is left (or after ~5 s of trying). */
  kill(): Promise<void>;
  /** Kills what is left and removes the cgroup. Never throws. */
  destroy(): Promise<void>;
}

export interface CgroupHost {
  readonly version: CgroupVersion;
  readonly controllers: string[];
  readonly detail: string;
  create(name: string, limits: RunCgroupLimits): RunCgroup;
}

/** Every cgroup this service makes is named with this prefix, then the instance's tag. */
export const CGROUP_PREFIX = 'pyexec-';
/** An empty cgroup of ours older than this is a dead instance's leftover. */
const STALE_AFTER_MS = 60_000;
const KILL_TRIES = 500;

interface Mount {
  root: string;
  mountPoint: string;
  fstype: string;
  options: string[];
}

function mounts(): Mount[] {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((line) => {
      const [left, right] = line.split(' - ');
      const fields = left.split(' ');
      const [fstype, , superOptions] = right.split(' ');
      return { root: fields[3], mountPoint: fields[4], fstype, options: (superOptions ?? '').split(',') };
    })
    .filter((mount) => mount.fstype === 'cgroup' || mount.fstype === 'cgroup2');
}

/** The service's own cgroup path per hierarchy, from /proc/self/cgroup ("" for v2). */
function ownCgroups(): Map<string, string> {
  const own = new Map<string, string>();
  for (const line of readFileSync('/proc/self/cgroup', 'utf8').split('\n').filter(Boolean)) {
    const [, controllers, cgroupPath] = line.split(/:(.*?):/s);
    for (const controller of controllers.split(',')) own.set(controller, cgroupPath);
  }
  return own;
}

/** Where the service's own cgroup of this mount is in the file system. */
function ownDirectory(mount: Mount, cgroupPath: string): string {
  const relative = mount.root === '/' ? cgroupPath : path.relative(mount.root, cgroupPath);
  if (relative.startsWith('..')) throw new Error(`own cgroup ${cgroupPath} is outside the mount's root ${mount.root}`);
  return path.join(mount.mountPoint, relative);
}

function readNumber(file: string, key?: string): number {
  const text = readFileSync(file, 'utf8');
  if (!key) return Number(text.trim());
  const match = new RegExp(`^${key} (\\d+)$`, 'm').exec(text);
  return match ? Number(match[1]) : 0;
}

function readPids(file: string): number[] {
  try {
    return readFileSync(file, 'utf8').split('\n').filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

/** A limit file's value: a number of bytes or tasks, or "max" (none). */
function readLimit(file: string): number {
  const text = readFileSync(file, 'utf8').trim();
  return text === 'max' ? Infinity : Number(text);
}

function refuseRaise(file: string, wanted: number, what: string): void {
  const current = readLimit(file);
  if (!(wanted <= current)) throw new Error(`the run's ${what} limit (${wanted}) is above the cgroup's (${current}); a limit is only ever lowered`);
}

/**
 * Writes a lower limit. On v1, a memory limit below what the cgroup holds makes the kernel reclaim
 * first and answer EBUSY when it cannot free enough: tried again briefly (reclaim may catch up),
 * then the error is thrown with what the cgroup held.
 */
async function writeLower(file: string, value: number, usageFile?: string): Promise<void> {
  for (let attempt = 0; ; attempt++) {
    try {
      writeFileSync(file, String(value));
      break;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EBUSY' || attempt >= 3) {
        let held = '';
        try {
          if (usageFile) held = ` (it holds ${readNumber(usageFile)} bytes)`;
        } catch {
          // no usage to tell
        }
        throw new Error(`${path.basename(file)} could not be lowered to ${value}${held}: ${(error as Error).message}`, { cause: error });
      }
      await pause(10);
    }
  }
  if (readLimit(file) > value) throw new Error(`${path.basename(file)} reads ${readLimit(file)} after being lowered to ${value}`);
}

function killPids(pids: number[]): void {
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
}

const pause = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Kills until the cgroup is empty; the pids limit bounds how fast a fork bomb can refill it. */
async function killUntilEmpty(listPids: () => number[], freeze?: (frozen: boolean) => Promise<void>): Promise<void> {
  for (let attempt = 0; attempt < KILL_TRIES; attempt++) {
    const pids = listPids();
    if (pids.length === 0) return;
    if (freeze && attempt === 0) {
      // Frozen, nothing in the cgroup can fork while it is being killed; thawed, the kills land.
      await freeze(true);
      killPids(listPids());
      await freeze(false);
    } else {
      killPids(pids);
    }
    await pause(Math.min(20, 1 + attempt));
  }
}

function removeDirectory(dir: string): boolean {
  try {
    rmdirSync(dir);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'ENOENT';
  }
}

/**
 * Cgroup directories that were still busy when their run was destroyed (the kernel may hold a
 * cgroup a little after its last task is gone). Each later destroy tries them again, so none is
 * left for the life of the instance; at start-up, removeStale takes what a dead instance left.
 */
const lingering = new Set<string>();

async function removeDirectories(dirs: string[]): Promise<void> {
  for (const dir of dirs) {
    let removed = false;
    for (let attempt = 0; attempt < 20 && !(removed = removeDirectory(dir)); attempt++) await pause(5);
    if (!removed) lingering.add(dir);
  }
  for (const dir of lingering) if (removeDirectory(dir)) lingering.delete(dir);
}

/** Removes the empty, old cgroups of dead instances below dir. Live instances' cgroups are never empty for long. */
function removeStale(dir: string): void {
  let entries: string[];
  try {
    entries = readdirSync(dir);
  } catch {
    return;
  }
  for (const entry of entries) {
    if (!entry.startsWith(CGROUP_PREFIX) || entry === SERVICE_LEAF) continue;
    const full = path.join(dir, entry);
    try {
      if (Date.now() - statSync(full).mtimeMs < STALE_AFTER_MS) continue;
      if (readPids(path.join(full, 'cgroup.procs')).length === 0) removeDirectory(full);
    } catch {
      // not a cgroup directory, or gone
    }
  }
}

/* ---------------------------------------------------------------- cgroup v1 */

class V1RunCgroup implements RunCgroup {
  readonly procsFiles: string[];

  constructor(
    readonly name: string,
    private readonly dirs: { memory: string; pids: string; freezer?: string },
  ) {
    this.procsFiles = this.all().map((dir) => path.join(dir, 'cgroup.procs'));
  }

  private all(): string[] {
    return [this.dirs.memory, this.dirs.pids, ...(this.dirs.freezer ? [this.dirs.freezer] : [])];
  }

  place(pid: number): void {
    for (const file of this.procsFiles) writeFileSync(file, `${pid}\n`);
  }

  pids(): number[] {
    return readPids(path.join(this.dirs.pids, 'cgroup.procs'));
  }

  async lower(limits: RunCgroupLimits): Promise<void> {
    const memory = path.join(this.dirs.memory, 'memory.limit_in_bytes');
    const memsw = path.join(this.dirs.memory, 'memory.memsw.limit_in_bytes');
    const pidsMax = path.join(this.dirs.pids, 'pids.max');
    refuseRaise(memory, limits.memoryBytes, 'memory');
    refuseRaise(pidsMax, limits.maxTasks, 'task');
    // Memory before memory+swap: the kernel keeps memsw >= memory, so lowering goes in this order.
    await writeLower(memory, limits.memoryBytes, path.join(this.dirs.memory, 'memory.usage_in_bytes'));
    if (existsSync(memsw)) await writeLower(memsw, limits.memoryBytes, path.join(this.dirs.memory, 'memory.memsw.usage_in_bytes'));
    await writeLower(pidsMax, limits.maxTasks);
  }

  oomKills(): number {
    try {
      return readNumber(path.join(this.dirs.memory, 'memory.oom_control'), 'oom_kill');
    } catch {
      return 0;
    }
  }

  kill(): Promise<void> {
    const freezer = this.dirs.freezer;
    const freeze = freezer
      ? async (frozen: boolean) => {
          const state = path.join(freezer, 'freezer.state');
          writeFileSync(state, frozen ? 'FROZEN' : 'THAWED');
          // FREEZING can last while a task sleeps in the kernel; a kill still lands after thawing.
          for (let i = 0; frozen && i < 50 && readFileSync(state, 'utf8').trim() !== 'FROZEN'; i++) await pause(2);
        }
      : undefined;
    return killUntilEmpty(() => this.pids(), freeze).catch(() => killUntilEmpty(() => this.pids()));
  }

  async destroy(): Promise<void> {
    await this.kill().catch(() => undefined);
    await removeDirectories(this.all());
  }
}

function v1Host(mountList: Mount[], own: Map<string, string>): CgroupHost {
  const dirOf = (controller: string): string | undefined => {
    const mount = mountList.find((m) => m.fstype === 'cgroup' && m.options.includes(controller));
    const cgroupPath = own.get(controller);
    return mount && cgroupPath !== undefined ? ownDirectory(mount, cgroupPath) : undefined;
  };
  const memory = dirOf('memory');
  const pids = dirOf('pids');
  if (!memory || !pids) throw new Error(`cgroup v1 lacks the ${memory ? 'pids' : 'memory'} controller`);
  const freezer = dirOf('freezer');
  const bases = { memory, pids, ...(freezer ? { freezer } : {}) };
  for (const base of Object.values(bases)) removeStale(base);
  return {
    version: 'v1',
    controllers: Object.keys(bases),
    detail: `cgroup v1 (${Object.keys(bases).join(', ')}) below ${memory}: per-run memory (swap off) and task limits, runs killed through their cgroup${freezer ? ' (frozen first)' : ''}`,
    create(name, limits) {
      const dirs = { memory: path.join(memory, name), pids: path.join(pids, name), ...(freezer ? { freezer: path.join(freezer, name) } : {}) };
      const cgroup = new V1RunCgroup(name, dirs);
      try {
        for (const dir of Object.values(dirs)) mkdirSync(dir);
        writeFileSync(path.join(dirs.memory, 'memory.limit_in_bytes'), String(limits.memoryBytes));
        // With swap accounting, memory+swap gets the same limit: the run cannot swap. Without it
        // the host has no swap accounting, and swappiness 0 keeps the run's pages in memory.
        tryWrite(path.join(dirs.memory, 'memory.memsw.limit_in_bytes'), String(limits.memoryBytes));
        tryWrite(path.join(dirs.memory, 'memory.swappiness'), '0');
        writeFileSync(path.join(dirs.pids, 'pids.max'), String(limits.maxTasks));
      } catch (error) {
        void cgroup.destroy();
        throw error;
      }
      return cgroup;
    },
  };
}

function tryWrite(file: string, value: string): void {
  try {
    writeFileSync(file, value);
  } catch {
    // not offered by this kernel
  }
}

/* ---------------------------------------------------------------- cgroup v2 */

/** Where the service's own processes move in v2, so its cgroup may delegate controllers. */
const SERVICE_LEAF = `${CGROUP_PREFIX}service`;

class V2RunCgroup implements RunCgroup {
  readonly procsFiles: string[];

  constructor(
    readonly name: string,
    private readonly dir: string,
  ) {
    this.procsFiles = [path.join(dir, 'cgroup.procs')];
  }

  place(pid: number): void {
    writeFileSync(this.procsFiles[0], `${pid}\n`);
  }

  pids(): number[] {
    return readPids(this.procsFiles[0]);
  }

  async lower(limits: RunCgroupLimits): Promise<void> {
    const memory = path.join(this.dir, 'memory.max');
    const pidsMax = path.join(this.dir, 'pids.max');
    refuseRaise(memory, limits.memoryBytes, 'memory');
    refuseRaise(pidsMax, limits.maxTasks, 'task');
    // v2 never refuses a memory.max below what the cgroup holds: it reclaims, then OOM-kills the
    // cgroup (memory.oom.group). So that is refused here, before writing, and checked after.
    const held = readNumber(path.join(this.dir, 'memory.current'));
    if (held > limits.memoryBytes) throw new Error(`memory.max could not be lowered to ${limits.memoryBytes}: the cgroup already holds ${held} bytes`);
    const kills = this.oomKills();
    await writeLower(memory, limits.memoryBytes);
    if (this.oomKills() !== kills) throw new Error(`lowering memory.max to ${limits.memoryBytes} made the kernel kill a process of the cgroup`);
    await writeLower(pidsMax, limits.maxTasks);
  }

  oomKills(): number {
    try {
      return readNumber(path.join(this.dir, 'memory.events'), 'oom_kill');
    } catch {
      return 0;
    }
  }

  kill(): Promise<void> {
    try {
      writeFileSync(path.join(this.dir, 'cgroup.kill'), '1'); // Linux 5.14+: the kernel kills every task at once
    } catch {
      // older kernel: freeze and kill, below
    }
    const freeze = async (frozen: boolean) => writeFileSync(path.join(this.dir, 'cgroup.freeze'), frozen ? '1' : '0');
    return killUntilEmpty(() => this.pids(), freeze).catch(() => killUntilEmpty(() => this.pids()));
  }

  async destroy(): Promise<void> {
    await this.kill().catch(() => undefined);
    await removeDirectories([this.dir]);
  }
}

function v2Host(mountList: Mount[], own: Map<string, string>): CgroupHost {
  const mount = mountList.find((m) => m.fstype === 'cgroup2');
  const cgroupPath = own.get('');
  if (!mount || cgroupPath === undefined) throw new Error('no cgroup v2 hierarchy is mounted');
  const base = ownDirectory(mount, cgroupPath);
  const available = readFileSync(path.join(base, 'cgroup.controllers'), 'utf8').split(/\s+/);
  for (const needed of ['memory', 'pids']) {
    if (!available.includes(needed)) throw new Error(`cgroup v2 does not delegate the ${needed} controller to ${base}`);
  }
  const enabled = readFileSync(path.join(base, 'cgroup.subtree_control'), 'utf8').split(/\s+/);
  if (!enabled.includes('memory') || !enabled.includes('pids')) {
    // "No internal processes": a cgroup that hands controllers to children holds no process
    // itself, so the service's own processes move to a leaf first.
    const leaf = path.join(base, SERVICE_LEAF);
    mkdirSync(leaf, { recursive: true });
    for (const pid of readPids(path.join(base, 'cgroup.procs'))) tryWrite(path.join(leaf, 'cgroup.procs'), String(pid));
    writeFileSync(path.join(base, 'cgroup.subtree_control'), '+memory +pids');
  }
  removeStale(base);
  return {
    version: 'v2',
    controllers: ['memory', 'pids'],
    detail: `cgroup v2 below ${base}: per-run memory.max (swap off) and pids.max, runs killed through cgroup.kill`,
    create(name, limits) {
      const dir = path.join(base, name);
      const cgroup = new V2RunCgroup(name, dir);
      try {
        mkdirSync(dir);
        writeFileSync(path.join(dir, 'memory.max'), String(limits.memoryBytes));
        tryWrite(path.join(dir, 'memory.swap.max'), '0');
        tryWrite(path.join(dir, 'memory.oom.group'), '1'); // an OOM kill ends the whole run
        writeFileSync(path.join(dir, 'pids.max'), String(limits.maxTasks));
      } catch (error) {
        void cgroup.destroy();
        throw error;
      }
      return cgroup;
    },
  };
}

/* ---------------------------------------------------------------- probe */

export interface CgroupProbe {
  host: CgroupHost | null;
  detail: string;
}

/**
 * Finds a usable hierarchy and proves it with a real cgroup: created with limits, a process
 * placed in it, killed through it, removed. `auto` prefers v2, then v1.
 */
export async function probeCgroups(setting: CgroupSetting, instanceTag: string): Promise<CgroupProbe> {
  if (setting === 'off') return { host: null, detail: 'SANDBOX_CGROUPS=off: limits rest on rlimits and the usage sampler' };
  const tried: string[] = [];
  const versions: CgroupVersion[] = setting === 'auto' ? ['v2', 'v1'] : [setting];
  for (const version of versions) {
    try {
      const list = mounts();
      const own = ownCgroups();
      const host = version === 'v2' ? v2Host(list, own) : v1Host(list, own);
      await prove(host, `${CGROUP_PREFIX}${instanceTag}-probe`);
      return { host, detail: host.detail };
    } catch (error) {
      tried.push(`${version}: ${(error as NodeJS.ErrnoException).code ?? ''} ${(error as Error).message}`.trim());
    }
  }
  return { host: null, detail: `no usable cgroup (${tried.join('; ')}): limits rest on rlimits and the usage sampler` };
}

async function prove(host: CgroupHost, name: string): Promise<void> {
  const cgroup = host.create(name, { memoryBytes: 64 * 1024 * 1024, maxTasks: 4 });
  const sleeper = spawn('/bin/sleep', ['30'], { stdio: 'ignore' });
  try {
    const exited = new Promise((resolve) => sleeper.once('exit', resolve));
    cgroup.place(sleeper.pid!);
    if (!cgroup.pids().includes(sleeper.pid!)) throw new Error('a process placed in a test cgroup is not listed in it');
    await cgroup.kill();
    await exited;
  } finally {
    sleeper.kill('SIGKILL');
    await cgroup.destroy();
  }
}

/** A run's limits as its cgroup holds them. */
export function cgroupLimits(limits: Pick<RunLimits, 'memoryBytes' | 'maxProcesses'>): RunCgroupLimits {
  // One task more than a run may have: nsjail's own process, in nsjail mode.
  return { memoryBytes: limits.memoryBytes, maxTasks: limits.maxProcesses + 1 };
}

/** Fresh cgroups for the runs of one service instance, each with its run's limits. */
export class RunCgroups {
  private sequence = 0;

  constructor(
    readonly host: CgroupHost,
    private readonly instanceTag: string,
  ) {}

  /** Throws when the kernel refuses (the run then does not start). */
  create(slot: number, limits: Pick<RunLimits, 'memoryBytes' | 'maxProcesses'>): RunCgroup {
    return this.host.create(`${CGROUP_PREFIX}${this.instanceTag}-s${slot}-${++this.sequence}`, cgroupLimits(limits));
  }
}
