/**
 * A process SIGKILL cannot end, as one stuck in the kernel would be: frozen in a cgroup v1
 * freezer of its own. Stands in for a run's unkillable leftover in the quarantine tests.
 */
import { spawn, type ChildProcess } from 'child_process';
import { existsSync, mkdirSync, readFileSync, rmdirSync, writeFileSync } from 'fs';
import * as path from 'path';

const FREEZER = '/sys/fs/cgroup/freezer';

/** Root, and a cgroup v1 freezer hierarchy mounted at /sys/fs/cgroup/freezer. */
export const freezerUsable =
  process.getuid?.() === 0 &&
  readFileSync('/proc/self/mounts', 'utf8')
    .split('\n')
    .some((line) => {
      const [, mountPoint, type, options] = line.split(' ');
      return mountPoint === FREEZER && type === 'cgroup' && options.split(',').includes('freezer');
    });

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

export async function until(check: () => boolean | Promise<boolean>, what: string, limitMs = 50000): Promise<void> {
  const deadline = Date.now() + limitMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

/** A process of uid in a frozen freezer cgroup of its own: SIGKILL stays pending until thaw(). */
export class Unkillable {
  readonly child: ChildProcess;
  private readonly dir = path.join(FREEZER, `pyexec-test-unkillable-${process.pid}-${Math.random().toString(36).slice(2, 8)}`);

  constructor(readonly uid: number) {
    this.child = spawn('/bin/sleep', ['1000'], { uid, gid: uid, stdio: 'ignore' });
  }

  get pid(): number {
    return this.child.pid!;
  }

  async freeze(): Promise<void> {
    mkdirSync(this.dir);
    writeFileSync(path.join(this.dir, 'cgroup.procs'), String(this.pid));
    writeFileSync(path.join(this.dir, 'freezer.state'), 'FROZEN');
    await until(() => readFileSync(path.join(this.dir, 'freezer.state'), 'utf8').trim() === 'FROZEN', 'the freezer to freeze');
  }

  /** Thawed, it dies of the SIGKILL it was sent meanwhile (or of this one). */
  async thaw(): Promise<void> {
    if (!existsSync(this.dir)) return;
    try {
      process.kill(this.pid, 'SIGKILL');
    } catch {
      // gone
    }
    writeFileSync(path.join(this.dir, 'freezer.state'), 'THAWED');
    await until(() => this.child.exitCode !== null || this.child.signalCode !== null, 'the thawed process to exit');
    await until(() => readFileSync(path.join(this.dir, 'cgroup.procs'), 'utf8').trim() === '', 'the freezer cgroup to empty');
    rmdirSync(this.dir);
  }
}
