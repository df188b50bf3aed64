/**
 * The JSON Schemas of the API. ajv validates with these, and the OpenAPI document (openapi.ts) is
 * built from them, so the two cannot drift apart. (The runner's result channel has its schema in
 * the runner protocol, sandbox/protocol.ts.)
 */
import { ERROR_TYPES } from './errors';
import { SANDBOX_MODES } from './sandbox/backends';

/**
 * How deeply `args` may nest: arrays and objects count, `args` itself is level 1. Deeper input is
 * refused by validation.ts before anything recurses into it: JSON.parse copes with any depth, but
 * JSON.stringify (of the job sent to the runner) overflows the stack at a few thousand levels.
 * Not a JSON Schema keyword, so it lives here beside the schema and is stated in its description.
 */
export const ARGS_MAX_DEPTH = 64;

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
  },
} as const;

export interface ExecuteRequest {
  script: string;
  args?: Record<string, unknown>;
}

const nullableInt = { type: ['integer', 'null'] };

const runFields = {
  stdout: { type: 'string', description: 'Everything written to fd 1 by the run (all its processes), UTF-8 (invalid bytes become U+FFFD).' },
  stderr: { type: 'string', description: 'Everything written to fd 2, likewise.' },
  truncated: {
    type: 'object',
    additionalProperties: false,
    required: ['stdout', 'stderr'],
    properties: { stdout: { type: 'boolean' }, stderr: { type: 'boolean' } },
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
  required: ['result', 'stdout', 'stderr', 'truncated', 'timing', 'sandbox', 'request_id'],
  properties: { result: { description: "main()'s return value as JSON." }, ...runFields },
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
