/**
 * Two instances on one host, with default settings: the same work root and the default
 * SANDBOX_UID_BASE, each in a pid namespace of its own (as two containers without an init would
 * be: both are PID 1). Neither may remove the other's files, both must serve runs correctly at
 * the same time, and each must run scripts under a uid range of its own (a run's cleanup kills
 * every process of its uid).
 */
import { existsSync, promises as fs } from 'fs';
import * as os from 'os';
import * as path from 'path';
import { AS_PID_1, execute, nodePidOf, py, request, sandboxModes, startService, type RunningService } from './helpers/service';

/** Unset: the service's own default (an empty value counts as unset). */
const DEFAULT_UID_BASE = { SANDBOX_UID_BASE: '' };

/** SIGTERM to the service itself, as a container runtime would send it: a graceful stop. */
async function stopGracefully(service: RunningService): Promise<void> {
  if (service.process.exitCode === null) process.kill(await nodePidOf(service), 'SIGTERM');
  await service.exited;
  await service.stop();
}

interface Identity {
  workDir: string;
  base: number;
  first: number;
  last: number;
}

/** What an instance's /healthz says about itself (sandbox.capabilities). */
async function capabilities(service: RunningService): Promise<Record<string, any>> {
  return (await request(`${service.url}/healthz`)).body.sandbox.capabilities;
}

function identity(capabilities: Record<string, any>): Identity {
  const { work_dir: workDir, uid_range: range } = capabilities;
  expect({ workDir, range }).toEqual({
    workDir: expect.objectContaining({ available: true, path: expect.any(String) }),
    range: expect.objectContaining({ available: true, base: expect.any(Number), first: expect.any(Number), last: expect.any(Number) }),
  });
  return { workDir: workDir.path, base: range.base, first: range.first, last: range.last };
}

describe.each(sandboxModes())('two instances with default settings on one host, in pid namespaces of their own (%s mode)', (mode) => {
  let root: string;
  let workRoot: string;
  const services: RunningService[] = [];
  beforeAll(async () => {
    root = await fs.mkdtemp(path.join(os.tmpdir(), 'pyexec-instances-'));
    await fs.chmod(root, 0o755); // as the OS temp dir is: run uids pass through it
    // One work root for both, made by the services themselves, as the default one is.
    workRoot = path.join(root, 'pyexec-runs');
  });
  afterAll(async () => {
    for (const service of services) await service.stop('SIGKILL').catch(() => undefined);
    await fs.rm(root, { recursive: true, force: true });
  });

  test("both serve concurrent runs correctly, neither removes the other's files, and their uid ranges differ", async () => {
    const env = { SANDBOX_WORK_ROOT: workRoot, ...DEFAULT_UID_BASE };
    const a = await startService(env, mode, AS_PID_1);
    services.push(a);
    // The second starts while the first lives: its start-up clean-up runs over the first's files.
    const b = await startService(env, mode, AS_PID_1);
    services.push(b);
    // Both are PID 1 of their namespaces: nothing that names their files by pid can tell them apart.
    expect(await fs.readFile(`/proc/${await nodePidOf(a)}/status`, 'utf8')).toMatch(/^NSpid:\s+\d+\s+1$/m);
    expect(await fs.readFile(`/proc/${await nodePidOf(b)}/status`, 'utf8')).toMatch(/^NSpid:\s+\d+\s+1$/m);

    // Read now (checked below): the second is stopped before the checks.
    const [foundA, foundB] = [await capabilities(a), await capabilities(b)];

    // Concurrent runs on both, interleaved: each answer carries its own nonce.
    const script = py('import os, time', 'def main(nonce):', '    time.sleep(0.3)', '    print(nonce)', '    return {"nonce": nonce, "uid": os.getuid()}');
    const sent = Array.from({ length: 8 }, (_, i) => ({ service: i % 2 === 0 ? a : b, nonce: `nonce-${i}-${Math.random().toString(36).slice(2)}` }));
    const answers = await Promise.all(sent.map(({ service, nonce }) => execute(service, script, { nonce })));
    answers.forEach((answer, i) => {
      expect({ i, status: answer.status, error: answer.body?.error }).toEqual({ i, status: 200, error: undefined });
      expect(answer.body.result.nonce).toBe(sent[i].nonce);
      expect(answer.body.stdout).toBe(`${sent[i].nonce}\n`);
    });

    // The second stops, cleaning up after itself: the first keeps its files and goes on.
    await stopGracefully(b);
    const after = await Promise.all([0, 1, 2, 3].map((i) => execute(a, script, { nonce: `after-${i}` })));
    after.forEach((answer, i) => {
      expect({ status: answer.status, error: answer.body?.error }).toEqual({ status: 200, error: undefined });
      expect(answer.body.result.nonce).toBe(`after-${i}`);
    });

    // Each has a work directory of its own, and its own uid range, none overlapping.
    const [ida, idb] = [identity(foundA), identity(foundB)];
    expect(ida.workDir).not.toBe(idb.workDir);
    expect(path.dirname(ida.workDir)).toBe(workRoot);
    expect(path.dirname(idb.workDir)).toBe(workRoot);
    expect(existsSync(ida.workDir)).toBe(true);
    expect(existsSync(idb.workDir)).toBe(false); // removed by its own instance as it stopped
    expect(ida.base).not.toBe(idb.base);
    expect(ida.last < idb.first || idb.last < ida.first).toBe(true);
    if (mode === 'seccomp') {
      // Seccomp mode: each run had a uid of its own instance's range (slot n is base+n).
      answers.forEach((answer, i) => {
        const id = sent[i].service === a ? ida : idb;
        expect(answer.body.result.uid).toBeGreaterThanOrEqual(id.base);
        expect(answer.body.result.uid).toBeLessThanOrEqual(id.last);
      });
    }
    const entries = [...a.logEntries(), ...b.logEntries()];
    expect(
      entries
        .filter((entry) => entry.event === 'uid_range_claimed')
        .map((entry) => entry.base)
        .sort((x, y) => x - y),
    ).toEqual([ida.base, idb.base].sort((x, y) => x - y));

    // A third starts while the first lives: it may take the freed range, never the first's.
    const c = await startService(env, mode, AS_PID_1);
    services.push(c);
    const idc = identity(await capabilities(c));
    expect(idc.last < ida.first || ida.last < idc.first).toBe(true);
    const [fromA, fromC] = await Promise.all([execute(a, script, { nonce: 'a' }), execute(c, script, { nonce: 'c' })]);
    expect([fromA.body.result?.nonce, fromC.body.result?.nonce]).toEqual(['a', 'c']);
    expect(existsSync(ida.workDir)).toBe(true);

    await stopGracefully(c);
    await stopGracefully(a);
    // Each removed its own work directory when it stopped.
    expect(await fs.readdir(workRoot)).toEqual([]);
  }, 180000);
});

