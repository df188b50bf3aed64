/**
 * Liveness locks: how instances on one host tell a live instance from a dead one, whatever pid
 * namespace each runs in. A pid says nothing across namespaces (every container's first process
 * is pid 1, and pids repeat after a restart), so nothing here is named or checked by pid.
 *
 * The lock: flock(2) on a file, held by a child process: util-linux's `flock --no-fork`, which
 * takes the lock and becomes `cat >/dev/null` (keeping the locked descriptor), its stdin a pipe
 * from the service. Why this one:
 * - It dies with the service, however the service ends: the kernel closes the service's end of
 *   the pipe when the service exits, even by SIGKILL; `cat` sees end-of-file and exits, and the
 *   kernel drops the lock with the last descriptor of the locked file. Nothing has to clean up a
 *   lock file: one left on disk is free, not stale.
 * - It is the kernel's answer, not a guess: flock locks are seen by every process that opens
 *   the same file, in any pid namespace, mount namespace or container that shares the
 *   filesystem. A check is "can I take it right now" (`flock --nonblock`), which is atomic: two
 *   instances can never both take one lock, and no stale lock has to be recognised and broken
 *   (which is where pid files and socket files race).
 * - Node has no flock(2) of its own, and the alternatives were weaker: a listening Unix socket
 *   file tells "alive" (connect succeeds) from "gone" (ECONNREFUSED) just as well, but claiming a
 *   name whose socket is dead needs an unlink-and-rebind that two claimants can interleave; a
 *   native addon is new code to trust. util-linux is Essential in Debian (the runtime image has
 *   `flock`), and the holder costs one small process per lock (two per instance).
 * Limits: the files must be on a local filesystem (flock over NFS is emulated with byte-range
 * locks and depends on the server), and a holder killed on its own (by hand, by the OOM killer)
 * frees its lock while the service runs on: its owner is told (onLost) and logs it.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'child_process';

/** flock's exit status when the lock is held by someone else (--conflict-exit-code). */
const TAKEN = 75;
const FLOCK_ENV = { PATH: '/usr/bin:/bin:/usr/sbin:/sbin', LC_ALL: 'C' };

export interface HeldLock {
  /** The locked file (as it was named when the lock was taken). */
  readonly file: string;
  /** Releases the lock: resolves once its holder has exited. */
  release(): Promise<void>;
  /** Called if the holder exits while the lock was meant to be held (not after release()). */
  onLost: (reason: string) => void;
}

/**
 * Takes the lock on file (created if missing) and holds it until release() or the service's
 * exit. waitSeconds 0: undefined at once when someone else holds it; otherwise waits that long
 * for it. Throws when flock cannot run or cannot open the file.
 */
export function holdLock(file: string, waitSeconds = 0): Promise<HeldLock | undefined> {
  const wait = waitSeconds > 0 ? [`--timeout=${waitSeconds}`] : ['--nonblock'];
  const holder = spawn('flock', ['--exclusive', '--no-fork', ...wait, `--conflict-exit-code=${TAKEN}`, file, '/bin/sh', '-c', 'echo held && exec cat >/dev/null'], {
    stdio: ['pipe', 'pipe', 'pipe'],
    env: FLOCK_ENV,
  });
  return new Promise((resolve, reject) => {
    let output = '';
    let stderr = '';
    let settled = false;
    let released = false;
    const lock: HeldLock = {
      file,
      onLost: () => undefined,
      release: () => {
        released = true;
        if (holder.exitCode !== null || holder.signalCode !== null) return Promise.resolve();
        return new Promise<void>((done) => {
          holder.once('exit', () => done());
          holder.stdin.end();
        });
      },
    };
    holder.stdin.on('error', () => undefined);
    holder.stderr.on('data', (chunk: Buffer) => (stderr = (stderr + chunk.toString('utf8')).slice(-1000)));
    holder.stdout.on('data', (chunk: Buffer) => {
      output += chunk.toString('utf8');
      if (!settled && output.includes('held\n')) {
        settled = true;
        // The service's life is not bound to its locks' holders: they end when it does.
        unrefHolder(holder);
        resolve(lock);
      }
    });
    holder.on('error', (error) => {
      if (settled) return;
      settled = true;
      reject(new Error(`cannot run flock (util-linux) to lock ${file}: ${error.message}`));
    });
    holder.on('exit', (code, signal) => {
      if (!settled) {
        settled = true;
        if (code === TAKEN) resolve(undefined);
        else reject(new Error(`flock could not lock ${file} (exit ${code}, signal ${signal}): ${stderr.trim() || 'no message'}`));
        return;
      }
      if (!released) lock.onLost(`the holder of the lock on ${file} exited (code ${code}, signal ${signal})`);
    });
  });
}

/**
 * Whether a live process holds the lock on file right now: true, false, or undefined when that
 * cannot be told (flock failed, e.g. the file cannot be opened). The check takes the lock for an
 * instant when it is free; owners take theirs once and keep it, so that instant is harmless.
 */
export function isHeld(file: string): Promise<boolean | undefined> {
  return new Promise((resolve) => {
    const check = spawn('flock', ['--shared', '--nonblock', `--conflict-exit-code=${TAKEN}`, file, '/bin/true'], { stdio: 'ignore', env: FLOCK_ENV });
    check.on('error', () => resolve(undefined));
    check.on('exit', (code) => resolve(code === 0 ? false : code === TAKEN ? true : undefined));
  });
}

function unrefHolder(holder: ChildProcessWithoutNullStreams): void {
  holder.unref();
  for (const stream of [holder.stdin, holder.stdout, holder.stderr]) (stream as unknown as { unref?: () => void }).unref?.();
}
