/**
 * GET /runtime over real HTTP, in every sandbox mode present: the sandbox's real Python version and
 * packages (as a script sees them, cross-checked by /execute and against the root's committed
 * lock), the instance's configured limits, the OpenAPI schema, and the cache (one run per instance).
 */
import Ajv from 'ajv';
import { readFileSync } from 'fs';
import * as path from 'path';
import { execute, py, REPO, request, sandboxModes, startService, type RunningService } from './helpers/service';

const LIMITS = {
  SCRIPT_TIMEOUT_MS: '4000',
  SCRIPT_MEMORY_MB: '384',
  OUTPUT_MAX_BYTES: '65536',
  RESULT_MAX_BYTES: '131072',
  REQUEST_MAX_BYTES: '262144',
  INPUT_FILES_MAX: '7',
  INPUT_FILES_MAX_BYTES: '100000',
  OUTPUT_FILES_MAX: '5',
  OUTPUT_FILES_MAX_BYTES: '200000',
};

/** Debian's upstream version in the committed lock (manifest.txt): "1:2.2.4+ds-1" -> "2.2.4". */
function lockedUpstream(pkg: string): string {
  const line = readFileSync(path.join(REPO, 'sandbox-image', 'rootfs', 'manifest.txt'), 'utf8')
    .split('\n')
    .find((l) => l.startsWith(`${pkg} `));
  if (!line) throw new Error(`${pkg} is not in manifest.txt`);
  return line
    .split(' ')[1]
    .replace(/^\d+:/, '')
    .replace(/-[^-]*$/, '')
    .replace(/[+~](ds|dfsg)\d*$/, '');
}

describe.each(sandboxModes())('GET /runtime (%s mode)', (mode) => {
  let service: RunningService;
  let first: Awaited<ReturnType<typeof request>>;
  const pkg = (name: string) => first.body.packages.find((p: { name: string }) => p.name.toLowerCase() === name.toLowerCase());

  beforeAll(async () => {
    // One slot and no queue: the cache test below holds the only slot.
    service = await startService({ ...LIMITS, MAX_CONCURRENT_RUNS: '1', MAX_QUEUE: '0' }, mode);
    first = await request(`${service.url}/runtime`);
  });
  afterAll(async () => {
    await service?.stop();
  });

  test("the sandbox's Python is 3.13 (CPython)", () => {
    expect(first.status).toBe(200);
    expect(first.body.python.version).toMatch(/^3\.13\.\d+$/);
    expect(first.body.python.implementation).toBe('cpython');
    expect(first.body.python.build.startsWith(first.body.python.version)).toBe(true);
    expect(first.body.sandbox).toBe(mode);
    expect(first.headers.get('x-request-id')).toBe(first.body.request_id);
  });

  test('numpy 2.x, pandas 2.x and the rest of the data stack are listed with the modules they provide', () => {
    expect(pkg('numpy')).toEqual({ name: 'numpy', version: expect.stringMatching(/^2\.\d+\.\d+/), modules: ['numpy'] });
    expect(pkg('pandas')).toEqual({ name: 'pandas', version: expect.stringMatching(/^2\.\d+\.\d+/), modules: ['pandas'] });
    expect(pkg('python-dateutil').modules).toEqual(['dateutil']);
    expect(pkg('PyYAML').modules).toContain('yaml');
    expect(pkg('pillow').modules).toEqual(['PIL']);
    for (const name of ['scipy', 'matplotlib', 'openpyxl', 'xlrd', 'pytz', 'lxml', 'jsonschema', 'jmespath', 'tabulate', 'regex']) {
      expect({ name, modules: pkg(name)?.modules }).toEqual({ name, modules: [name] });
    }
    expect(pkg('Unidecode').modules).toEqual(['unidecode']);
    expect(pkg('beautifulsoup4')).toBeDefined();
    // Sorted by name, each once.
    const names = first.body.packages.map((p: { name: string }) => p.name.toLowerCase().replace(/[-_.]+/g, '-'));
    expect(names).toEqual([...names].sort());
    expect(new Set(names).size).toBe(names.length);
  });

  test("the versions are the root's: the committed lock's upstream versions", () => {
    for (const [debian, name] of [
      ['python3-numpy', 'numpy'],
      ['python3-pandas', 'pandas'],
      ['python3-scipy', 'scipy'],
      ['python3-openpyxl', 'openpyxl'],
    ]) {
      expect({ name, version: pkg(name).version.replace(/\+.*$/, '') }).toEqual({ name, version: lockedUpstream(debian) });
    }
    expect(first.body.python.version).toBe(lockedUpstream('python3.13'));
  });

  test('a script sees the same versions', async () => {
    const seen = await execute(
      service,
      py(
        'import importlib.metadata, platform',
        'import numpy, pandas',
        'def main(names):',
        '    return {"python": platform.python_version(), "numpy": numpy.__version__, "pandas": pandas.__version__,',
        '            "all": {n: importlib.metadata.version(n) for n in names}}',
      ),
      { names: first.body.packages.map((p: { name: string }) => p.name) },
    );
    expect(seen.status).toBe(200);
    expect(seen.body.result.python).toBe(first.body.python.version);
    expect(seen.body.result.numpy).toBe(pkg('numpy').version);
    expect(seen.body.result.pandas).toBe(pkg('pandas').version.replace(/\+.*$/, ''));
    expect(seen.body.result.all).toEqual(Object.fromEntries(first.body.packages.map((p: { name: string; version: string }) => [p.name, p.version])));
  });

  test('the limits are the configured maxima', () => {
    expect(first.body.limits).toEqual({
      timeout_ms: 4000,
      memory_mb: 384,
      max_processes: 32,
      max_open_files: 256,
      max_file_mb: 16,
      tmp_mb: 64,
      output_max_bytes: 65536,
      result_max_bytes: 131072,
      request_max_bytes: 262144,
      input_files_max: 7,
      input_files_max_bytes: 100000,
      output_files_max: 5,
      output_files_max_bytes: 200000,
    });
  });

  test('validates against the OpenAPI document', async () => {
    const doc = (await request(`${service.url}/openapi.json`)).body;
    expect(doc.paths['/runtime'].get.responses['200'].content['application/json'].schema).toEqual({ $ref: '#/components/schemas/Runtime' });
    const ajv = new Ajv({ strict: false, allowUnionTypes: true });
    ajv.addSchema(doc, 'openapi.json');
    const validate = ajv.getSchema('openapi.json#/components/schemas/Runtime')!;
    expect(validate(first.body)).toBe(true);
  });

  test('is cached: answered while the only run slot is busy, without a run', async () => {
    const busy = execute(service, py('import time', 'def main():', '    time.sleep(1.5)'));
    await new Promise((r) => setTimeout(r, 400));
    // The slot is taken and the queue is 0: a run would be refused with 429.
    expect((await execute(service, py('def main(): pass'))).status).toBe(429);
    const again = await request(`${service.url}/runtime`);
    expect(again.status).toBe(200);
    expect({ ...again.body, request_id: undefined }).toEqual({ ...first.body, request_id: undefined });
    expect((await busy).status).toBe(200);
  });

  test('GET only (HEAD too); other methods are 405', async () => {
    const post = await request(`${service.url}/runtime`, { method: 'POST' });
    expect(post.status).toBe(405);
    expect(post.headers.get('allow')).toBe('GET, HEAD');
    expect((await request(`${service.url}/runtime`, { method: 'HEAD' })).status).toBe(200);
  });
});
