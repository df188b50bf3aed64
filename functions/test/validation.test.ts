/**
 * Request validation in-process (no service, no sandbox): the depth limit on `args`, and that
 * whatever it accepts can be serialized into the runner's job without throwing.
 */
import { ApiError } from '../src/errors';
import { ARGS_MAX_DEPTH, executeRequestSchema } from '../src/schemas';
import { nestsDeeperThan, parseExecuteRequest } from '../src/validation';

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
