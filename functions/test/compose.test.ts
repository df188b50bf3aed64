/**
 * The function composes: the built module (functions/build/index.js) is loaded into another
 * Functions Framework app and mounted beside that app's own function, in one real Functions
 * Framework server started the standard way (functions-framework --target=... --signature-type=http).
 * Importing it changes nothing in the host process; the other function keeps its parsed req.body;
 * the mounted function serves its routes with the real sandbox (seccomp mode).
 */
import { spawn, type ChildProcess } from 'child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'fs';
import * as os from 'os';
import * as path from 'path';
import { freePort, REPO } from './helpers/service';

const FRAMEWORK = path.join(REPO, 'node_modules/.bin/functions-framework');
const REQUEST_MAX_BYTES = 2048;

/** The host app: its own echo function, plus this service mounted under /pyexec. */
const HOST = (repo: string) => `
const diagnosticsChannel = require('diagnostics_channel');
const functions = require(${JSON.stringify(path.join(repo, 'node_modules/@google-cloud/functions-framework'))});
const count = () => ({ SIGTERM: process.listenerCount('SIGTERM'), SIGINT: process.listenerCount('SIGINT'), exit: process.listenerCount('exit') });
const before = count();
const pyexecModule = require(${JSON.stringify(path.join(repo, 'functions/build/index.js'))});
const after = count();
const importEffects = {
  signalListenersAdded: after.SIGTERM - before.SIGTERM + after.SIGINT - before.SIGINT,
  exitListenersAdded: after.exit - before.exit,
  requestHookInstalled: diagnosticsChannel.hasSubscribers('http.server.request.start'),
  exports: Object.keys(pyexecModule).sort(),
};
const pyexec = pyexecModule.createPythonExecHandler({ basePath: '/pyexec' });

functions.http('app', (req, res) => {
  if (req.path === '/pyexec' || req.path.startsWith('/pyexec/')) return pyexec(req, res);
  if (req.path === '/import-effects') return res.json(importEffects);
  res.json({
    function: 'echo',
    path: req.path,
    body: req.body,
    contentLength: req.headers['content-length'] ?? null,
    rawBodyBytes: req.rawBody ? req.rawBody.length : null,
  });
});
`;

interface Host {
  url: string;
  child: ChildProcess;
  output: () => string;
  exited: Promise<number | null>;
}

let dir: string;
let workRoot: string;
let host: Host;

