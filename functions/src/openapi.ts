/** The OpenAPI 3.1 document, assembled from the same schemas ajv validates with. */
import { ERROR_TYPES } from './errors';
import { ARGS_MAX_DEPTH, errorSchema, executeRequestSchema, executeSuccessSchema } from './schemas';
import { SETTINGS } from './config';

const strip = <T extends object>(schema: T): Omit<T, '$id'> => {
  const { $id: _id, ...rest } = schema as T & { $id?: string };
  return rest;
};

function errorsWith(status: number): string[] {
  return Object.entries(ERROR_TYPES)
    .filter(([, spec]) => spec.status === status)
    .map(([type]) => type);
}

function errorResponse(status: number, description: string, headers: Record<string, unknown> = {}) {
  const types = errorsWith(status);
  return {
    description: `${description} error.type: ${types.map((t) => `\`${t}\` (${ERROR_TYPES[t as keyof typeof ERROR_TYPES].when})`).join('; ')}`,
    headers: { 'X-Request-Id': { $ref: '#/components/headers/RequestId' }, ...headers },
    content: { 'application/json': { schema: { $ref: '#/components/schemas/ErrorResponse' } } },
  };
}

export function openApiDocument(): Record<string, unknown> {
  const limits = Object.fromEntries(SETTINGS.map((s) => [s.env, s.default]));
  return {
    openapi: '3.1.0',
    info: {
      title: 'Secure Python execution service',
      version: '1.0.0',
      description:
        'POST a Python script that defines main(); it runs in a sandbox (nsjail, or seccomp + rlimits) and the answer carries ' +
        "main()'s return value as JSON plus everything the script printed. Default limits: " +
        `${limits.SCRIPT_TIMEOUT_MS} ms wall time, ${limits.SCRIPT_MEMORY_MB} MiB memory, ${limits.REQUEST_MAX_BYTES}-byte requests, ` +
        `${limits.OUTPUT_MAX_BYTES}-byte stdout/stderr each, ${limits.RESULT_MAX_BYTES}-byte results (GET /healthz shows the effective ones). ` +
        `Fixed: args nest at most ${ARGS_MAX_DEPTH} levels deep.`,
    },
    paths: {
      '/execute': {
        post: {
          operationId: 'execute',
          summary: 'Run a script and return main()\'s result',
          requestBody: { required: true, content: { 'application/json': { schema: { $ref: '#/components/schemas/ExecuteRequest' } } } },
          responses: {
            '200': {
              description: 'main() returned; `result` is its value as JSON.',
              headers: { 'X-Request-Id': { $ref: '#/components/headers/RequestId' } },
              content: { 'application/json': { schema: { $ref: '#/components/schemas/ExecuteSuccess' } } },
            },
            '400': errorResponse(400, 'The request or the script is invalid.'),
            '405': errorResponse(405, 'Wrong method.', { Allow: { schema: { type: 'string' } } }),
            '413': errorResponse(413, 'Body too large.'),
            '415': errorResponse(415, 'Not JSON.'),
            '422': errorResponse(422, 'The script ran and failed; stdout, stderr, timing and sandbox are included.'),
            '429': errorResponse(429, 'Overloaded.', { 'Retry-After': { schema: { type: 'string' }, description: 'Seconds to wait.' } }),
            '500': errorResponse(500, 'Service bug.'),
            '503': errorResponse(503, 'No sandbox, or shutting down.'),
          },
        },
      },
      '/healthz': {
        get: {
          operationId: 'health',
          summary: 'Readiness; ?deep=1 also runs a canary script through the sandbox',
          parameters: [{ name: 'deep', in: 'query', required: false, schema: { enum: ['1', 'true'] } }],
          responses: {
            '200': { description: 'Ready.', content: { 'application/json': { schema: { $ref: '#/components/schemas/Health' } } } },
            '503': { description: 'No usable sandbox, canary failed, or shutting down.', content: { 'application/json': { schema: { $ref: '#/components/schemas/Health' } } } },
          },
        },
      },
      '/openapi.json': {
        get: { operationId: 'openapi', summary: 'This document', responses: { '200': { description: 'OpenAPI 3.1', content: { 'application/json': { schema: { type: 'object' } } } } } },
      },
    },
    components: {
      headers: { RequestId: { description: 'Unique id of this request; also in the log line and in error bodies.', schema: { type: 'string' } } },
      schemas: {
        ExecuteRequest: strip(executeRequestSchema),
        ExecuteSuccess: strip(executeSuccessSchema),
        ErrorResponse: strip(errorSchema),
        Health: {
          type: 'object',
          required: ['status', 'sandbox', 'capacity', 'in_flight', 'queued', 'limits', 'request_id'],
          properties: {
            status: { enum: ['ok', 'unavailable', 'shutting_down'] },
            sandbox: {
              type: 'object',
              required: ['mode', 'reason', 'capabilities'],
              properties: {
                mode: { enum: ['nsjail', 'seccomp', null] },
                path: { enum: ['warm', 'cold', null], description: 'warm: pre-forked, pre-confined interpreters; cold: a new interpreter per run.' },
                reason: { type: 'string' },
                requested: { enum: ['auto', 'nsjail', 'seccomp'] },
                capabilities: { type: 'object', additionalProperties: { type: 'object', required: ['available', 'detail'], properties: { available: { type: 'boolean' }, detail: { type: 'string' } } } },
              },
            },
            capacity: { type: 'integer' },
            in_flight: { type: 'integer' },
            queued: { type: 'integer' },
            limits: { type: 'object', additionalProperties: { type: 'number' } },
            warm_pool: {
              type: 'object',
              description: 'Warm path only: children confined and waiting for a job (each becomes exactly one run).',
              properties: { size: { type: 'integer' }, waiting: { type: 'integer' }, children: { type: 'array', items: { type: 'object', properties: { slot: { type: 'integer' }, pid: { type: 'integer' } } } } },
            },
            canary: { type: 'object', required: ['ok', 'detail'], properties: { ok: { type: 'boolean' }, detail: { type: 'string' }, wall_ms: { type: 'number' }, queue_ms: { type: 'number' } } },
            request_id: { type: 'string' },
          },
        },
      },
    },
  };
}
