/** The HTTP contract around /execute: methods, paths, content types, sizes and validation. */
import * as net from 'net';
import { request, startService, type RunningService } from './helpers/service';

const REQUEST_MAX_BYTES = 4096;

let service: RunningService;
beforeAll(async () => {
  service = await startService({ REQUEST_MAX_BYTES: String(REQUEST_MAX_BYTES) }, 'seccomp');
});
afterAll(async () => {
  await service?.stop();
});

function post(body: string, contentType: string | null = 'application/json') {
  const headers: Record<string, string> = {};
  if (contentType !== null) headers['content-type'] = contentType;
  return request(`${service.url}/execute`, { method: 'POST', headers, body });
}

function expectError(answer: { status: number; body: any; headers: Headers }, status: number, type: string) {
  expect(answer.status).toBe(status);
  expect(answer.headers.get('content-type')).toMatch(/^application\/json/);
  expect(answer.body.error.type).toBe(type);
  expect(typeof answer.body.error.message).toBe('string');
  expect(answer.body.request_id).toBe(answer.headers.get('x-request-id'));
}

describe('routing', () => {
  test('unknown path: 404 JSON', async () => {
    expectError(await request(`${service.url}/nope`), 404, 'not_found');
    expectError(await request(`${service.url}/execute/extra`, { method: 'POST' }), 404, 'not_found');
  });

  test.each(['GET', 'PUT', 'DELETE', 'PATCH'])('%s /execute: 405 with Allow', async (method) => {
    const answer = await request(`${service.url}/execute`, { method });
    expectError(answer, 405, 'method_not_allowed');
    expect(answer.headers.get('allow')).toBe('POST');
  });

  test.each(['/health', '/healthz'])('POST %s: 405 with Allow: GET, HEAD', async (path) => {
    const answer = await request(`${service.url}${path}`, { method: 'POST' });
    expectError(answer, 405, 'method_not_allowed');
    expect(answer.headers.get('allow')).toBe('GET, HEAD');
  });

  test('a huge body sent to another route is not buffered: 405 at once, not after reading it', async () => {
    const reply = await rawHttp(`PUT /execute HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1073741824\r\nConnection: close\r\n\r\n{`);
    expect(reply).toMatch(/^HTTP\/1\.1 405/);
  });
});

describe('content type', () => {
  test('missing: 415', async () => expectError(await post('{"script":"def main(): pass"}', null), 415, 'unsupported_media_type'));
  test('text/plain: 415', async () => expectError(await post('{"script":"def main(): pass"}', 'text/plain'), 415, 'unsupported_media_type'));
  test('form: 415', async () => expectError(await post('script=x', 'application/x-www-form-urlencoded'), 415, 'unsupported_media_type'));
  test('non-UTF-8 charset: 415', async () => expectError(await post('{"script":"def main(): pass"}', 'application/json; charset=latin1'), 415, 'unsupported_media_type'));
  test('application/json; charset=utf-8 is accepted', async () => {
    const answer = await post('{"script":"def main():\\n    return 7"}', 'application/json; charset=UTF-8');
    expect(answer.status).toBe(200);
    expect(answer.body.result).toBe(7);
  });
});

describe('body size', () => {
  test('over REQUEST_MAX_BYTES with Content-Length: 413 without reading it', async () => {
    const script = `def main():\n    return "${'a'.repeat(REQUEST_MAX_BYTES)}"`;
    const answer = await post(JSON.stringify({ script }));
    expectError(answer, 413, 'payload_too_large');
    expect(answer.body.error.limit).toBe(REQUEST_MAX_BYTES);
  });

  test('a declared 1 GB body is refused at once', async () => {
    const reply = await rawHttp(`POST /execute HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1073741824\r\n\r\n{"script":`);
    expect(reply).toMatch(/^HTTP\/1\.1 413/);
    expect(reply).toContain('"payload_too_large"');
  });

  test('over REQUEST_MAX_BYTES sent chunked (no Content-Length): 413', async () => {
    const chunk = 'x'.repeat(3000);
    const reply = await rawHttp(
      `POST /execute HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n` +
        `${chunk.length.toString(16)}\r\n${chunk}\r\n${chunk.length.toString(16)}\r\n${chunk}\r\n0\r\n\r\n`,
    );
    expect(reply).toMatch(/^HTTP\/1\.1 413/);
  });

  test('a chunked body within the limit works', async () => {
    const body = JSON.stringify({ script: 'def main():\n    return "chunked"' });
    const reply = await rawHttp(
      `POST /execute HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n` +
        `${Buffer.byteLength(body).toString(16)}\r\n${body}\r\n0\r\n\r\n`,
    );
    expect(reply).toMatch(/^HTTP\/1\.1 200/);
    expect(reply).toContain('"result":"chunked"');
  });
});

