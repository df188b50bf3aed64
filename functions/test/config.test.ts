/**
 * Configuration: one table of settings (config.ts's SETTINGS) that loads the configuration and
 * writes README.md's table; every parser refuses what it does not accept, naming the variable, the
 * value and what is allowed.
 */
import { readFileSync } from 'fs';
import * as os from 'os';
import * as path from 'path';
import { ConfigError, defaultConcurrency, loadConfig, SETTINGS, settingsTable, shownDefault, type SettingRow } from '../src/config';
import { SANDBOX_MODES } from '../src/sandbox/backends';
import { REPO } from './helpers/service';

const readme = readFileSync(path.join(REPO, 'README.md'), 'utf8');
const setting = (env: string): SettingRow => SETTINGS.find((s) => s.env === env)!;
/** The rows whose parser is wholeNumber, with the range its text states. */
const numberRows = SETTINGS.flatMap((s) => {
  const range = /^a whole number from (\d+) to (\d+)$/.exec(s.parser.allowed);
  return range ? [{ env: s.env, field: s.field, min: Number(range[1]), max: Number(range[2]) }] : [];
});
/** The rows whose parser is oneOf, with the words its text lists. */
const choiceRows = SETTINGS.flatMap((s) => {
  const words = /^([a-z0-9]+(?:, [a-z0-9]+)*) or ([a-z0-9]+)$/.exec(s.parser.allowed);
  return words ? [{ env: s.env, field: s.field, values: [...words[1].split(', '), words[2]] }] : [];
});

test("README's configuration table is exactly the one SETTINGS writes (npm run docs:config)", () => {
  const documented = readme.split('<!-- config-table')[1].split('<!-- /config-table -->')[0].split('\n').slice(1, -1);
  expect(documented).toEqual(settingsTable());
});

test('every table cell is one Markdown cell', () => {
  for (const line of settingsTable()) expect(line.split('|')).toHaveLength(6);
});

test('one row per variable and per Config field; config.ts reads no other variable', () => {
  expect(new Set(SETTINGS.map((s) => s.env)).size).toBe(SETTINGS.length);
  const fields = Object.keys(loadConfig({})).sort();
  expect([...SETTINGS.map((s) => s.field), 'sandboxUidBaseExplicit'].sort()).toEqual(fields);
  const source = readFileSync(path.join(REPO, 'functions/src/config.ts'), 'utf8');
  const readByName = new Set([...source.matchAll(/textOf\(env, '([A-Z_]+)'\)|env\.([A-Z_]{3,})/g)].map((m) => m[1] ?? m[2]));
  expect([...readByName].sort()).toEqual(['GCLOUD_PROJECT', 'SANDBOX_UID_BASE']); // the legacy name of GOOGLE_CLOUD_PROJECT; whether SANDBOX_UID_BASE was set
});

test('every parser is one of the kinds the README states (these tests cover each kind)', () => {
  const otherKinds = SETTINGS.filter((s) => !numberRows.some((r) => r.env === s.env) && !choiceRows.some((r) => r.env === s.env)).map((s) => s.parser.allowed);
  expect([...new Set(otherKinds)].sort()).toEqual(['a path', 'a path (its symlinks resolved at start-up)', 'any text', 'on or off (or true/false, 1/0)']);
  expect(numberRows.length).toBeGreaterThan(20);
  expect(choiceRows.map((r) => r.env)).toEqual(['SANDBOX_MODE', 'SANDBOX_CGROUPS']);
});

test("each fixed default is what README shows and is in its row's own range", () => {
  for (const s of SETTINGS) {
    if (typeof s.default === 'function') {
      expect({ env: s.env, shown: s.shown }).toEqual({ env: s.env, shown: expect.any(String) });
    } else if (s.shown === undefined) {
      expect({ env: s.env, parsed: s.parser.parse(shownDefault(s)) }).toEqual({ env: s.env, parsed: s.default });
    }
  }
});

