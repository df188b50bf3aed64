/** Operating the service: structured logs, health, admission control, disconnects, graceful shutdown. */
import { createHash } from 'crypto';
import { execute, py, request, startService, type RunningService } from './helpers/service';
import { processesWithArgument } from './helpers/processes';

describe('structured logs and health', () => {
  let service: RunningService;
  beforeAll(async () => {
    service = await startService({ GOOGLE_CLOUD_PROJECT: 'demo-project' }, 'seccomp');
  });
  afterAll(async () => {
    await service?.stop();
  });

  test('start-up line: mode, reason, capability findings, effective limits', () => {
    const startup = service.logEntries().find((entry) => entry.event === 'startup');
    expect(startup).toBeDefined();
    expect(startup!.severity).toBe('INFO');
    expect(startup!.sandbox_mode).toBe('seccomp');
    expect(startup!.reason).toContain('SANDBOX_MODE=seccomp');
    expect(Object.keys(startup!.capabilities).sort()).toEqual(['cgroups', 'landlock', 'nsjail', 'running_as_root', 'seccomp', 'warm_pool']);
    expect(startup!.limits.scriptTimeoutMs).toBe(10000);
  });

  test('one line per request: severity, httpRequest, trace, request id, outcome, timings, script hash; never the script or its output', async () => {
    const script = py('def main(secret_arg):', "    print('printed-output-marker')", "    return 'returned-value-marker'");
    const traceId = '4bf92f3577b34da6a3ce929d0e0e4736';
    const answer = await request(`${service.url}/execute`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', traceparent: `00-${traceId}-00f067aa0ba902b7-01` },
      body: JSON.stringify({ script, args: { secret_arg: 'argument-marker' } }),
    });
    expect(answer.status).toBe(200);
    await new Promise((r) => setTimeout(r, 100));
    const line = service.logEntries().find((entry) => entry.request_id === answer.body.request_id)!;
    expect(line).toBeDefined();
    expect(line.severity).toBe('INFO');
    expect(line.httpRequest).toMatchObject({ requestMethod: 'POST', requestUrl: '/execute', status: 200 });
    expect(line.httpRequest.latency.seconds * 1e9 + line.httpRequest.latency.nanos).toBeGreaterThan(0);
    expect(line['logging.googleapis.com/trace']).toBe(`projects/demo-project/traces/${traceId}`);
    expect(line['logging.googleapis.com/spanId']).toBe('00f067aa0ba902b7');
    expect(line).toMatchObject({ outcome: 'success', sandbox: 'seccomp', script_sha256: createHash('sha256').update(script).digest('hex') });
    for (const field of ['wall_ms', 'cpu_ms', 'queue_ms', 'stdout_bytes', 'script_bytes']) expect(typeof line[field]).toBe('number');
    const everything = service.logs.join('\n');
    for (const secret of ['printed-output-marker', 'returned-value-marker', 'argument-marker', 'def main']) expect(everything).not.toContain(secret);
  });

  test('X-Cloud-Trace-Context is understood too', async () => {
    const answer = await request(`${service.url}/healthz`, { headers: { 'x-cloud-trace-context': '105445aa7843bc8bf206b12000100000/1;o=1' } });
    await new Promise((r) => setTimeout(r, 50));
    const line = service.logEntries().find((entry) => entry.request_id === answer.body.request_id)!;
    expect(line['logging.googleapis.com/trace']).toBe('projects/demo-project/traces/105445aa7843bc8bf206b12000100000');
  });

  test('GET /healthz is cheap and reports mode, capacity and load', async () => {
    const answer = await request(`${service.url}/healthz`);
    expect(answer.status).toBe(200);
    expect(answer.body).toMatchObject({ status: 'ok', in_flight: 0, queued: 0, sandbox: { mode: 'seccomp' } });
    expect(answer.body.capacity).toBeGreaterThanOrEqual(1);
    expect(answer.body.canary).toBeUndefined();
  });

  test('GET /healthz?deep=1 runs a canary through the real sandbox', async () => {
    const answer = await request(`${service.url}/healthz?deep=1`);
    expect(answer.status).toBe(200);
    expect(answer.body.canary).toMatchObject({ ok: true });
    expect(answer.body.canary.wall_ms).toBeGreaterThan(0);
  });
});

