/** ajv validators compiled once from schemas.ts, with error messages that name the field. */
import Ajv, { type ErrorObject, type ValidateFunction } from 'ajv';
import type { Config } from './config';
import { ApiError } from './errors';
import { checkInputFiles, type InputFileCaps } from './inputFiles';
import { ARGS_MAX_DEPTH, executeRequestSchema, type ExecuteRequest } from './schemas';

// verbose: each error carries its schema, so an unknown field's message can list the known ones.
const ajv = new Ajv({ allErrors: false, strict: true, allowUnionTypes: true, verbose: true });

const validateRequest: ValidateFunction<ExecuteRequest> = ajv.compile<ExecuteRequest>(executeRequestSchema);

/**
 * Validates a body as JSON.parse returned it. Besides the schema, this is what keeps every later
 * step (the JSON.stringify of the job for the runner, on the cold and the warm path) from throwing:
 *
 * - Depth: JSON.parse accepts any nesting (V8 parses iteratively), but JSON.stringify recurses and
 *   overflows the stack at a few thousand levels (a 500 after admission, and on the warm path after
 *   a pre-forked child was taken). So `args` is measured first, without recursion, before ajv (whose
 *   generated code may recurse) and before anything serializes it. Other fields need no such check:
 *   the schema only looks at their type, and refuses them (`script` must be a string, unknown
 *   fields are refused by name) without walking into them.
 * - Everything else that makes JSON.stringify throw cannot come out of JSON.parse: cycles, BigInt,
 *   callable toJSON (a "toJSON" key holds plain data, which JSON.stringify ignores as a hook).
 * - Keys like "__proto__" or "constructor": JSON.parse makes them own data properties (nothing is
 *   changed on any prototype), JSON.stringify writes them back as they came, ajv refuses them at the
 *   top level as unknown fields, and the depth walk below reads only own values.
 * - Size (huge strings, many keys, long arrays) is bounded by REQUEST_MAX_BYTES before parsing; the
 *   walk and JSON.stringify are linear in it, without recursion.
 */
export function parseExecuteRequest(body: unknown, bounds: RequestBounds): ExecuteRequest {
  if (isPlainObject(body) && Object.prototype.hasOwnProperty.call(body, 'args') && nestsDeeperThan(body.args, ARGS_MAX_DEPTH)) {
    throw new ApiError('invalid_request', `"args" nests deeper than ${ARGS_MAX_DEPTH} levels (arrays and objects count; "args" itself is level 1)`, { field: 'args' });
  }
  if (!validateRequest(body)) {
    const error = firstError(validateRequest.errors ?? []);
    throw new ApiError('invalid_request', describe(error), { field: fieldOf(error) });
  }
  checkLimits(body.limits ?? {}, bounds);
  checkInputFiles(body.files ?? [], bounds.files);
  return body;
}

/** What a request may ask for on this instance: the configured maxima. */
export interface RequestBounds {
  /** SCRIPT_TIMEOUT_MS. */
  timeoutMs: number;
  /** SCRIPT_MEMORY_MB. */
  memoryMb: number;
  files: InputFileCaps;
}

export function requestBounds(config: Config): RequestBounds {
  const mib = 1024 * 1024;
  return {
    timeoutMs: config.scriptTimeoutMs,
    memoryMb: config.scriptMemoryMb,
    files: { count: config.inputFilesMax, totalBytes: config.inputFilesMaxBytes, fileBytes: config.scriptMaxFileMb * mib, diskBytes: config.scriptTmpMb * mib },
  };
}

function checkLimits(limits: NonNullable<ExecuteRequest['limits']>, bounds: RequestBounds): void {
  const maxima = [
    { field: 'timeout_ms', asked: limits.timeout_ms, max: bounds.timeoutMs, setting: 'SCRIPT_TIMEOUT_MS' },
    { field: 'memory_mb', asked: limits.memory_mb, max: bounds.memoryMb, setting: 'SCRIPT_MEMORY_MB' },
  ];
  for (const { field, asked, max, setting } of maxima) {
    if (asked !== undefined && asked > max) {
      throw new ApiError('invalid_request', `"limits.${field}" is ${asked}; the most this instance allows is ${max} (${setting})`, { field: `limits.${field}`, limit: max });
    }
  }
}

/** The error to report: a failed oneOf (a file with both or neither content field) says more than the branch errors ajv lists before it. */
function firstError(errors: ErrorObject[]): ErrorObject | undefined {
  return errors.find((error) => error.keyword === 'oneOf') ?? errors[0];
}

/**
 * Whether a JSON value nests arrays/objects more than maxDepth levels deep (a scalar is level 0,
 * `{}`, `[]` and `{"a": 1}` are level 1, `{"a": []}` is level 2). Iterative with an explicit stack,
 * so no input can overflow the call stack; it stops at the first container past the limit. Meant
 * for JSON.parse output, which is a tree (no shared or cyclic references).
 */
export function nestsDeeperThan(value: unknown, maxDepth: number): boolean {
  if (!isContainer(value)) return false;
  if (maxDepth < 1) return true;
  const stack: Array<{ node: object; depth: number }> = [{ node: value, depth: 1 }];
  for (let item = stack.pop(); item; item = stack.pop()) {
    // Object.values reads own enumerable properties only: an own "__proto__" key is just a value.
    const children: unknown[] = Array.isArray(item.node) ? item.node : Object.values(item.node);
    for (const child of children) {
      if (!isContainer(child)) continue;
      if (item.depth + 1 > maxDepth) return true;
      stack.push({ node: child, depth: item.depth + 1 });
    }
  }
  return false;
}

function isContainer(value: unknown): value is object {
  return typeof value === 'object' && value !== null;
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return isContainer(value) && !Array.isArray(value);
}

function fieldOf(error: ErrorObject | undefined): string {
  if (!error) return '';
  const base = error.instancePath.replace(/^\//, '').replace(/\//g, '.');
  if (error.keyword === 'required') return joinField(base, String(error.params.missingProperty));
  if (error.keyword === 'additionalProperties') return joinField(base, String(error.params.additionalProperty));
  return base;
}

function joinField(base: string, name: string): string {
  return base ? `${base}.${name}` : name;
}

function describe(error: ErrorObject | undefined): string {
  if (!error) return 'the request body is invalid';
  const field = fieldOf(error);
  switch (error.keyword) {
    case 'required':
      return `"${field}" is required`;
    case 'additionalProperties':
      return `unknown field "${field}" (allowed: ${Object.keys((error.parentSchema as { properties?: object } | undefined)?.properties ?? {}).join(', ')})`;
    case 'oneOf':
      return `"${field}" must have exactly one of "content" (text) or "content_base64" (bytes)`;
    case 'type':
      return field ? `"${field}" must be ${article(String(error.params.type))}` : `the request body must be a JSON object`;
    case 'minLength':
      return `"${field}" must not be empty`;
    default:
      return field ? `"${field}" ${error.message}` : `the request body ${error.message}`;
  }
}

function article(type: string): string {
  return /^[aeiou]/.test(type) ? `an ${type}` : `a ${type}`;
}
