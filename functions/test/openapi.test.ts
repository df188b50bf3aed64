/** GET /openapi.json describes the API, and real responses validate against it. */
import Ajv from 'ajv';
import { ERROR_TYPES } from '../src/errors';
import { execute, py, request, startService, type RunningService } from './helpers/service';

let service: RunningService;
let doc: any;
let ajv: Ajv;

beforeAll(async () => {
  service = await startService({ REQUEST_MAX_BYTES: '2048', MAX_CONCURRENT_RUNS: '1', MAX_QUEUE: '0', SCRIPT_TIMEOUT_MS: '3000' }, 'seccomp');
  doc = (await request(`${service.url}/openapi.json`)).body;
  ajv = new Ajv({ strict: false, allowUnionTypes: true });
  ajv.addSchema(doc, 'openapi.json');
});
afterAll(async () => {
  await service?.stop();
});

function expectValid(component: string, body: unknown) {
  const validate = ajv.getSchema(`openapi.json#/components/schemas/${component}`)!;
  expect(validate).toBeDefined();
  const ok = validate(body);
  if (!ok) throw new Error(`${component} invalid: ${JSON.stringify(validate.errors)}\n${JSON.stringify(body)}`);
}

test('is OpenAPI 3.1 with /execute, /healthz and /openapi.json', () => {
  expect(doc.openapi).toBe('3.1.0');
  expect(Object.keys(doc.paths).sort()).toEqual(['/execute', '/healthz', '/openapi.json']);
});

test('documents every error type under its status', () => {
  const responses = doc.paths['/execute'].post.responses;
  for (const [type, spec] of Object.entries(ERROR_TYPES)) {
    if (type === 'not_found') continue; // other paths
    expect(responses[String(spec.status)]?.description).toContain(`\`${type}\``);
  }
  expect(doc.components.schemas.ErrorResponse.properties.error.properties.type.enum.sort()).toEqual(Object.keys(ERROR_TYPES).sort());
});

test('real responses validate against the document', async () => {
  const ok = await execute(service, py('import numpy as np', 'def main(x):', "    print('p')", '    return {"x": x, "a": np.arange(3)}'), { x: 1 });
  expect(ok.status).toBe(200);
  expectValid('ExecuteSuccess', ok.body);

  const bodies = [
    await execute(service, py('def main(:')),
    await execute(service, py('def helper(): pass')),
    await execute(service, py('def main():', '    raise ValueError("x")')),
    await execute(service, py('def main():', '    return {1, 2}')),
    await execute(service, py('import os', 'def main():', '    os._exit(3)')),
    await execute(service, py('def main():', '    while True: pass')),
    await request(`${service.url}/execute`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"args": {}}' }),
    await request(`${service.url}/execute`, { method: 'POST', headers: { 'content-type': 'text/plain' }, body: 'x' }),
    await request(`${service.url}/execute`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ script: 'x'.repeat(5000) }) }),
    await request(`${service.url}/execute`),
    await request(`${service.url}/nowhere`),
  ];
  const statuses = bodies.map((b) => b.status);
  expect(statuses).toEqual([400, 400, 422, 422, 422, 422, 400, 415, 413, 405, 404]);
  for (const answer of bodies) expectValid('ErrorResponse', answer.body);

  // 429: one slot, no queue.
  const busy = execute(service, py('import time', 'def main():', '    time.sleep(1)'));
  await new Promise((r) => setTimeout(r, 300));
  const refused = await execute(service, py('def main(): pass'));
  expect(refused.status).toBe(429);
  expectValid('ErrorResponse', refused.body);
  await busy;

  for (const url of ['/healthz', '/healthz?deep=1']) {
    const health = await request(`${service.url}${url}`);
    expect(health.status).toBe(200);
    expectValid('Health', health.body);
  }
});