describe('admission control', () => {
  let service: RunningService;
  beforeAll(async () => {
    service = await startService({ MAX_CONCURRENT_RUNS: '1', MAX_QUEUE: '1', MAX_QUEUE_WAIT_MS: '20000' }, 'seccomp');
  });
  afterAll(async () => {
    await service?.stop();
  });

  test('beyond the slots and the queue: 429 with Retry-After; queue time is reported and not charged to the run', async () => {
    const slow = py('import time', 'def main():', '    time.sleep(1.5)', "    return 'slow'");
    const first = execute(service, slow);
    await new Promise((r) => setTimeout(r, 200));
    const second = execute(service, slow);
    await new Promise((r) => setTimeout(r, 200));
    const third = await execute(service, slow);
    expect(third.status).toBe(429);
    expect(third.body.error.type).toBe('overloaded');
    expect(Number(third.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
    const [a, b] = await Promise.all([first, second]);
    expect([a.status, b.status]).toEqual([200, 200]);
    expect(b.body.timing.queue_ms).toBeGreaterThan(800);
    expect(b.body.timing.wall_ms).toBeLessThan(b.body.timing.queue_ms + 1500);
  });

  test('a request that waits longer than MAX_QUEUE_WAIT_MS gets 429', async () => {
    const quick = await startService({ MAX_CONCURRENT_RUNS: '1', MAX_QUEUE: '5', MAX_QUEUE_WAIT_MS: '300' }, 'seccomp');
    try {
      const blocker = execute(quick, py('import time', 'def main():', '    time.sleep(1.5)'));
      await new Promise((r) => setTimeout(r, 200));
      const waited = await execute(quick, py('def main():', '    return 1'));
      expect(waited.status).toBe(429);
      expect(waited.body.error.message).toContain('300 ms');
      expect((await blocker).status).toBe(200);
    } finally {
      await quick.stop();
    }
  });

  test('a client that disconnects gets its run killed', async () => {
    const marker = `${Date.now() % 100000}.75`;
    const controller = new AbortController();
    const pending = fetch(`${service.url}/execute`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ script: py('import subprocess', 'def main():', `    subprocess.run(['/bin/sleep', '${marker}'])`) }),
      signal: controller.signal,
    }).catch(() => 'aborted');
    for (let i = 0; i < 50 && (await processesWithArgument(marker)).length === 0; i++) await new Promise((r) => setTimeout(r, 50));
    expect((await processesWithArgument(marker)).length).toBe(1);
    controller.abort();
    expect(await pending).toBe('aborted');
    for (let i = 0; i < 40 && (await processesWithArgument(marker)).length > 0; i++) await new Promise((r) => setTimeout(r, 50));
    expect(await processesWithArgument(marker)).toEqual([]);
    expect((await execute(service, py('def main():', '    return "still here"'))).body.result).toBe('still here');
  });
});

describe('graceful shutdown', () => {
  test('SIGTERM: no new runs, in-flight runs finish within the grace, the rest are killed and answered, clean exit', async () => {
    const service = await startService({ SHUTDOWN_GRACE_MS: '2000', MAX_CONCURRENT_RUNS: '3' }, 'seccomp');
    const marker = `${Date.now() % 100000}.5`;
    const short = execute(service, py('import time', 'def main():', '    time.sleep(1)', "    return 'finished in grace'"));
    const long = execute(service, py('import subprocess', 'def main():', `    subprocess.run(['/bin/sleep', '${marker}'])`));
    for (let i = 0; i < 50 && (await processesWithArgument(marker)).length === 0; i++) await new Promise((r) => setTimeout(r, 50));
    const signalledAt = Date.now();
    service.process.kill('SIGTERM');
    await new Promise((r) => setTimeout(r, 200));
    const refused = await execute(service, py('def main():', '    return 1'));
    expect(refused.status).toBe(503);
    expect(refused.body.error.type).toBe('shutting_down');

    const [shortAnswer, longAnswer] = await Promise.all([short, long]);
    expect(shortAnswer.status).toBe(200);
    expect(shortAnswer.body.result).toBe('finished in grace');
    expect(longAnswer.status).toBe(503);
    expect(longAnswer.body.error.type).toBe('shutting_down');
    expect(Date.now() - signalledAt).toBeGreaterThanOrEqual(1900);

    expect(await service.exited).toBe(0);
    expect(await processesWithArgument(marker)).toEqual([]);
    const events = service.logEntries().map((entry) => entry.event).filter(Boolean);
    expect(events).toEqual(expect.arrayContaining(['shutdown_started', 'shutdown_killing', 'shutdown_complete']));
  });

  test('SIGTERM with nothing in flight exits at once', async () => {
    const service = await startService({}, 'seccomp');
    const started = Date.now();
    service.process.kill('SIGTERM');
    expect(await service.exited).toBe(0);
    expect(Date.now() - started).toBeLessThan(1500);
  });
});
