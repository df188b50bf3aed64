/**
 * Ends every process of a run's uid and removes what it left in world-writable places. Each run
 * slot has its own uid, so "every process of this uid" is exactly "every process of this run",
 * however it daemonized (double fork, setsid).
 */
import { spawn } from 'child_process';
import { promises as fs, lstatSync, readdirSync, statSync } from 'fs';
import * as path from 'path';

const WORLD_WRITABLE = ['/tmp', '/var/tmp', '/dev/shm'];

/**
 * The pids whose /proc entry belongs to uid. Synchronous on purpose: a container has tens of
 * processes, and one blocking scan (well under a millisecond) is cheaper than a thread-pool round
 * trip per entry, on the path of every response.
 */
export async function processesOfUid(uid: number): Promise<number[]> {
  const pids: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if (statSync(`/proc/${entry}`).uid === uid) pids.push(Number(entry));
    } catch {
      // exited while we looked
    }
  }
  return pids;
}

/** kill(-1, SIGKILL) as the uid (the kernel's own "all processes I may signal"), until none is left. */
export async function killAllOfUid(uid: number): Promise<void> {
  // The common case, a run that left nothing behind, costs one scan and no process spawn.
  if ((await processesOfUid(uid)).length === 0) return;
  for (let attempt = 0; attempt < 20; attempt++) {
    await new Promise<void>((resolve) => {
      const killer = spawn('/bin/kill', ['-KILL', '-1'], { uid, gid: uid, stdio: 'ignore', env: {} });
      killer.on('error', () => resolve());
      killer.on('close', () => resolve());
    });
    const left = await processesOfUid(uid);
    if (left.length === 0) return;
    for (const pid of left) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    await new Promise((resolve) => setTimeout(resolve, 5 * attempt));
  }
}

/** Deletes entries the uid created at the top of /tmp, /var/tmp and /dev/shm. */
export async function removeFilesOfUid(uid: number, places: string[] = WORLD_WRITABLE): Promise<string[]> {
  const removed: string[] = [];
  for (const place of places) {
    let entries: string[];
    try {
      entries = readdirSync(place);
    } catch {
      continue;
    }
    for (const entry of entries) {
      const full = path.join(place, entry);
      try {
        if (lstatSync(full).uid !== uid) continue;
        await fs.rm(full, { recursive: true, force: true });
        removed.push(full);
      } catch {
        // raced with another cleanup
      }
    }
  }
  return removed;
}