describe('validation: 400 invalid_request naming the field', () => {
  test.each([
    ['empty body', '', ''],
    ['not JSON', '{"script": ', ''],
    ['an array', '[1, 2]', ''],
    ['a string', '"def main(): pass"', ''],
    ['null', 'null', ''],
    ['missing script', '{"args": {}}', 'script'],
    ['empty script', '{"script": ""}', 'script'],
    ['script not a string', '{"script": 42}', 'script'],
    ['args not an object', '{"script": "def main(): pass", "args": [1]}', 'args'],
    ['args null', '{"script": "def main(): pass", "args": null}', 'args'],
    ['unknown field', '{"script": "def main(): pass", "timeout": 5}', 'timeout'],
    ['__proto__ field', '{"script": "def main(): pass", "__proto__": {"x": 1}}', '__proto__'],
  ])('%s', async (_name, body, field) => {
    const answer = await post(body);
    expectError(answer, 400, 'invalid_request');
    if (field) {
      expect(answer.body.error.field).toBe(field);
      expect(answer.body.error.message).toContain(field);
    }
  });
});

describe('nesting depth (a service with the default 1 MiB REQUEST_MAX_BYTES, so deep bodies fit)', () => {
  let roomy: RunningService;
  beforeAll(async () => {
    roomy = await startService({}, 'seccomp');
  });
  afterAll(async () => {
    await roomy?.stop();
  });

  const postRoomy = (body: string) => request(`${roomy.url}/execute`, { method: 'POST', headers: { 'content-type': 'application/json' }, body });
  const nested = (levels: number) => `${'['.repeat(levels)}1${']'.repeat(levels)}`;
  const DEPTH_SCRIPT =
    'def depth(v):\n    return 1 + max([depth(x) for x in (v.values() if isinstance(v, dict) else v)], default=0) if isinstance(v, (dict, list)) else 0\ndef main(**kw):\n    return depth(kw)';

  function expectTooDeep(answer: { status: number; body: any; headers: Headers }) {
    expectError(answer, 400, 'invalid_request');
    expect(answer.body.error.field).toBe('args');
    expect(answer.body.error.message).toContain('"args" nests deeper than 64 levels');
  }

  test('args 5,000 levels deep: 400 invalid_request naming "args"', async () => {
    expectTooDeep(await postRoomy(`{"script": "def main(**kw):\\n    return 1", "args": {"a": ${nested(5000)}}}`));
  });

  test('args 64 levels deep run, and the script sees all 64', async () => {
    const answer = await postRoomy(JSON.stringify({ script: DEPTH_SCRIPT, args: { a: JSON.parse(nested(63)) } }));
    expect(answer.status).toBe(200);
    expect(answer.body.result).toBe(64);
    expectTooDeep(await postRoomy(JSON.stringify({ script: DEPTH_SCRIPT, args: { a: JSON.parse(nested(64)) } })));
  });

  test('args nested as deep as 1 MiB allows: 400 invalid_request naming "args"', async () => {
    const prefix = '{"script": "def main(): pass", "args": {"a": ';
    const levels = Math.floor((1024 * 1024 - prefix.length - 3) / 2);
    const body = `${prefix}${'['.repeat(levels)}${']'.repeat(levels)}}}`;
    expect(Buffer.byteLength(body)).toBeLessThanOrEqual(1024 * 1024);
    expectTooDeep(await postRoomy(body));
  });

  test('a body of 1 MiB of "[": 400 invalid_request (not JSON), no crash', async () => {
    const answer = await postRoomy('['.repeat(1024 * 1024));
    expectError(answer, 400, 'invalid_request');
    expect(answer.body.error.message).toMatch(/not valid JSON/);
  });

  test('a body that is 512 Ki levels of nested arrays: 400 invalid_request (not an object)', async () => {
    const answer = await postRoomy(`${'['.repeat(512 * 1024 - 1)}${']'.repeat(512 * 1024 - 1)}`);
    expectError(answer, 400, 'invalid_request');
    expect(answer.body.error.message).toBe('the request body must be a JSON object');
  });

  test('deep values in other fields are refused by name', async () => {
    const script = await postRoomy(`{"script": ${nested(5000)}}`);
    expectError(script, 400, 'invalid_request');
    expect(script.body.error.field).toBe('script');
    const extra = await postRoomy(`{"script": "def main(): pass", "extra": ${nested(5000)}}`);
    expectError(extra, 400, 'invalid_request');
    expect(extra.body.error.field).toBe('extra');
  });

  test('afterwards the service still runs a normal script, and never answered 500', async () => {
    const answer = await postRoomy('{"script": "def main(n):\\n    return n * 2", "args": {"n": 21}}');
    expect(answer.status).toBe(200);
    expect(answer.body.result).toBe(42);
    expect(roomy.process.exitCode).toBeNull();
    expect(roomy.logs.join('\n')).not.toContain('internal_error');
  });
});

test('the service still answers after all of the above', async () => {
  const answer = await post('{"script":"def main():\\n    return \\"alive\\""}');
  expect(answer.body.result).toBe('alive');
});

function rawHttp(payload: string): Promise<string> {
  const { port } = new URL(service.url);
  return new Promise((resolve, reject) => {
    const socket = net.connect(Number(port), '127.0.0.1');
    let reply = '';
    socket.on('data', (d) => (reply += d.toString('utf8')));
    socket.on('close', () => resolve(reply));
    socket.on('error', (error) => (reply ? resolve(reply) : reject(error)));
    socket.setTimeout(10000, () => socket.destroy());
    socket.write(payload);
  });
}
