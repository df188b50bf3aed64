/**
 * Request validation in-process (no service, no sandbox): the depth limit on `args`, and that
 * whatever it accepts can be serialized into the runner's job without throwing.
 */
import { ApiError } from '../src/errors';
import { ARGS_MAX_DEPTH, executeRequestSchema } from '../src/schemas';
import { nestsDeeperThan, parseExecuteRequest as parseWithBounds, type RequestBounds } from '../src/validation';

const BOUNDS: RequestBounds = {
  timeoutMs: 10000,
  memoryMb: 512,
  files: { count: 6, totalBytes: 1000, fileBytes: 600, diskBytes: 2000 },
};

function parseExecuteRequest(body: unknown) {
  return parseWithBounds(body, BOUNDS);
}

const SCRIPT = 'def main(**kw):\n    return kw';

/** `levels` nested containers, innermost holding a scalar: depth === levels. */
function nestedArrays(levels: number): unknown {
  let value: unknown = 1;
  for (let i = 0; i < levels; i++) value = [value];
  return value;
}

function nestedObjects(levels: number): Record<string, unknown> {
  let value: Record<string, unknown> = { leaf: true };
  for (let i = 1; i < levels; i++) value = { k: value };
  return value;
}

/** args whose total depth is `depth` (args itself is level 1), via JSON text as the service gets it. */
function bodyWithArgsDepth(depth: number, inner: 'arrays' | 'objects' = 'arrays'): unknown {
  const args = { a: inner === 'arrays' ? nestedArrays(depth - 1) : nestedObjects(depth - 1) };
  return { script: SCRIPT, args };
}

function refusal(body: unknown): ApiError {
  try {
    parseExecuteRequest(body);
  } catch (error) {
    expect(error).toBeInstanceOf(ApiError);
    return error as ApiError;
  }
  throw new Error('expected the body to be refused');
}

function expectTooDeep(body: unknown): void {
  const error = refusal(body);
  expect(error.type).toBe('invalid_request');
  expect(error.status).toBe(400);
  expect(error.details).toEqual({ field: 'args' });
  expect(error.message).toContain(`"args" nests deeper than ${ARGS_MAX_DEPTH} levels`);
}

/** Accepted, and serializable into the runner's job exactly as it came. */
function expectAccepted(body: unknown): void {
  const request = parseExecuteRequest(body);
  const job = JSON.stringify({ script: request.script, args: request.args ?? {} });
  expect(JSON.parse(job).args).toEqual((body as { args?: unknown }).args ?? {});
}

test('the limit is 64', () => {
  expect(ARGS_MAX_DEPTH).toBe(64);
  expect(executeRequestSchema.properties.args.description).toContain('64 levels');
});

describe('nestsDeeperThan', () => {
  test('counts arrays and objects; scalars are level 0', () => {
    expect(nestsDeeperThan(1, 0)).toBe(false);
    expect(nestsDeeperThan('x', 0)).toBe(false);
    expect(nestsDeeperThan(null, 0)).toBe(false);
    expect(nestsDeeperThan({}, 0)).toBe(true);
    expect(nestsDeeperThan({}, 1)).toBe(false);
    expect(nestsDeeperThan({ a: 1, b: 'x', c: null }, 1)).toBe(false);
    expect(nestsDeeperThan({ a: [] }, 1)).toBe(true);
    expect(nestsDeeperThan({ a: [] }, 2)).toBe(false);
    expect(nestsDeeperThan([{ a: [1] }], 3)).toBe(false);
    expect(nestsDeeperThan([{ a: [1] }], 2)).toBe(true);
  });

  test('finds the one deep branch among shallow siblings', () => {
    const value = { a: [1, 2, { b: 3 }], z: { y: { x: nestedArrays(10) } }, last: 'x' };
    expect(nestsDeeperThan(value, 13)).toBe(false);
    expect(nestsDeeperThan(value, 12)).toBe(true);
  });

  test('a million levels: no stack overflow', () => {
    const deep = JSON.parse('['.repeat(1_000_000) + ']'.repeat(1_000_000));
    expect(nestsDeeperThan(deep, 64)).toBe(true);
    expect(nestsDeeperThan(deep, 2_000_000)).toBe(false);
  });
});

