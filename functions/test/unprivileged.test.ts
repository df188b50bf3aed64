/**
 * An unprivileged container, simulated (helpers/unprivileged.py): root without CAP_SYS_ADMIN,
 * under a seccomp filter like Docker's default profile, with read-only cgroups. This is what
 * `docker run` without --privileged gives, and what Cloud Run may give. The service must choose
 * seccomp mode by itself, say why nsjail and cgroups are out, and still contain a hostile run.
 * (The "unprivileged" jest project runs the whole /execute suite the same way.)
 */
import { execute, pathUnderTest, py, startService, UNPRIVILEGED_PREFIX, type RunningService } from './helpers/service';
import { uidBase } from './security/helpers';

describe(`an unprivileged container (${pathUnderTest()} path)`, () => {
  let service: RunningService;
  beforeAll(async () => {
    service = await startService({ SANDBOX_MODE: 'auto', SCRIPT_MEMORY_MB: '256', SANDBOX_UID_BASE: String(uidBase()) }, 'seccomp', UNPRIVILEGED_PREFIX);
  });
  afterAll(async () => {
    await service?.stop();
  });

  test('auto chooses seccomp mode and says why nsjail and cgroups are out', async () => {
    const health = (await (await fetch(`${service.url}/health`)).json()) as any;
    expect(health.status).toBe('ok');
    expect(health.sandbox.mode).toBe('seccomp');
    expect(health.sandbox.reason).toMatch(/^auto: nsjail not usable/);
    const { cgroups, seccomp } = health.sandbox.capabilities;
    expect(seccomp.available).toBe(true);
    expect(cgroups.available).toBe(false);
    expect(cgroups.detail).toMatch(/no usable cgroup/);
  });

  test('a script runs and its result comes back', async () => {
    const answer = await execute(service, py('import pandas as pd', 'def main():', '    return int(pd.Series([1, 2, 3]).sum())'));
    expect(answer.status).toBe(200);
    expect(answer.body.result).toBe(6);
  });

  test('without cgroups, shared memory over forked children is still held to the limit', async () => {
    const answer = await execute(
      service,
      py(
        'import mmap, os, time',
        'def main():',
        '    for _ in range(4):',
        '        if os.fork() == 0:',
        '            m = mmap.mmap(-1, 100 << 20, flags=mmap.MAP_SHARED)',
        '            for j in range(0, len(m), 4096): m[j] = 1',
        '            time.sleep(30)',
        '    time.sleep(5)',
      ),
    );
    expect(answer.status).toBe(422);
    expect(answer.body.error.type).toBe('memory_limit');
  });
});
