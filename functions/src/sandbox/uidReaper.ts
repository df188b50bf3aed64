/**
 * Ends every process of a run's uid and removes what it left in world-writable places. Each run
 * slot has its own uid, so "every process of this uid" is exactly "every process of this run",
 * however it daemonized (double fork, setsid).
 */
import { spawn } from 'child_process';
import { promises as fs } from 'fs';
import * as path from 'path';

const WORLD_WRITABLE = ['/tmp', '/var/tmp', '/dev/shm'];

export async function processesOfUid(uid: number): Promise<number[]> {
  const pids: number[] = [];
  for (const entry of await fs.readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if ((await fs.stat(`/proc/${entry}`)).uid === uid) pids.push(Number(entry));
    } catch {
      // exited while we looked
    }
  }
  return pids;
}

/** kill(-1, SIGKILL) as the uid (the kernel's own "all processes I may signal"), until none is left. */
export async function killAllOfUid(uid: number): Promise<void> {
  for (let attempt = 0; attempt < 20; attempt++) {
    await new Promise<void>((resolve) => {
      const killer = spawn('kill', ['-KILL', '-1'], { uid, gid: uid, stdio: 'ignore', env: {} });
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
      entries = await fs.readdir(place);
    } catch {
      continue;
    }
    for (const entry of entries) {
      const full = path.join(place, entry);
      try {
        if ((await fs.lstat(full)).uid !== uid) continue;
        await fs.rm(full, { recursive: true, force: true });
        removed.push(full);
      } catch {
        // raced with another cleanup
      }
    }
  }
  return removed;
}