describe('parseExecuteRequest: depth of args', () => {
  test.each(['arrays', 'objects'] as const)('depth 64 is accepted (%s)', (inner) => {
    expect(nestsDeeperThan((bodyWithArgsDepth(64, inner) as { args: unknown }).args, 64)).toBe(false);
    expectAccepted(bodyWithArgsDepth(64, inner));
  });

  test.each(['arrays', 'objects'] as const)('depth 65 is refused with field "args" (%s)', (inner) => {
    expectTooDeep(bodyWithArgsDepth(65, inner));
  });

  test('an empty args object is depth 1 and accepted', () => {
    expectAccepted({ script: SCRIPT, args: {} });
  });

  test('5,000 levels (parsed from JSON text, as the service gets it) are refused without a stack overflow', () => {
    const text = `{"script": ${JSON.stringify(SCRIPT)}, "args": {"a": ${'['.repeat(5000)}1${']'.repeat(5000)}}}`;
    const body = JSON.parse(text);
    // JSON.stringify(body) overflows the stack here: that is what used to reach the runner's job.
    expectTooDeep(body);
  });

  test('5,000 levels of objects are refused', () => {
    expectTooDeep({ script: SCRIPT, args: nestedObjects(5000) });
  });

  test('deep nesting inside arrays, after shallow elements, is refused', () => {
    expectTooDeep({ script: SCRIPT, args: { rows: [1, 'two', { three: 3 }, [[[nestedArrays(70)]]], 5] } });
    expectTooDeep({ script: SCRIPT, args: { rows: [{ a: 1 }, { b: [{ c: nestedObjects(63) }] }] } });
  });

  test('the depth check comes before the schema: a deep non-object args is refused for its depth', () => {
    expectTooDeep({ script: SCRIPT, args: nestedArrays(5000) });
    expectTooDeep({ args: nestedArrays(5000) }); // also missing script: depth is reported first
  });

  test('wide but shallow args are accepted', () => {
    const manyKeys = Object.fromEntries(Array.from({ length: 100_000 }, (_, i) => [`k${i}`, i]));
    expectAccepted({ script: SCRIPT, args: manyKeys });
    const longList = { rows: Array.from({ length: 20_000 }, (_, i) => ({ id: i, tags: ['a', 'b'], nested: { v: [i] } })) };
    expectAccepted({ script: SCRIPT, args: longList });
  });

  test('deep values outside args are refused by the schema, without walking into them', () => {
    const deep = nestedArrays(5000);
    const notAString = refusal({ script: deep });
    expect(notAString.details).toEqual({ field: 'script' });
    const unknown = refusal({ script: SCRIPT, extra: deep });
    expect(unknown.details).toEqual({ field: 'extra' });
    const notAnObject = refusal(deep);
    expect(notAnObject.message).toBe('the request body must be a JSON object');
  });
});

describe('parseExecuteRequest: keys that could confuse JavaScript', () => {
  test('"__proto__", "constructor" and "toJSON" inside args are plain data, kept as sent', () => {
    const text = `{"script": ${JSON.stringify(SCRIPT)}, "args": {"__proto__": {"polluted": true}, "constructor": {"prototype": 1}, "toJSON": "x", "hasOwnProperty": 1, "nested": [{"__proto__": [1]}]}}`;
    const body = JSON.parse(text);
    const request = parseExecuteRequest(body);
    const job = JSON.stringify({ script: request.script, args: request.args });
    expect(JSON.parse(job).args).toEqual(JSON.parse(text).args);
    expect(job).toContain('"__proto__":{"polluted":true}');
    expect(job).toContain('"toJSON":"x"');
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  });

  test('a "__proto__" holding deep nesting is still measured', () => {
    const body = JSON.parse(`{"script": "x", "args": {"__proto__": {"a": ${'['.repeat(100)}${']'.repeat(100)}}}}`);
    expectTooDeep(body);
  });

  test('a top-level "__proto__" is an unknown field', () => {
    const error = refusal(JSON.parse('{"script": "x", "__proto__": {"args": 1}}'));
    expect(error.details).toEqual({ field: '__proto__' });
  });
});

describe('parseExecuteRequest: limits', () => {
  test('limits within the maxima are accepted, each optional', () => {
    expect(parseExecuteRequest({ script: SCRIPT, limits: { timeout_ms: 10000, memory_mb: 64 } }).limits).toEqual({ timeout_ms: 10000, memory_mb: 64 });
    expect(parseExecuteRequest({ script: SCRIPT, limits: { memory_mb: 512 } }).limits).toEqual({ memory_mb: 512 });
    expect(parseExecuteRequest({ script: SCRIPT, limits: {} }).limits).toEqual({});
  });

  test.each([
    [{ timeout_ms: 10001 }, 'limits.timeout_ms', '"limits.timeout_ms" is 10001; the most this instance allows is 10000 (SCRIPT_TIMEOUT_MS)', 10000],
    [{ memory_mb: 513 }, 'limits.memory_mb', '"limits.memory_mb" is 513; the most this instance allows is 512 (SCRIPT_MEMORY_MB)', 512],
  ])('above the maximum: %j names the field and the maximum', (limits, field, message, limit) => {
    const error = refusal({ script: SCRIPT, limits });
    expect(error.status).toBe(400);
    expect(error.message).toBe(message);
    expect(error.details).toEqual({ field, limit });
  });

  test.each([
    [{ timeout_ms: 99 }, 'limits.timeout_ms', '"limits.timeout_ms" must be >= 100'],
    [{ memory_mb: 63 }, 'limits.memory_mb', '"limits.memory_mb" must be >= 64'],
    [{ timeout_ms: 1.5 }, 'limits.timeout_ms', '"limits.timeout_ms" must be an integer'],
    [{ memory_mb: '128' }, 'limits.memory_mb', '"limits.memory_mb" must be an integer'],
    [{ cpu_ms: 5 }, 'limits.cpu_ms', 'unknown field "limits.cpu_ms" (allowed: timeout_ms, memory_mb)'],
  ])('%j is refused', (limits, field, message) => {
    const error = refusal({ script: SCRIPT, limits });
    expect(error.message).toBe(message);
    expect(error.details).toEqual({ field });
  });

  test('an unknown top-level field lists the known ones', () => {
    expect(refusal({ script: SCRIPT, timeout: 5 }).message).toBe('unknown field "timeout" (allowed: script, args, limits, files)');
  });
});