test('defaults', () => {
  const config = loadConfig({});
  expect(config).toMatchObject({
    port: 8080,
    sandboxMode: 'auto',
    sandboxCgroups: 'auto',
    nsjailPath: 'nsjail',
    sandboxPython: '/usr/bin/python3',
    sandboxDir: path.join(REPO, 'sandbox-image'),
    workRoot: path.join(os.tmpdir(), 'pyexec-runs'),
    scriptTimeoutMs: 10000,
    scriptMemoryMb: 512,
    requestMaxBytes: 1048576,
    inputFilesMaxBytes: 1048576,
    outputFilesMaxBytes: 8388608,
    maxConcurrentRuns: defaultConcurrency(512),
    sandboxUidBase: 60000,
    sandboxUidBaseExplicit: false,
    uidLockDir: '/run/pyexec-uid-ranges',
    warmPool: true,
    warmLean: true,
    logScripts: false,
    projectId: undefined,
  });
  expect(config.maxQueue).toBe(2 * config.maxConcurrentRuns);
  expect(config.warmPoolSize).toBe(config.maxConcurrentRuns);
  for (const { field } of numberRows) expect({ field, value: config[field] }).toEqual({ field, value: expect.any(Number) });
  for (const { field } of numberRows) expect(Number.isInteger(config[field])).toBe(true);
});

test('computed defaults follow the settings they derive from', () => {
  expect(loadConfig({ SCRIPT_MEMORY_MB: '4096' }).maxConcurrentRuns).toBe(defaultConcurrency(4096));
  expect(loadConfig({ MAX_CONCURRENT_RUNS: '3' })).toMatchObject({ maxConcurrentRuns: 3, maxQueue: 6, warmPoolSize: 3 });
  expect(loadConfig({ MAX_CONCURRENT_RUNS: '3', MAX_QUEUE: '0', WARM_POOL_SIZE: '1' })).toMatchObject({ maxQueue: 0, warmPoolSize: 1 });
  expect(loadConfig({ REQUEST_MAX_BYTES: '5000' }).inputFilesMaxBytes).toBe(5000);
  expect(loadConfig({ REQUEST_MAX_BYTES: '5000', INPUT_FILES_MAX_BYTES: '70' }).inputFilesMaxBytes).toBe(70);
});

test('default concurrency follows CPUs and memory', () => {
  expect(defaultConcurrency(512, 2, 24 * 1024)).toBe(4);
  expect(defaultConcurrency(512, 8, 2048)).toBe(3);
  expect(defaultConcurrency(4096, 2, 1024)).toBe(1);
});

test('an empty or blank variable is unset; values are trimmed', () => {
  expect(loadConfig({ PORT: '', SANDBOX_MODE: '  ', WARM_POOL: '' })).toMatchObject({ port: 8080, sandboxMode: 'auto', warmPool: true });
  expect(loadConfig({ WARM_LEAN: ' off ' })).toMatchObject({ warmLean: false });
  expect(loadConfig({ PORT: ' 9090\n', SANDBOX_MODE: ' seccomp ', NSJAIL_PATH: ' /opt/nsjail ' })).toMatchObject({ port: 9090, sandboxMode: 'seccomp', nsjailPath: '/opt/nsjail' });
});

test.each(numberRows)('$env accepts exactly the range README states ($min to $max)', ({ env, field, min, max }) => {
  expect(loadConfig({ [env]: String(min) })[field]).toBe(min);
  expect(loadConfig({ [env]: String(max) })[field]).toBe(max);
  const refused = [String(max + 1), '12x', '-1', '1.5', '1e3', '0x10', 'ten'];
  if (min > 0) refused.push(String(min - 1));
  for (const value of refused) {
    expect(() => loadConfig({ [env]: value })).toThrow(ConfigError);
    expect(() => loadConfig({ [env]: value })).toThrow(`${env} must be a whole number from ${min} to ${max}, got "${value}"`);
  }
});

