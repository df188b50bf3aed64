/**
 * The JSON Schemas of the API. ajv validates with these, and the OpenAPI document (openapi.ts) is
 * built from them, so the two cannot drift apart. (The runner's result channel has its schema in
 * the runner protocol, sandbox/protocol.ts.)
 */
import { ERROR_TYPES } from './errors';
import { SANDBOX_MODES } from './sandbox/backends';
import { SKIPPED_MAX, SKIP_REASONS } from './sandbox/protocol';

/**
 * How deeply `args` may nest: arrays and objects count, `args` itself is level 1. Deeper input is
 * refused by validation.ts before anything recurses into it: JSON.parse copes with any depth, but
 * JSON.stringify (of the job sent to the runner) overflows the stack at a few thousand levels.
 * Not a JSON Schema keyword, so it lives here beside the schema and is stated in its description.
 */
export const ARGS_MAX_DEPTH = 64;

/** The least a request may ask for: below these an interpreter does not start reliably. */
export const MIN_TIMEOUT_MS = 100;
export const MIN_MEMORY_MB = 64;
/** An input file's path, in characters. */
export const INPUT_PATH_MAX_CHARS = 1024;

export const executeRequestSchema = {
  $id: 'ExecuteRequest',
  type: 'object',
  additionalProperties: false,
  required: ['script'],
  properties: {
    script: {
      type: 'string',
      minLength: 1,
      description: 'Python 3 source defining a top-level `def main(...)` or `async def main(...)`.',
    },
    args: {
      type: 'object',
      description: `Keyword arguments: main(**args). Any JSON values, nested at most ${ARGS_MAX_DEPTH} levels deep (arrays and objects count; args itself is level 1); deeper is invalid_request.`,
    },
    limits: {
      type: 'object',
      additionalProperties: false,
      description:
        "This run's limits, each at most the instance's (SCRIPT_TIMEOUT_MS, SCRIPT_MEMORY_MB), which are also the defaults; above it is invalid_request naming the field and the maximum. The limits that applied are echoed in the answer.",
      properties: {
        timeout_ms: { type: 'integer', minimum: MIN_TIMEOUT_MS, description: 'Wall-clock limit; CPU time is limited to the same seconds, rounded up.' },
        memory_mb: { type: 'integer', minimum: MIN_MEMORY_MB, description: "Memory of the whole run (its cgroup where the host has one) and each process's address space." },
      },
    },
    files: {
      type: 'array',
      description:
        'Files written under the run\'s working directory before the script starts (directories made as needed). Paths are relative and normalised: no empty, "." or ".." components, no leading or trailing "/", no control characters, not under "out/" (where output files go), no duplicates, no file that is also another\'s directory. Count and size are capped (INPUT_FILES_MAX, INPUT_FILES_MAX_BYTES, SCRIPT_MAX_FILE_MB each, SCRIPT_TMP_MB together).',
      items: {
        type: 'object',
        additionalProperties: false,
        required: ['path'],
        // Exactly one of the two (each branch names its property: ajv's strict mode wants that).
        oneOf: [
          { required: ['content'], properties: { content: { type: 'string' } } },
          { required: ['content_base64'], properties: { content_base64: { type: 'string' } } },
        ],
        properties: {
          path: { type: 'string', minLength: 1, maxLength: INPUT_PATH_MAX_CHARS },
          content: { type: 'string', description: 'Text, written UTF-8 encoded.' },
          content_base64: { type: 'string', description: 'Bytes, in standard base64 (RFC 4648 section 4, padded).' },
        },
      },
    },
  },
} as const;

export interface ExecuteRequest {
  script: string;
  args?: Record<string, unknown>;
  limits?: { timeout_ms?: number; memory_mb?: number };
  files?: Array<{ path: string; content?: string; content_base64?: string }>;
}

const nullableInt = { type: ['integer', 'null'] };

const runFields = {
  stdout: { type: 'string', description: 'Everything written to fd 1 by the run (all its processes), UTF-8 (invalid bytes become U+FFFD).' },
  stderr: { type: 'string', description: 'Everything written to fd 2, likewise.' },
  truncated: {
    type: 'object',
    additionalProperties: false,
    required: ['stdout', 'stderr', 'files'],
    properties: {
      stdout: { type: 'boolean' },
      stderr: { type: 'boolean' },
      files: { type: 'boolean', description: 'Some output files were left out (OUTPUT_FILES_MAX, OUTPUT_FILES_MAX_BYTES, or more than 10000 entries under out/).' },
    },
  },
  limits: {
    type: 'object',
    additionalProperties: false,
    required: ['timeout_ms', 'memory_mb'],
    description: 'The limits that applied to this run.',
    properties: { timeout_ms: { type: 'integer' }, memory_mb: { type: 'integer' } },
  },
  timing: {
    type: 'object',
    additionalProperties: false,
    required: ['wall_ms', 'cpu_ms', 'queue_ms'],
    properties: {
      wall_ms: { type: 'number', description: 'Sandbox start to end of the run.' },
      cpu_ms: { type: ['number', 'null'], description: 'CPU time of the run as its runner measured it (null when it was killed).' },
      queue_ms: { type: 'number', description: 'Time waiting for a run slot; not counted against the time limit.' },
    },
  },
  sandbox: { enum: SANDBOX_MODES, description: 'Which sandbox mode ran the script.' },
  request_id: { type: 'string' },
};

export const executeSuccessSchema = {
  $id: 'ExecuteSuccess',
  type: 'object',
  additionalProperties: false,
  required: ['result', 'files', 'skipped', 'stdout', 'stderr', 'truncated', 'timing', 'limits', 'sandbox', 'request_id'],
  properties: {
    result: { description: "main()'s return value as JSON." },
    files: {
      type: 'array',
      description: 'The regular files the script left under out/ in its working directory, sorted by path, with their bytes in base64.',
      items: {
        type: 'object',
        additionalProperties: false,
        required: ['path', 'size', 'content_base64'],
        properties: { path: { type: 'string' }, size: { type: 'integer' }, content_base64: { type: 'string' } },
      },
    },
    skipped: {
      type: 'array',
      description: `Entries under out/ that were not returned, and why (name_not_printable: a control character in the name): ${SKIP_REASONS.join(', ')} (at most ${SKIPPED_MAX} listed).`,
      items: {
        type: 'object',
        additionalProperties: false,
        required: ['path', 'reason'],
        properties: { path: { type: 'string' }, reason: { type: 'string' } },
      },
    },
    ...runFields,
  },
} as const;

export const errorSchema = {
  $id: 'ErrorResponse',
  type: 'object',
  additionalProperties: false,
  required: ['error', 'request_id'],
  properties: {
    error: {
      type: 'object',
      required: ['type', 'message'],
      properties: {
        type: { enum: Object.keys(ERROR_TYPES) },
        message: { type: 'string' },
        line: nullableInt,
        column: nullableInt,
        text: { type: ['string', 'null'] },
        exception: { type: 'string' },
        traceback: { type: 'string' },
        exit_code: { type: 'integer' },
        signal: { type: 'string' },
        field: { type: 'string' },
        limit: { type: 'number' },
        allow: { type: 'array', items: { type: 'string' } },
      },
    },
    ...runFields,
  },
} as const;
