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
    expect(Object.keys(startup!.capabilities).sort()).toEqual(['cgroups', 'landlock', 'nsjail', 'running_as_root', 'seccomp', 'uid_range', 'warm_pool', 'work_dir']);
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
    expect(line.httpRequest).toMatchObject({ requestMethod: 'POST', requestUrl: '/execute', status: 200, remoteIp: expect.stringMatching(/127\.0\.0\.1$/) });
    // LogEntry.httpRequest.latency is a google.protobuf.Duration: in JSON a string like "0.011s".
    expect(line.httpRequest.latency).toMatch(/^\d+(\.\d{1,9})?s$/);
    expect(parseFloat(line.httpRequest.latency)).toBeGreaterThan(0);
    expect(line.httpRequest.requestSize).toBe(String(Buffer.byteLength(JSON.stringify({ script, args: { secret_arg: 'argument-marker' } }))));
    expect(line['logging.googleapis.com/trace']).toBe(`projects/demo-project/traces/${traceId}`);
    expect(line['logging.googleapis.com/spanId']).toBe('00f067aa0ba902b7');
    expect(line).toMatchObject({ outcome: 'success', sandbox: 'seccomp', script_sha256: createHash('sha256').update(script).digest('hex') });
    for (const field of ['wall_ms', 'cpu_ms', 'queue_ms', 'stdout_bytes', 'script_bytes']) expect(typeof line[field]).toBe('number');
    const everything = service.logs.join('\n');
    for (const secret of ['printed-output-marker', 'returned-value-marker', 'argument-marker', 'def main']) expect(everything).not.toContain(secret);
  });

  test('every line is a structured entry with a severity, and none carries logName', async () => {
    await request(`${service.url}/health`);
    await request(`${service.url}/nowhere`);
    await new Promise((r) => setTimeout(r, 100));
    const lines = service.logs.filter((line) => !line.startsWith('[stderr]') && line.startsWith('{'));
    expect(lines.length).toBeGreaterThan(2);
    for (const line of lines) {
      const entry = JSON.parse(line);
      expect({ line, severity: typeof entry.severity }).toEqual({ line, severity: 'string' });
      expect(['DEBUG', 'INFO', 'NOTICE', 'WARNING', 'ERROR', 'CRITICAL']).toContain(entry.severity);
      expect(entry).not.toHaveProperty('logName');
      expect(entry).not.toHaveProperty('logging.googleapis.com/diagnostic');
    }
  });

  test("X-Request-Id: the caller's is kept when it is a sane token, otherwise a new one is made", async () => {
    const kept = await request(`${service.url}/health`, { headers: { 'x-request-id': 'order-42.retry_1:a' } });
    expect(kept.headers.get('x-request-id')).toBe('order-42.retry_1:a');
    expect(kept.body.request_id).toBe('order-42.retry_1:a');
    const executed = await request(`${service.url}/execute`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-request-id': 'abc-123' },
      body: JSON.stringify({ script: 'def main():\n    return 1' }),
    });
    expect(executed.body.request_id).toBe('abc-123');
    for (const bad of ['has space', 'x'.repeat(129), 'quote"d', 'semi;colon', '<script>', '%C3%BC', 'a/b', '']) {
      const answer = await request(`${service.url}/health`, { headers: { 'x-request-id': bad } });
      const id = answer.headers.get('x-request-id');
      expect(id).not.toBe(bad);
      expect(id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
      expect(answer.body.request_id).toBe(id);
    }
    await new Promise((r) => setTimeout(r, 100));
    expect(service.logEntries().some((entry) => entry.request_id === 'abc-123' && entry.httpRequest?.requestUrl === '/execute')).toBe(true);
  });

  test('locally (no Cloud Run front end) X-Forwarded-For is not believed: remoteIp is the socket peer', async () => {
    const answer = await request(`${service.url}/health`, { headers: { 'x-forwarded-for': '198.51.100.7' } });
    await new Promise((r) => setTimeout(r, 100));
    const line = service.logEntries().find((entry) => entry.request_id === answer.body.request_id)!;
    expect(line.httpRequest.remoteIp).toMatch(/127\.0\.0\.1$/);
  });

  test('X-Cloud-Trace-Context is understood too', async () => {
    const answer = await request(`${service.url}/health`, { headers: { 'x-cloud-trace-context': '105445aa7843bc8bf206b12000100000/1;o=1' } });
    await new Promise((r) => setTimeout(r, 50));
    const line = service.logEntries().find((entry) => entry.request_id === answer.body.request_id)!;
    expect(line['logging.googleapis.com/trace']).toBe('projects/demo-project/traces/105445aa7843bc8bf206b12000100000');
  });

  test('GET /health is cheap and reports mode, capacity and load; /healthz is its local alias', async () => {
    const answer = await request(`${service.url}/health`);
    expect(answer.status).toBe(200);
    expect(answer.body).toMatchObject({ status: 'ok', in_flight: 0, queued: 0, sandbox: { mode: 'seccomp' } });
    expect(answer.body.capacity).toBeGreaterThanOrEqual(1);
    expect(answer.body.canary).toBeUndefined();
    const alias = await request(`${service.url}/healthz`);
    expect(alias.status).toBe(200);
    expect(alias.body).toMatchObject({ status: 'ok', sandbox: { mode: 'seccomp' } });
  });

  test('GET /health?deep=1 runs a canary through the real sandbox', async () => {
    const answer = await request(`${service.url}/health?deep=1`);
    expect(answer.status).toBe(200);
    expect(answer.body.canary).toMatchObject({ ok: true });
    expect(answer.body.canary.wall_ms).toBeGreaterThan(0);
  });
});