async function startHost(): Promise<Host> {
  const port = await freePort();
  writeFileSync(path.join(dir, 'host.js'), HOST(REPO));
  const child = spawn(process.execPath, [FRAMEWORK, '--target=app', '--signature-type=http', `--source=${path.join(dir, 'host.js')}`], {
    cwd: dir,
    env: {
      PATH: process.env.PATH ?? '/usr/bin:/bin',
      PORT: String(port),
      SANDBOX_MODE: 'seccomp',
      WARM_POOL: 'off',
      REQUEST_MAX_BYTES: String(REQUEST_MAX_BYTES),
      // A work root of its own, as the service helper gives each test service (run uids must be
      // able to pass through it, so not inside the 0700 directory that holds host.js).
      SANDBOX_WORK_ROOT: workRoot,
      SANDBOX_UID_BASE: String(200000 + Math.floor(Math.random() * 50000) * 64),
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout!.on('data', (d: Buffer) => (output += d.toString('utf8')));
  child.stderr!.on('data', (d: Buffer) => (output += d.toString('utf8')));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  const url = `http://127.0.0.1:${port}`;
  for (let i = 0; ; i++) {
    if (child.exitCode !== null) throw new Error(`host exited during start-up:\n${output}`);
    try {
      if ((await fetch(`${url}/ping`)).ok) break;
    } catch {
      if (i > 300) throw new Error(`host did not start:\n${output}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  return { url, child, output: () => output, exited };
}

async function json(url: string, init: RequestInit = {}) {
  const response = await fetch(url, init);
  return { status: response.status, headers: response.headers, body: (await response.json()) as any };
}

const postJson = (url: string, body: unknown) => json(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });

beforeAll(async () => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'pyexec-compose-'));
  workRoot = mkdtempSync(path.join(os.tmpdir(), 'pyexec-test-'));
  host = await startHost();
});

afterAll(async () => {
  if (host && host.child.exitCode === null) {
    host.child.kill('SIGKILL');
    await host.exited;
  }
  rmSync(dir, { recursive: true, force: true });
  rmSync(workRoot, { recursive: true, force: true });
});

test('importing the module has no side effects: no signal or exit handler, no request hook, nothing started', async () => {
  const effects = (await json(`${host.url}/import-effects`)).body;
  expect(effects).toEqual({
    signalListenersAdded: 0,
    exitListenersAdded: 0,
    requestHookInstalled: false,
    exports: ['createPythonExecHandler', 'loadConfig', 'Logger', 'normaliseBasePath'].sort(),
  });
  // The sandbox probe (and its start-up line) waits for the mounted function's first request.
  expect(host.output()).not.toContain('"event":"startup"');
});

test("the host's own function keeps its parsed body, before and after the mounted function's traffic", async () => {
  const first = await postJson(`${host.url}/orders`, { item: 'tea', qty: 2 });
  expect(first.body).toMatchObject({ function: 'echo', body: { item: 'tea', qty: 2 }, contentLength: String(JSON.stringify({ item: 'tea', qty: 2 }).length) });
  const text = await json(`${host.url}/notes`, { method: 'POST', headers: { 'content-type': 'text/plain' }, body: 'plain words' });
  expect(text.body).toMatchObject({ body: 'plain words', rawBodyBytes: 11 });
  // The same path as the mounted function's, outside its base path, is the host's.
  const execute = await postJson(`${host.url}/execute`, { script: 'not for us' });
  expect(execute.body).toMatchObject({ function: 'echo', body: { script: 'not for us' } });

  expect((await postJson(`${host.url}/pyexec/execute`, { script: 'def main():\n    return 1' })).status).toBe(200);
  const again = await postJson(`${host.url}/orders`, { item: 'coffee' });
  expect(again.body).toMatchObject({ function: 'echo', body: { item: 'coffee' } });
});

test('the mounted function serves /pyexec/health, /pyexec/execute and /pyexec/openapi.json with the real sandbox', async () => {
  const health = await json(`${host.url}/pyexec/health`);
  expect({ status: health.status, reason: health.body.sandbox.reason }).toMatchObject({ status: 200 });
  expect(health.body).toMatchObject({ status: 'ok', sandbox: { mode: 'seccomp', path: 'cold' } });

  const run = await postJson(`${host.url}/pyexec/execute`, { script: 'def main(a, b):\n    print("adding")\n    return a + b', args: { a: 2, b: 3 } });
  expect(run.status).toBe(200);
  expect(run.body).toMatchObject({ result: 5, stdout: 'adding\n', sandbox: 'seccomp' });

  const failing = await postJson(`${host.url}/pyexec/execute`, { script: 'def main():\n    return {}["b"]' });
  expect(failing.status).toBe(422);
  expect(failing.body.error).toMatchObject({ type: 'runtime_error', exception: 'KeyError' });

  // Its own body handling still applies: over REQUEST_MAX_BYTES is 413, refused before reading.
  const tooLarge = await postJson(`${host.url}/pyexec/execute`, { script: `def main():\n    return "${'x'.repeat(REQUEST_MAX_BYTES)}"` });
  expect(tooLarge.status).toBe(413);
  expect(tooLarge.body.error).toMatchObject({ type: 'payload_too_large', limit: REQUEST_MAX_BYTES });

  const doc = await json(`${host.url}/pyexec/openapi.json`);
  expect(doc.body.servers[0].url).toBe('/pyexec');
  expect(Object.keys(doc.body.paths)).toContain('/health');

  expect(host.output()).toContain('"event":"startup"');
});

test('signals stay with the host: SIGTERM ends it the way the Functions Framework does', async () => {
  host.child.kill('SIGTERM');
  expect(await host.exited).toBe(0);
  expect(host.output()).not.toContain('"event":"shutdown_started"');
});

test('served on its own (--target=service), an invalid setting still stops the start-up, naming the variable', async () => {
  const child = spawn(process.execPath, [FRAMEWORK, '--target=service', '--signature-type=http'], {
    cwd: REPO,
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin', PORT: String(await freePort()), MAX_CONCURRENT_RUNS: '0', SANDBOX_WORK_ROOT: workRoot },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout!.on('data', (d: Buffer) => (output += d.toString('utf8')));
  child.stderr!.on('data', (d: Buffer) => (output += d.toString('utf8')));
  const code = await new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
  expect(code).toBe(1);
  expect(output).toContain('MAX_CONCURRENT_RUNS must be a whole number from 1 to 1000, got "0"');
});
