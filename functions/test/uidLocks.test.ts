/**
 * The uid range lock directory (instance.ts): lock files of dead instances (killed by SIGKILL, so
 * never unlinked by their exit handler) are removed by the next claim once they are free, whatever
 * their range; a held one is never touched.
 */
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'fs';
import * as os from 'os';
import * as path from 'path';
import type { Config } from '../src/config';
import { claimUidRange } from '../src/sandbox/instance';
import { holdLock, type HeldLock } from '../src/sandbox/locks';
import { uidBase } from './security/helpers';

const asRoot = process.getuid?.() === 0;
if (!asRoot) process.stderr.write('\n*** SKIPPING uid lock tests: claiming a uid range needs root ***\n\n');
const maybe = asRoot ? test : test.skip;

maybe('a claim removes free lock files of other ranges, never a held one nor its own', async () => {
  const lockDir = mkdtempSync(path.join(os.tmpdir(), 'pyexec-uid-locks-'));
  const held: HeldLock[] = [];
  try {
    const base = uidBase();
    // Dead instances' files, far from the range claimed below (no claim overlapping them would ever look).
    const stale = ['uids-100-102.lock', 'uids-5000-5040.lock', `uids-${base + 1000}-${base + 1002}.lock`];
    for (const name of stale) writeFileSync(path.join(lockDir, name), '');
    // A live instance's, held.
    const live = `uids-${base + 2000}-${base + 2002}.lock`;
    held.push((await holdLock(path.join(lockDir, live)))!);
    // Not a lock file of a range: left alone.
    writeFileSync(path.join(lockDir, 'notes.txt'), '');

    const config = { sandboxUidBase: base, sandboxUidBaseExplicit: true, maxConcurrentRuns: 2, uidLockDir: lockDir } as unknown as Config;
    const claim = await claimUidRange(config);
    if (!claim.ok) throw new Error(claim.reason);
    if (claim.lock) held.push(claim.lock);
    expect(readdirSync(lockDir).sort()).toEqual(['claims.lock', live, 'notes.txt', `uids-${base - 1}-${base + 1}.lock`].sort());
  } finally {
    for (const lock of held) await lock.release();
    rmSync(lockDir, { recursive: true, force: true });
  }
});