describe('an explicitly set SANDBOX_UID_BASE another instance holds', () => {
  const services: RunningService[] = [];
  afterAll(async () => {
    for (const service of services) await service.stop().catch(() => undefined);
  });

  test('is refused, not moved from: every run answered 503 with the reason, naming the variable; the holder is unaffected', async () => {
    const base = 500000 + Math.floor(Math.random() * 40000) * 64;
    const holder = await startService({ SANDBOX_UID_BASE: String(base), MAX_CONCURRENT_RUNS: '2' });
    services.push(holder);
    // The same base, and one whose range overlaps the holder's (base+1 .. base+2).
    for (const taken of [base, base + 2]) {
      const refused = await startService({ SANDBOX_UID_BASE: String(taken), MAX_CONCURRENT_RUNS: '2' }, 'seccomp', [], { allowNoSandbox: true });
      services.push(refused);
      const health = await request(`${refused.url}/healthz`);
      expect(health.status).toBe(503);
      expect(health.body.status).toBe('unavailable');
      expect(health.body.sandbox.reason).toMatch(
        new RegExp(`^SANDBOX_UID_BASE=${taken} \\(uids ${taken - 1}-${taken + 1}\\) overlaps a range another instance on this host holds .*set SANDBOX_UID_BASE to a free range`),
      );
      expect(health.body.sandbox.capabilities.uid_range).toMatchObject({ available: false, base: null, requested: taken });
      const answer = await execute(refused, py('def main():', '    return 1'));
      expect(answer.status).toBe(503);
      expect(answer.body.error.type).toBe('sandbox_unavailable');
      expect(answer.body.error.message).toContain(`SANDBOX_UID_BASE=${taken}`);
      expect(refused.logEntries().find((entry) => entry.event === 'uid_range_refused')).toMatchObject({ severity: 'ERROR', requested_base: taken });
      expect(refused.process.exitCode).toBeNull(); // it stays up, answering
    }
    const still = await execute(holder, py('import os', 'def main():', '    return os.getuid()'));
    expect(still.status).toBe(200);
    expect([base, base + 1]).toContain(still.body.result);
  }, 120000);
});