describe("behind Cloud Run's front end (K_SERVICE set)", () => {
  let service: RunningService;
  beforeAll(async () => {
    service = await startService({ K_SERVICE: 'python-exec' }, 'seccomp');
  });
  afterAll(async () => {
    await service?.stop();
  });

  test("remoteIp is the address the front end appended to X-Forwarded-For, not the caller's own claims", async () => {
    const answer = await request(`${service.url}/health`, { headers: { 'x-forwarded-for': '10.9.9.9, 203.0.113.5' } });
    const spoofOnly = await request(`${service.url}/health`, { headers: { 'x-forwarded-for': 'not-an-ip' } });
    await new Promise((r) => setTimeout(r, 100));
    const entries = service.logEntries();
    expect(entries.find((entry) => entry.request_id === answer.body.request_id)!.httpRequest.remoteIp).toBe('203.0.113.5');
    expect(entries.find((entry) => entry.request_id === spoofOnly.body.request_id)!.httpRequest.remoteIp).toMatch(/127\.0\.0\.1$/);
  });
});

describe('admission control', () => {
  let service: RunningService;
  beforeAll(async () => {
    // A 3 s limit and 2 s runs: the queued run waits almost 2 s, so it would time out if its
    // wait were charged to it.
    service = await startService({ MAX_CONCURRENT_RUNS: '1', MAX_QUEUE: '1', MAX_QUEUE_WAIT_MS: '20000', SCRIPT_TIMEOUT_MS: '3000' }, 'seccomp');
  });
  afterAll(async () => {
    await service?.stop();
  });

  test('beyond the slots and the queue: 429 with Retry-After; queue time is reported and not charged to the run', async () => {
    const slow = py('import time', 'def main():', '    time.sleep(2)', "    return 'slow'");
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
    expect(b.body.timing.queue_ms).toBeGreaterThan(1000);
    expect(b.body.timing.wall_ms).toBeGreaterThanOrEqual(2000);
    // Finished (200, not timeout) although its wait plus its run exceed the 3 s limit.
    expect(b.body.result).toBe('slow');
    expect(b.body.timing.queue_ms + b.body.timing.wall_ms).toBeGreaterThan(3000);
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
    const events = service
      .logEntries()
      .map((entry) => entry.event)
      .filter(Boolean);
    expect(events).toEqual(expect.arrayContaining(['shutdown_started', 'shutdown_killing', 'shutdown_complete']));
  });

  test('SIGTERM with nothing in flight exits without waiting for the grace period', async () => {
    const service = await startService({ SHUTDOWN_GRACE_MS: '60000' }, 'seccomp');
    service.process.kill('SIGTERM');
    expect(await service.exited).toBe(0);
    const entries = service.logEntries();
    expect(entries.find((entry) => entry.event === 'shutdown_started')).toMatchObject({ in_flight: 0 });
    expect(entries.find((entry) => entry.event === 'shutdown_complete')).toMatchObject({ killed_runs: 0 });
    expect(entries.some((entry) => entry.event === 'shutdown_killing')).toBe(false);
  });
});
