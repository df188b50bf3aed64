/**
 * A run uid some of whose processes survive SIGKILL is never given a new run (uidReaper.ts,
 * killAllOfUid): the kill reports it, the uid is quarantined, its slot refuses runs with the reason,
 * and the uid comes back once the processes are gone.
 *
 * A process that survives SIGKILL, made on purpose: one in a frozen cgroup v1 freezer stays in
 * uninterruptible sleep with the kill pending until it is thawed (as a process stuck in the kernel
 * would). cgroup v2's freezer lets SIGKILL through, so without the v1 freezer (or without root)
 * these tests are skipped with a notice.
 */
import { cleanUpAfterAnswer, killAllOfUid, quarantinedUids, uidReady, uidRefusal, UidNotEmptyError } from '../src/sandbox/uidReaper';
import { execute, py, request, sandboxModes, startService, type RunningService } from './helpers/service';
import { freezerUsable, sleep, Unkillable, until } from './helpers/unkillable';
import { uidBase } from './security/helpers';

if (!freezerUsable) process.stderr.write('\n*** SKIPPING quarantine tests: they need root and a cgroup v1 freezer hierarchy at /sys/fs/cgroup/freezer ***\n\n');
const maybe = freezerUsable ? describe : describe.skip;

maybe('killAllOfUid with a process it cannot kill', () => {
  const uid = uidBase();
  let stray: Unkillable;
  beforeAll(async () => {
    stray = new Unkillable(uid);
    await stray.freeze();
  });
  afterAll(async () => {
    await stray?.thaw();
  });

  test('throws, quarantines the uid, holds its cleanups back, and lets it go once the process is gone', async () => {
    const failed = await killAllOfUid(uid).catch((error: unknown) => error);
    expect(failed).toBeInstanceOf(UidNotEmptyError);
    expect((failed as UidNotEmptyError).pids).toEqual([stray.pid]);
    expect((failed as Error).message).toContain(`pid ${stray.pid} "sleep" state D`);
    expect(quarantinedUids().map((entry) => entry.uid)).toContain(uid);

    // Its next run is refused at once, with the reason; its cleanup waits for the recovery.
    expect(await uidReady(uid)).toMatch(new RegExp(`^uid ${uid} is out of use: 1 process of an earlier run survived SIGKILL \\(pid ${stray.pid} `));
    let cleaned = false;
    const cleanup = cleanUpAfterAnswer(uid, async () => {
      cleaned = true;
    });
    await sleep(1500); // several retries of the recovery
    expect(cleaned).toBe(false);
    expect(uidRefusal(uid)).toBeDefined();

    await stray.thaw();
    await cleanup;
    expect(cleaned).toBe(true);
    expect(uidRefusal(uid)).toBeUndefined();
    expect(await uidReady(uid)).toBeUndefined();
    await expect(killAllOfUid(uid)).resolves.toBeUndefined();
  });
});

maybe.each(sandboxModes())('a cold run whose uid keeps a process it cannot kill (%s mode)', (mode) => {
  const base = uidBase();
  let service: RunningService;
  let stray: Unkillable | undefined;
  beforeAll(async () => {
    service = await startService({ MAX_CONCURRENT_RUNS: '1', SANDBOX_UID_BASE: String(base) }, mode, [], { path: 'cold' });
  });
  afterAll(async () => {
    await stray?.thaw();
    await service?.stop();
  });

  test('is answered 503, its slot refuses runs with the reason until the process is gone, then runs again', async () => {
    const hello = py('def main():', "    return 'ok'");
    expect((await execute(service, hello)).status).toBe(200);

    // A process of slot 0's uid that SIGKILL does not end, as a run's leftover stuck in the kernel would be.
    stray = new Unkillable(base);
    await stray.freeze();

    const first = await execute(service, hello);
    expect(first.status).toBe(503);
    expect(first.body.error.type).toBe('sandbox_unavailable');
    expect(first.body.error.message).toMatch(/the run's processes could not all be killed: 1 process of uid \d+ survived SIGKILL/);
    expect(first.body.error.message).toContain(`pid ${stray.pid}`);
    expect(first.body.result).toBeUndefined();

    const second = await execute(service, hello);
    expect(second.status).toBe(503);
    expect(second.body.error.message).toMatch(new RegExp(`^run slot 0 refuses runs: uid ${base} is out of use: .*pid ${stray.pid}.*returns to use once they are gone$`));

    const health = (await request(`${service.url}/health`)).body;
    expect(health.quarantined_uids).toEqual([expect.objectContaining({ uid: base, pids: [stray.pid] })]);
    expect(service.logEntries().filter((entry) => entry.event === 'uid_quarantined')).toEqual([expect.objectContaining({ severity: 'ERROR', uid: base, pids: [stray.pid] })]);

    // The instance stays up meanwhile, and the slot comes back once the process is gone.
    await stray.thaw();
    await until(async () => (await request(`${service.url}/health`)).body.quarantined_uids.length === 0, 'the uid to leave quarantine');
    expect(service.logEntries().filter((entry) => entry.event === 'uid_recovered')).toEqual([expect.objectContaining({ uid: base })]);
    const again = await execute(service, hello);
    expect({ status: again.status, result: again.body.result }).toEqual({ status: 200, result: 'ok' });
  });
});

maybe.each(sandboxModes())('a warm slot whose uid keeps a process it cannot kill (%s mode)', (mode) => {
  const base = uidBase();
  let service: RunningService;
  let stray: Unkillable | undefined;
  beforeAll(async () => {
    service = await startService({ MAX_CONCURRENT_RUNS: '1', WARM_POOL_SIZE: '1', SANDBOX_UID_BASE: String(base) }, mode, [], { path: 'warm' });
  });
  afterAll(async () => {
    await stray?.thaw();
    await service?.stop();
  });

  test('gets no new child while the process lives: its runs are refused with the reason, then it runs again', async () => {
    const hello = py('def main():', "    return 'ok'");
    expect((await execute(service, hello)).status).toBe(200);

    // A process of slot 0's uid outside the run's cgroup that SIGKILL does not end.
    stray = new Unkillable(base);
    await stray.freeze();

    // The run that finds it may still answer (its own processes all died, in its cgroup); the
    // sweep of the uid after it cannot empty the uid, which is quarantined: no child is forked for it.
    const first = await execute(service, hello);
    expect([200, 503]).toContain(first.status);
    await until(async () => (await request(`${service.url}/health`)).body.quarantined_uids.length === 1, 'the uid to be quarantined');
    const refused = await execute(service, hello);
    expect(refused.status).toBe(503);
    expect(refused.body.error.message).toMatch(new RegExp(`uid ${base} is out of use: .*pid ${stray.pid}`));
    expect((await request(`${service.url}/health`)).body.warm_pool.waiting).toBe(0);

    await stray.thaw();
    await until(async () => (await request(`${service.url}/health`)).body.quarantined_uids.length === 0, 'the uid to leave quarantine');
    const again = await execute(service, hello);
    expect({ status: again.status, result: again.body.result }).toEqual({ status: 200, result: 'ok' });
  }, 150000);
});