describe('parseExecuteRequest: files', () => {
  const file = (path: string, content = 'x') => ({ path, content });

  test('plain relative paths, text and base64, are accepted as sent', () => {
    const files = [file('data/in.csv', 'a,b\n1,2\n'), { path: 'img.png', content_base64: 'iVBORw0KGgo=' }, file('a/b/c/d.txt'), file('notes é.txt'), file('outside/out/x'), file('output.txt')];
    expect(parseExecuteRequest({ script: SCRIPT, files }).files).toEqual(files);
  });

  test.each([
    ['/etc/passwd', 'is absolute'],
    ['../x', 'has a "." or ".." component'],
    ['a/../../x', 'has a "." or ".." component'],
    ['./a', 'has a "." or ".." component'],
    ['a//b', 'has an empty component'],
    ['a/', 'ends with "/"'],
    ['a\u0000b', 'holds a control character'],
    ['a\nb', 'holds a control character'],
    ['out/x.csv', 'is under "out/"'],
    ['out', 'is under "out/"'],
    ['\ud800.txt', 'is not valid Unicode'],
    [`${'n'.repeat(256)}`, 'has a component longer than 255 bytes'],
  ])('path %j is refused, naming the file', (path, why) => {
    const error = refusal({ script: SCRIPT, files: [file('ok.txt'), file(path)] });
    expect(error.status).toBe(400);
    expect(error.details).toEqual({ field: 'files.1.path' });
    expect(error.message).toContain('"files.1.path"');
    expect(error.message).toContain(why);
  });

  test("duplicates, and a file that is another file's directory, are refused", () => {
    expect(refusal({ script: SCRIPT, files: [file('a.txt'), file('a.txt')] }).message).toBe('"files.1.path" "a.txt" is also files.0');
    expect(refusal({ script: SCRIPT, files: [file('a'), file('a/b')] }).message).toBe('"files.1.path" "a/b" needs a directory "a", which is files.0');
    expect(refusal({ script: SCRIPT, files: [file('a/b'), file('a')] }).message).toBe('"files.1.path" "a" is a directory of files.0');
  });

  test('each file has exactly one of content and content_base64', () => {
    for (const entry of [{ path: 'a' }, { path: 'a', content: 'x', content_base64: 'eA==' }]) {
      const error = refusal({ script: SCRIPT, files: [entry] });
      expect(error.message).toBe('"files.0" must have exactly one of "content" (text) or "content_base64" (bytes)');
      expect(error.details).toEqual({ field: 'files.0' });
    }
    expect(refusal({ script: SCRIPT, files: [{ path: 'a', content: 'x', mode: 493 }] }).message).toBe('unknown field "files.0.mode" (allowed: path, content, content_base64)');
  });

  test.each(['eA', 'eA=', 'e A=', 'eA==eA==', '****', 'eA===', 'eA-_'])('content_base64 %j is not standard padded base64', (encoded) => {
    const error = refusal({ script: SCRIPT, files: [{ path: 'a.bin', content_base64: encoded }] });
    expect(error.details).toEqual({ field: 'files.0.content_base64' });
  });

  test('text with a lone surrogate is refused (UTF-8 cannot hold it)', () => {
    expect(refusal({ script: SCRIPT, files: [file('a.txt', 'ok \udc80')] }).details).toEqual({ field: 'files.0.content' });
  });

  test('count, size of each and size together are capped', () => {
    const many = [1, 2, 3, 4, 5, 6, 7].map((n) => file(`f${n}`));
    expect(refusal({ script: SCRIPT, files: many }).message).toBe('"files" holds 7 files; the most this instance accepts is 6 (INPUT_FILES_MAX)');
    // 601 decoded bytes, sent as base64: decoded size counts.
    const big = { path: 'big.bin', content_base64: Buffer.alloc(601).toString('base64') };
    expect(refusal({ script: SCRIPT, files: [big] }).message).toBe('"files.0" holds 601 bytes; a file may hold at most 600 (SCRIPT_MAX_FILE_MB)');
    expect(parseExecuteRequest({ script: SCRIPT, files: [{ ...big, content_base64: Buffer.alloc(600).toString('base64') }] }).files).toHaveLength(1);
    const two = [file('a', 'x'.repeat(600)), file('b', 'é'.repeat(201))]; // 600 + 402 bytes
    expect(refusal({ script: SCRIPT, files: two }).message).toBe('"files" hold 1002 bytes together; the most this instance accepts is 1000 (INPUT_FILES_MAX_BYTES)');
  });
});
