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

  test('POST /healthz: 405 with Allow: GET, HEAD', async () => {
    const answer = await request(`${service.url}/healthz`, { method: 'POST' });
    expectError(answer, 405, 'method_not_allowed');
    expect(answer.headers.get('allow')).toBe('GET, HEAD');
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
    const reply = await rawHttp(
      `POST /execute HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1073741824\r\n\r\n{"script":`,
    );
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
