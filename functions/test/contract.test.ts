/**
 * The HTTP contract, in-process and fast: the real handler (createPythonExecHandler) with a fake
 * sandbox, served by a plain node:http server on a free port. No service process, no Python, no
 * sandbox: only what the HTTP layer decides (status codes, bodies, headers, the log line). The
 * real behaviour behind these answers is tested over HTTP against the real service elsewhere.
 */
import * as http from 'http';
import type { AddressInfo } from 'net';
import { Writable } from 'stream';
import { loadConfig } from '../src/config';
import { Logger } from '../src/logging';
import { createPythonExecHandler, type PythonExecHandler, type PythonExecOptions } from '../src/service';
import type { RunReport, Sandbox } from '../src/sandbox/types';

/** What Sandbox#run is given (named through the interface, so it follows the sandbox code's renames). */
type RunOrder = Parameters<Sandbox['run']>[0];

const REQUEST_MAX_BYTES = 1024;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** The smallest Sandbox: each run is answered by `answer`, and every request is recorded. */
class FakeSandbox implements Sandbox {
  readonly mode = 'seccomp' as const;
  readonly path = 'cold' as const;
  readonly requests: RunOrder[] = [];
  answer: (request: RunOrder) => Promise<RunReport> = async () => finished({ status: 'ok', cpu_ms: 1, layers: {}, result: null });

  run(request: RunOrder): Promise<RunReport> {
    this.requests.push(request);
    return this.answer(request);
  }
}

function finished(message: Extract<RunReport['channel'], { kind: 'message' }>['message'], stdout = ''): RunReport {
  const text = (value: string) => ({ text: value, bytes: Buffer.byteLength(value), truncated: false });
  return { mode: 'seccomp', channel: { kind: 'message', message }, exitCode: 0, signal: null, timedOut: false, aborted: false, stdout: text(stdout), stderr: text(''), wallMs: 4.2 };
}

interface Served {
  url: string;
  handler: PythonExecHandler;
  logs: Record<string, any>[];
  close(): Promise<void>;
}

