/**
 * Where the service keeps its files: the runner is staged out of the checkout (which may be closed
 * to the run uids), and the work root keeps nothing of an instance once it is gone.
 */
import { existsSync, promises as fs } from 'fs';
import * as os from 'os';
import * as path from 'path';
import { execute, py, REPO, startService } from './helpers/service';

test('a checkout in a 0700 directory still runs scripts (the runner is staged)', async () => {
  const closed = await fs.mkdtemp(path.join(os.tmpdir(), 'closed-checkout-'));
  const workRoot = await fs.mkdtemp(path.join(os.tmpdir(), 'work-root-'));
  try {
    await fs.chmod(closed, 0o700);
    await fs.cp(path.join(REPO, 'sandbox-image'), path.join(closed, 'sandbox-image'), { recursive: true });
    const service = await startService({ SANDBOX_DIR: path.join(closed, 'sandbox-image'), SANDBOX_WORK_ROOT: workRoot }, 'seccomp');
    try {
      const answer = await execute(service, py('def main():', '    return "ran"'));
      expect(answer.body.result).toBe('ran');
    } finally {
      await service.stop();
    }
  } finally {
    await fs.rm(closed, { recursive: true, force: true });
    await fs.rm(workRoot, { recursive: true, force: true });
  }
});

test("the work root keeps nothing of an instance: its own entries go at exit, a killed one's at the next start", async () => {
  const workRoot = await fs.mkdtemp(path.join(os.tmpdir(), 'work-root-'));
  await fs.chmod(workRoot, 0o711);
  try {
    // A pid that cannot be alive (above the kernel's pid_max), as if its instance was SIGKILLed.
    const stale = path.join(workRoot, 'run-99999999-0-abcdef');
    const unrelated = path.join(workRoot, 'keep-me');
    await fs.mkdir(stale);
    await fs.mkdir(unrelated);
    const service = await startService({ SANDBOX_WORK_ROOT: workRoot }, 'seccomp');
    expect(existsSync(stale)).toBe(false);
    expect((await fs.readdir(workRoot)).some((entry) => entry.startsWith(`sandbox-${service.process.pid}`))).toBe(true);
    await execute(service, py('def main():', '    return 1'));
    expect(await service.stop('SIGTERM')).toBe(0);
    expect(await fs.readdir(workRoot)).toEqual(['keep-me']);
  } finally {
    await fs.rm(workRoot, { recursive: true, force: true });
  }
});
