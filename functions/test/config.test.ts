/** Configuration: one list of settings, documented in README.md, validated at start-up. */
import { readFileSync } from 'fs';
import * as path from 'path';
import { ConfigError, defaultConcurrency, loadConfig, SETTINGS } from '../src/config';
import { REPO } from './helpers/service';

const readme = readFileSync(path.join(REPO, 'README.md'), 'utf8');

test("README's configuration table is exactly SETTINGS", () => {
  const table = readme.split('<!-- config-table')[1].split('<!-- /config-table -->')[0];
  const rows = table
    .split('\n')
    .filter((line) => line.startsWith('| `'))
    .map((line) => line.split('|').map((cell) => cell.trim()));
  const documented = rows.map((cells) => ({ env: cells[1].replace(/`/g, ''), default: cells[2].replace(/`/g, ''), description: cells[3] }));
  expect(documented).toEqual(SETTINGS);
});

test('every variable config.ts reads is in SETTINGS', () => {
  const source = readFileSync(path.join(REPO, 'functions/src/config.ts'), 'utf8');
  const read = new Set([...source.matchAll(/env(?:\.|, ')([A-Z_]{3,})/g)].map((m) => m[1]));
  read.delete('GCLOUD_PROJECT'); // legacy alias of GOOGLE_CLOUD_PROJECT
  for (const name of read) expect(SETTINGS.map((s) => s.env)).toContain(name);
});

test('.ci/run runs the lint, the type check, then exactly the test command README gives', () => {
  expect(readme).toContain('npm test       #');
  const ci = readFileSync(path.join(REPO, '.ci/run'), 'utf8')
    .split('\n')
    .filter((l) => l && !l.startsWith('#') && !l.startsWith('set ') && !l.startsWith('cd '));
  expect(ci).toEqual(['npm run lint', 'npm run typecheck', 'npm test']);
  const documented = [...readme.matchAll(/^(npm (?:test|run [a-z:]+)) +#/gm)].map((m) => m[1]);
  expect(documented).toEqual(expect.arrayContaining(ci));
});

test('defaults', () => {
  const config = loadConfig({});
  expect(config).toMatchObject({ sandboxMode: 'auto', sandboxPython: '/usr/bin/python3', scriptTimeoutMs: 10000, scriptMemoryMb: 512, port: 8080 });
  expect(config.maxQueue).toBe(2 * config.maxConcurrentRuns);
});

test('default concurrency follows CPUs and memory', () => {
  expect(defaultConcurrency(512, 2, 24 * 1024)).toBe(4);
  expect(defaultConcurrency(512, 8, 2048)).toBe(3);
  expect(defaultConcurrency(4096, 2, 1024)).toBe(1);
});

test.each([
  [{ SANDBOX_MODE: 'none' }, 'SANDBOX_MODE'],
  [{ SCRIPT_TIMEOUT_MS: '10s' }, 'SCRIPT_TIMEOUT_MS'],
  [{ SCRIPT_MEMORY_MB: '1' }, 'SCRIPT_MEMORY_MB'],
  [{ MAX_CONCURRENT_RUNS: '0' }, 'MAX_CONCURRENT_RUNS'],
  [{ PORT: '-1' }, 'PORT'],
])('invalid %p is refused naming the variable', (env, name) => {
  expect(() => loadConfig(env)).toThrow(ConfigError);
  expect(() => loadConfig(env)).toThrow(name);
});