async function serve(options: PythonExecOptions, env: Record<string, string> = {}): Promise<Served> {
  const logs: Record<string, any>[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString('utf8').split('\n').filter(Boolean)) logs.push(JSON.parse(line));
      done();
    },
  });
  const config = loadConfig({ REQUEST_MAX_BYTES: String(REQUEST_MAX_BYTES), MAX_CONCURRENT_RUNS: '1', MAX_QUEUE: '0', ...env });
  const handler = createPythonExecHandler({ config, logger: new Logger(undefined, sink), ...options });
  const server = http.createServer((req, res) => void handler(req, res));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    handler,
    logs,
    close: async () => {
      handler.close();
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

async function call(url: string, init: RequestInit = {}) {
  const response = await fetch(url, init);
  const text = await response.text();
  return { status: response.status, headers: response.headers, body: JSON.parse(text) };
}

const post = (url: string, body: string, contentType = 'application/json') => call(url, { method: 'POST', headers: { 'content-type': contentType }, body });

function expectError(answer: { status: number; headers: Headers; body: any }, status: number, type: string) {
  expect(answer.status).toBe(status);
  expect(answer.headers.get('content-type')).toBe('application/json; charset=utf-8');
  expect(answer.body.error.type).toBe(type);
  expect(typeof answer.body.error.message).toBe('string');
  expect(answer.body.request_id).toBe(answer.headers.get('x-request-id'));
}

describe('with a sandbox', () => {
  let sandbox: FakeSandbox;
  let served: Served;
  beforeAll(async () => {
    sandbox = new FakeSandbox();
    served = await serve({ sandbox });
  });
  afterAll(() => served.close());
  beforeEach(() => {
    sandbox.requests.length = 0;
  });

  test('404 for an unknown path', async () => {
    expectError(await call(`${served.url}/nope`), 404, 'not_found');
    expectError(await post(`${served.url}/execute/more`, '{}'), 404, 'not_found');
  });

  test('405 with Allow for a known path and the wrong method', async () => {
    const answer = await call(`${served.url}/execute`);
    expectError(answer, 405, 'method_not_allowed');
    expect(answer.headers.get('allow')).toBe('POST');
    expect(answer.body.error.allow).toEqual(['POST']);
    const health = await call(`${served.url}/health`, { method: 'DELETE' });
    expectError(health, 405, 'method_not_allowed');
    expect(health.headers.get('allow')).toBe('GET, HEAD');
  });

  test('413 for a body over REQUEST_MAX_BYTES; the sandbox is never asked', async () => {
    const answer = await post(`${served.url}/execute`, JSON.stringify({ script: `def main():\n    return "${'a'.repeat(REQUEST_MAX_BYTES)}"` }));
    expectError(answer, 413, 'payload_too_large');
    expect(answer.body.error.limit).toBe(REQUEST_MAX_BYTES);
    expect(sandbox.requests).toEqual([]);
  });

  test('415 unless the body is JSON', async () => {
    expectError(await post(`${served.url}/execute`, '{"script": "def main(): pass"}', 'text/plain'), 415, 'unsupported_media_type');
    expectError(await call(`${served.url}/execute`, { method: 'POST', body: 'x' }), 415, 'unsupported_media_type');
  });

  test('400 invalid_request for a body that is not JSON, or not the documented object', async () => {
    const broken = await post(`${served.url}/execute`, '{"script": ');
    expectError(broken, 400, 'invalid_request');
    expect(broken.body.error.message).toMatch(/not valid JSON/);
    const unknown = await post(`${served.url}/execute`, '{"script": "def main(): pass", "timeout": 1}');
    expectError(unknown, 400, 'invalid_request');
    expect(unknown.body.error.field).toBe('timeout');
    expect(sandbox.requests).toEqual([]);
  });

  test("200 with main()'s result, the output and the timing; the sandbox got the script and args", async () => {
    sandbox.answer = async () => finished({ status: 'ok', cpu_ms: 3, layers: {}, result: { n: 3 } }, 'hi\n');
    const answer = await post(`${served.url}/execute`, JSON.stringify({ script: 'def main(k):\n    return {"n": 3}', args: { k: 1 } }));
    expect(answer.status).toBe(200);
    expect(answer.body).toEqual({
      result: { n: 3 },
      files: [],
      skipped: [],
      stdout: 'hi\n',
      stderr: '',
      truncated: { stdout: false, stderr: false, files: false },
      timing: { wall_ms: 4.2, cpu_ms: 3, queue_ms: expect.any(Number) },
      limits: { timeout_ms: 10000, memory_mb: 512 },
      sandbox: 'seccomp',
      request_id: answer.headers.get('x-request-id'),
    });
    expect(sandbox.requests).toHaveLength(1);
    expect(sandbox.requests[0]).toMatchObject({ script: 'def main(k):\n    return {"n": 3}', args: { k: 1 }, slot: 0, files: [], limits: {} });
  });

  test('files and limits travel to the sandbox as asked; output files and the applied limits come back', async () => {
    const files = [{ path: 'in.csv', content: 'a\n1\n' }];
    const out = [{ path: 'out/x.csv', size: 2, content_base64: 'YQo=' }];
    sandbox.answer = async () => finished({ status: 'ok', cpu_ms: 1, layers: {}, result: 1, files: out, skipped: [{ path: 'out/l', reason: 'symlink' }], files_truncated: true });
    const answer = await post(`${served.url}/execute`, JSON.stringify({ script: 'def main():\n    pass', files, limits: { timeout_ms: 500, memory_mb: 100 } }));
    expect(answer.status).toBe(200);
    expect(answer.body).toMatchObject({ files: out, skipped: [{ path: 'out/l', reason: 'symlink' }], truncated: { files: true }, limits: { timeout_ms: 500, memory_mb: 100 } });
    expect(sandbox.requests[0]).toMatchObject({ files, limits: { timeoutMs: 500, memoryMb: 100 } });
  });

  test('input files the runner could not write: 400 invalid_request on "files"', async () => {
    sandbox.answer = async () => finished({ status: 'error', cpu_ms: 1, layers: {}, error: { type: 'input_files', message: 'could not write input file a.bin: File too large' } });
    const answer = await post(`${served.url}/execute`, JSON.stringify({ script: 'def main():\n    pass', files: [{ path: 'a.bin', content: 'x' }] }));
    expectError(answer, 400, 'invalid_request');
    expect(answer.body.error).toEqual({ type: 'invalid_request', message: 'could not write input file a.bin: File too large', field: 'files' });
    sandbox.answer = async () =>
      finished({ status: 'error', cpu_ms: 1, layers: {}, error: { type: 'input_files', message: 'could not create the output directory out: No space left on device', errno: 'ENOSPC' } });
    const full = await post(`${served.url}/execute`, JSON.stringify({ script: 'def main():\n    pass' }));
    expectError(full, 503, 'sandbox_unavailable');
    expect(full.body.error.message).toBe("the run's disk is full: could not create the output directory out: No space left on device");
  });

  test('limits above the maximum, and unsafe file paths: 400 before any run', async () => {
    const over = await post(`${served.url}/execute`, JSON.stringify({ script: 'x', limits: { memory_mb: 100000 } }));
    expectError(over, 400, 'invalid_request');
    expect(over.body.error).toMatchObject({ field: 'limits.memory_mb', limit: 512 });
    const escape = await post(`${served.url}/execute`, JSON.stringify({ script: 'x', files: [{ path: '../x', content: '' }] }));
    expectError(escape, 400, 'invalid_request');
    expect(escape.body.error.field).toBe('files.0.path');
    expect(sandbox.requests).toEqual([]);
  });

  test('422 runtime_error carries the exception, the line and the traceback', async () => {
    const traceback = 'Traceback (most recent call last):\n  File "script.py", line 3, in main\nKeyError: \'b\'\n';
    sandbox.answer = async () =>
      finished({ status: 'error', cpu_ms: 2, layers: {}, error: { type: 'runtime_error', message: "KeyError: 'b'", exception: 'KeyError', line: 3, traceback } }, 'working\n');
    const answer = await post(`${served.url}/execute`, JSON.stringify({ script: 'def main():\n    pass' }));
    expectError(answer, 422, 'runtime_error');
    expect(answer.body.error).toEqual({ type: 'runtime_error', message: "KeyError: 'b'", exception: 'KeyError', line: 3, traceback });
    expect(answer.body).toMatchObject({ stdout: 'working\n', sandbox: 'seccomp', timing: { cpu_ms: 2 } });
  });

  test('429 with Retry-After when the only slot is busy and there is no queue', async () => {
    let release: () => void = () => undefined;
    sandbox.answer = () =>
      new Promise<RunReport>((resolve) => {
        release = () => resolve(finished({ status: 'ok', cpu_ms: 1, layers: {}, result: 'first' }));
      });
    const first = post(`${served.url}/execute`, JSON.stringify({ script: 'def main(): pass' }));
    while (sandbox.requests.length === 0) await new Promise((r) => setTimeout(r, 5));
    const refused = await post(`${served.url}/execute`, JSON.stringify({ script: 'def main(): pass' }));
    expectError(refused, 429, 'overloaded');
    expect(Number(refused.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
    release();
    expect((await first).body.result).toBe('first');
    expect(sandbox.requests).toHaveLength(1);
  });

  test('500 internal_error for a bug: no stack in the answer; the log line has it where Error Reporting looks', async () => {
    sandbox.answer = async () => {
      throw new Error('a bug in the fake sandbox');
    };
    const answer = await post(`${served.url}/execute`, JSON.stringify({ script: 'def main(): pass' }));
    expectError(answer, 500, 'internal_error');
    expect(JSON.stringify(answer.body)).not.toContain('a bug in the fake sandbox');
    const line = served.logs.find((entry) => entry.request_id === answer.body.request_id)!;
    expect(line.severity).toBe('ERROR');
    expect(line.stack_trace).toMatch(/^Error: a bug in the fake sandbox\n\s+at /);
    expect(line['logging.googleapis.com/sourceLocation']).toMatchObject({ file: expect.stringContaining('contract.test'), line: expect.stringMatching(/^\d+$/) });
    expect(line.outcome).toBe('internal_error');
  });

  test('the log line: severity, httpRequest with a Duration latency, no logName', async () => {
    const answer = await call(`${served.url}/health`, { headers: { 'user-agent': 'contract-test' } });
    const line = served.logs.find((entry) => entry.request_id === answer.body.request_id)!;
    expect(line).toMatchObject({ severity: 'INFO', message: 'GET /health 200' });
    expect(line.httpRequest).toMatchObject({ requestMethod: 'GET', requestUrl: '/health', status: 200, userAgent: 'contract-test', protocol: 'HTTP/1.1' });
    expect(line.httpRequest.latency).toMatch(/^\d+(\.\d{1,9})?s$/);
    expect(line.httpRequest.remoteIp).toMatch(/127\.0\.0\.1$/);
    for (const entry of served.logs) {
      expect(entry).not.toHaveProperty('logName');
      expect(typeof entry.severity).toBe('string');
    }
  });

  test("X-Request-Id: the caller's sane token is kept, anything else replaced", async () => {
    const kept = await call(`${served.url}/health`, { headers: { 'x-request-id': 'job-7:try.2' } });
    expect(kept.headers.get('x-request-id')).toBe('job-7:try.2');
    expect(kept.body.request_id).toBe('job-7:try.2');
    for (const bad of ['two words', 'x'.repeat(129), 'a/b', '']) {
      const replaced = await call(`${served.url}/health`, { headers: { 'x-request-id': bad } });
      expect(replaced.headers.get('x-request-id')).toMatch(UUID);
    }
  });

  test('/health answers 200 with the given sandbox; /healthz is its alias', async () => {
    for (const path of ['/health', '/healthz']) {
      const answer = await call(`${served.url}${path}`);
      expect(answer.status).toBe(200);
      expect(answer.body).toMatchObject({ status: 'ok', sandbox: { mode: 'seccomp', path: 'cold' }, capacity: 1 });
    }
  });
});

describe('without a sandbox', () => {
  let served: Served;
  beforeAll(async () => {
    served = await serve({ sandbox: null });
  });
  afterAll(() => served.close());

  test('503 sandbox_unavailable for a valid request, and health says unavailable', async () => {
    const answer = await post(`${served.url}/execute`, JSON.stringify({ script: 'def main(): pass' }));
    expectError(answer, 503, 'sandbox_unavailable');
    expect(answer.body.error.message).toContain('no sandbox');
    const health = await call(`${served.url}/health`);
    expect(health.status).toBe(503);
    expect(health.body).toMatchObject({ status: 'unavailable', sandbox: { mode: null } });
  });

  test('the HTTP checks still come first: 415 and 400 before 503', async () => {
    expectError(await post(`${served.url}/execute`, 'x', 'text/plain'), 415, 'unsupported_media_type');
    expectError(await post(`${served.url}/execute`, '{'), 400, 'invalid_request');
  });
});

describe('mounted under a base path', () => {
  let served: Served;
  const sandbox = new FakeSandbox();
  beforeAll(async () => {
    served = await serve({ sandbox, basePath: '/pyexec' });
  });
  afterAll(() => served.close());

  test('its routes live under the base path and nothing else is its own', async () => {
    expect((await call(`${served.url}/pyexec/health`)).status).toBe(200);
    expectError(await call(`${served.url}/health`), 404, 'not_found');
    sandbox.answer = async () => finished({ status: 'ok', cpu_ms: 1, layers: {}, result: 'mounted' });
    expect((await post(`${served.url}/pyexec/execute`, JSON.stringify({ script: 'def main(): pass' }))).body.result).toBe('mounted');
    const doc = await call(`${served.url}/pyexec/openapi.json`);
    expect(doc.body.servers[0].url).toBe('/pyexec');
  });
});
