/** GET /openapi.json describes the API, real responses validate against it, and a real linter passes it. */
import Ajv from 'ajv';
import { spawnSync } from 'child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'fs';
import * as os from 'os';
import * as path from 'path';
import { ERROR_TYPES } from '../src/errors';
import { SANDBOX_MODES } from '../src/sandbox/backends';
import { execute, py, REPO, request, startService, type RunningService } from './helpers/service';

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

test('is OpenAPI 3.1 with /execute, /health, /openapi.json and /runtime (not the /healthz alias Cloud Run never passes)', () => {
  expect(doc.openapi).toBe('3.1.0');
  expect(Object.keys(doc.paths).sort()).toEqual(['/execute', '/health', '/openapi.json', '/runtime']);
});

test('the sandbox modes it names are the backends list (SANDBOX_MODES)', () => {
  const sandbox = doc.components.schemas.Health.properties.sandbox.properties;
  expect(sandbox.mode.enum).toEqual([...SANDBOX_MODES, null]);
  expect(sandbox.requested.enum).toEqual(['auto', ...SANDBOX_MODES]);
  expect(doc.components.schemas.Runtime.properties.sandbox.enum).toEqual([...SANDBOX_MODES]);
});

test("its version is the package's, and it declares the bearer identity token a deployment requires", () => {
  const pkg = JSON.parse(readFileSync(path.join(REPO, 'package.json'), 'utf8'));
  expect(doc.info.version).toBe(pkg.version);
  expect(doc.components.securitySchemes.identityToken).toMatchObject({ type: 'http', scheme: 'bearer', bearerFormat: 'JWT' });
  expect(doc.security).toEqual([{ identityToken: [] }]);
  // Cloud Run's own refusal of a missing or unauthorised token is described, as HTML.
  expect(Object.keys(doc.paths['/execute'].post.responses['403'].content)).toEqual(['text/html']);
  expect(doc.servers).toEqual([expect.objectContaining({ url: '/' })]);
});

test("passes Redocly CLI's lint (recommended rules) with no error and no warning", () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'openapi-lint-'));
  try {
    const file = path.join(dir, 'openapi.json');
    writeFileSync(file, JSON.stringify(doc, null, 2));
    // Offline: no telemetry, no update check; run in an empty directory so no redocly.yaml applies.
    const lint = spawnSync(process.execPath, [path.join(REPO, 'node_modules/@redocly/cli/bin/cli.js'), 'lint', file, '--format=json'], {
      cwd: dir,
      env: {
        PATH: process.env.PATH ?? '/usr/bin:/bin',
        HOME: dir,
        CI: 'true',
        REDOCLY_TELEMETRY: 'off',
        REDOCLY_SUPPRESS_UPDATE_NOTICE: 'true',
        REDOCLY_SUPPRESS_NOTIFICATIONS: 'true',
        NO_COLOR: '1',
      },
      encoding: 'utf8',
      timeout: 120000,
    });
    const start = lint.stdout.indexOf('{');
    expect({ status: lint.status, stderr: lint.stderr, parsed: start >= 0 }).toMatchObject({ status: 0, parsed: true });
    const report = JSON.parse(lint.stdout.slice(start));
    expect(report.problems).toEqual([]);
    expect(report.totals).toMatchObject({ errors: 0, warnings: 0 });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
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

  const runtime = await request(`${service.url}/runtime`);
  expect(runtime.status).toBe(200);
  expectValid('Runtime', runtime.body);

  for (const url of ['/health', '/health?deep=1', '/healthz']) {
    const health = await request(`${service.url}${url}`);
    expect(health.status).toBe(200);
    expectValid('Health', health.body);
  }
});