test.each(choiceRows)('$env accepts exactly the values README states', ({ env, field, values }) => {
  for (const value of values) expect(loadConfig({ [env]: value })[field]).toBe(value);
  for (const value of ['none', values[values.length - 1].toUpperCase(), `${values[0]}x`]) {
    expect(() => loadConfig({ [env]: value })).toThrow(ConfigError);
    expect(() => loadConfig({ [env]: value })).toThrow(`${env} must be ${setting(env).parser.allowed}, got "${value}"`);
  }
});

test("SANDBOX_MODE's values are auto and the backends', in the registry's order", () => {
  expect(SANDBOX_MODES.length).toBeGreaterThan(0);
  expect(setting('SANDBOX_MODE').parser.allowed).toBe(`${['auto', ...SANDBOX_MODES].slice(0, -1).join(', ')} or ${SANDBOX_MODES[SANDBOX_MODES.length - 1]}`);
  expect(setting('SANDBOX_MODE').description).toContain(SANDBOX_MODES.map((mode) => `\`${mode}\``).join(', '));
});

test('the deployment files refuse the same SANDBOX_MODE values the service does', () => {
  const values = ['auto', ...SANDBOX_MODES];
  const allowed = setting('SANDBOX_MODE').parser.allowed;
  const message = `SANDBOX_MODE must be ${allowed}`;
  const terraform = readFileSync(path.join(REPO, 'infra/terraform/variables.tf'), 'utf8');
  expect(terraform).toContain(`contains([${values.map((v) => `"${v}"`).join(', ')}], var.sandbox_mode)`);
  expect(terraform).toContain(`error_message = "sandbox_mode must be ${allowed}."`);
  const deploy = readFileSync(path.join(REPO, 'infra/gcloud/deploy.sh'), 'utf8');
  expect(deploy).toContain(`case "$SANDBOX_MODE" in ${values.join('|')}) ;; *) die "${message}" ;; esac`);
  const cloudbuild = readFileSync(path.join(REPO, 'cloudbuild.yaml'), 'utf8');
  expect(cloudbuild).toContain(`case "$$SANDBOX_MODE" in ${values.join('|')}) ;; *) fail "_${message}";; esac`);
});

test.each(['WARM_POOL', 'LOG_SCRIPTS'])('%s is on or off', (env) => {
  const field = setting(env).field;
  for (const value of ['on', 'ON', 'true', '1']) expect(loadConfig({ [env]: value })[field]).toBe(true);
  for (const value of ['off', 'Off', 'false', '0']) expect(loadConfig({ [env]: value })[field]).toBe(false);
  for (const value of ['yes', 'no', '2', 'enabled']) {
    expect(() => loadConfig({ [env]: value })).toThrow(ConfigError);
    expect(() => loadConfig({ [env]: value })).toThrow(`${env} must be on or off (or true/false, 1/0), got "${value}"`);
  }
});

test('paths on the host are made absolute; SANDBOX_ROOTFS has its symlinks resolved', () => {
  const config = loadConfig({ SANDBOX_DIR: 'sandbox-image', SANDBOX_WORK_ROOT: 'runs', SANDBOX_UID_LOCK_DIR: '/run/locks/../uids', SANDBOX_ROOTFS: '/proc/self/cwd' });
  expect(config).toMatchObject({ sandboxDir: path.resolve('sandbox-image'), workRoot: path.resolve('runs'), uidLockDir: '/run/uids', sandboxRootfs: process.cwd() });
  expect(loadConfig({ SANDBOX_ROOTFS: '/no/such/root' }).sandboxRootfs).toBe('/no/such/root');
});

test('SANDBOX_UID_BASE set or not; GCLOUD_PROJECT stands in for GOOGLE_CLOUD_PROJECT', () => {
  expect(loadConfig({ SANDBOX_UID_BASE: '60000' }).sandboxUidBaseExplicit).toBe(true);
  expect(loadConfig({ SANDBOX_UID_BASE: ' ' }).sandboxUidBaseExplicit).toBe(false);
  expect(loadConfig({ GCLOUD_PROJECT: 'old' }).projectId).toBe('old');
  expect(loadConfig({ GCLOUD_PROJECT: 'old', GOOGLE_CLOUD_PROJECT: 'new' }).projectId).toBe('new');
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
