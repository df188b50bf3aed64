/**
 * The OpenAPI 3.1 document, assembled from the same schemas ajv validates with. It declares what
 * the deployment really does: every request carries a Google-signed identity token (Cloud Run's
 * IAM check, before the service sees it), and its version is the package's.
 * functions/test/openapi.test.ts lints it with Redocly's CLI.
 */
import { readFileSync } from 'fs';
import * as path from 'path';
import { ERROR_TYPES } from './errors';
import { ARGS_MAX_DEPTH, errorSchema, executeRequestSchema, executeSuccessSchema } from './schemas';
import { SETTINGS, shownDefault } from './config';
import { runtimeSchema } from './handlers/runtime';
import { SANDBOX_MODES } from './sandbox/backends';

interface PackageInfo {
  version: string;
  license?: string;
}

let packageInfo: PackageInfo | undefined;

/** package.json sits two levels above this file, in the repository and in the image (/app). */
function readPackage(): PackageInfo {
  if (!packageInfo) {
    const parsed = JSON.parse(readFileSync(path.join(__dirname, '..', '..', 'package.json'), 'utf8')) as Partial<PackageInfo>;
    packageInfo = { version: String(parsed.version ?? '0.0.0'), license: parsed.license };
  }
  return packageInfo;
}

const CLOUD_RUN_REFUSAL = {
  description:
    "Sent by Cloud Run's front end, not by the service, when the request carries no valid identity token or its holder lacks " +
    "`roles/run.invoker` on the service. Its body is Google's HTML error page, not JSON.",
  content: { 'text/html': { schema: { type: 'string' } } },
};

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

export interface OpenApiOptions {
  /** Where the function is mounted ('' for the root); the document's server URL. */
  basePath?: string;
}

export function openApiDocument(options: OpenApiOptions = {}): Record<string, unknown> {
  const limits: Record<string, string> = Object.fromEntries(SETTINGS.map((s) => [s.env, shownDefault(s)]));
  const pkg = readPackage();
  const runtime = `${options.basePath ?? ''}/runtime`;
  return {
    openapi: '3.1.0',
    info: {
      title: 'Secure Python execution service',
      version: pkg.version,
      ...(pkg.license ? { license: { name: pkg.license, identifier: pkg.license } } : {}),
      description:
        'POST a Python script that defines main(); it runs in a sandbox (nsjail, or seccomp + rlimits) and the answer carries ' +
        "main()'s return value as JSON plus everything the script printed. Default limits: " +
        `${limits.SCRIPT_TIMEOUT_MS} ms wall time, ${limits.SCRIPT_MEMORY_MB} MiB memory, ${limits.REQUEST_MAX_BYTES}-byte requests, ` +
        `${limits.OUTPUT_MAX_BYTES}-byte stdout/stderr each, ${limits.RESULT_MAX_BYTES}-byte results (GET ${runtime} shows the effective ones, the Python version and the packages). ` +
        `Fixed: args nest at most ${ARGS_MAX_DEPTH} levels deep. ` +
        'Deployed on Cloud Run, every request needs `Authorization: Bearer <identity token>` of a member holding roles/run.invoker ' +
        '(a public deployment, ALLOW_UNAUTHENTICATED=true, accepts requests without one).',
    },
    servers: [
      {
        url: options.basePath || '/',
        description: 'The service that served this document (on Cloud Run: https://SERVICE-PROJECT_NUMBER.REGION.run.app).',
      },
    ],
    security: [{ identityToken: [] }],
    paths: {
      '/execute': {
        post: {
          operationId: 'execute',
          summary: "Run a script and return main()'s result",
          parameters: [{ $ref: '#/components/parameters/RequestId' }],
          requestBody: { required: true, content: { 'application/json': { schema: { $ref: '#/components/schemas/ExecuteRequest' } } } },
          responses: {
            '200': {
              description: 'main() returned; `result` is its value as JSON.',
              headers: { 'X-Request-Id': { $ref: '#/components/headers/RequestId' } },
              content: { 'application/json': { schema: { $ref: '#/components/schemas/ExecuteSuccess' } } },
            },
            '400': errorResponse(400, 'The request or the script is invalid.'),
            '403': CLOUD_RUN_REFUSAL,
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
      '/health': {
        get: {
          operationId: 'health',
          summary: 'Readiness; ?deep=1 also runs a canary script through the sandbox',
          description:
            "Cloud Run's startup probe calls `/health?deep=1`. `/healthz` answers the same when the service is run locally; on Cloud Run " +
            'the front end reserves that path (and others ending in z) and answers it itself with a 404, so it never reaches the service.',
          parameters: [{ name: 'deep', in: 'query', required: false, schema: { enum: ['1', 'true'] } }, { $ref: '#/components/parameters/RequestId' }],
          responses: {
            '200': {
              description: 'Ready.',
              headers: { 'X-Request-Id': { $ref: '#/components/headers/RequestId' } },
              content: { 'application/json': { schema: { $ref: '#/components/schemas/Health' } } },
            },
            '403': CLOUD_RUN_REFUSAL,
            '503': {
              description: 'No usable sandbox, canary failed, or shutting down.',
              headers: { 'X-Request-Id': { $ref: '#/components/headers/RequestId' } },
              content: { 'application/json': { schema: { $ref: '#/components/schemas/Health' } } },
            },
          },
        },
      },
      '/runtime': {
        get: {
          operationId: 'runtime',
          summary: 'What scripts run with: the Python version, the importable packages and their versions, the effective limits',
          description:
            "The Python side is what the sandbox's own interpreter reports (importlib.metadata inside the sandbox), found by one run " +
            'through the sandbox the first time it is asked for and cached for the life of the instance.',
          parameters: [{ $ref: '#/components/parameters/RequestId' }],
          responses: {
            '200': {
              description: 'The runtime.',
              headers: { 'X-Request-Id': { $ref: '#/components/headers/RequestId' } },
              content: { 'application/json': { schema: { $ref: '#/components/schemas/Runtime' } } },
            },
            '403': CLOUD_RUN_REFUSAL,
            '429': errorResponse(429, 'The first inspection found every run slot busy.', { 'Retry-After': { schema: { type: 'string' }, description: 'Seconds to wait.' } }),
            '500': errorResponse(500, 'Service bug.'),
            '503': errorResponse(503, 'No sandbox, or shutting down.'),
          },
        },
      },
      '/openapi.json': {
        get: {
          operationId: 'openapi',
          summary: 'This document',
          responses: {
            '200': { description: 'OpenAPI 3.1', content: { 'application/json': { schema: { type: 'object' } } } },
            '403': CLOUD_RUN_REFUSAL,
          },
        },
      },
    },
    components: {
      securitySchemes: {
        identityToken: {
          type: 'http',
          scheme: 'bearer',
          bearerFormat: 'JWT',
          description:
            'A Google-signed OpenID Connect identity token whose audience is the service URL, e.g. `gcloud auth print-identity-token`, or ' +
            "the metadata server's identity endpoint for a service account. Cloud Run checks it, and that its holder has roles/run.invoker, " +
            'before the request reaches the service (403 otherwise).',
        },
      },
      parameters: {
        RequestId: {
          name: 'X-Request-Id',
          in: 'header',
          required: false,
          description: 'Your own id for this request, kept (and echoed) when it is 1 to 128 characters of `A-Z a-z 0-9 . _ : -`; otherwise a new one is made.',
          schema: { type: 'string' },
        },
      },
      headers: {
        RequestId: {
          description:
            "This request's id, also in its log line and in error bodies: the caller's own X-Request-Id when that is 1 to 128 characters of " + '`A-Z a-z 0-9 . _ : -`, otherwise a new UUID.',
          schema: { type: 'string', pattern: '^[A-Za-z0-9._:-]{1,128}$' },
        },
      },
      schemas: {
        ExecuteRequest: strip(executeRequestSchema),
        ExecuteSuccess: strip(executeSuccessSchema),
        ErrorResponse: strip(errorSchema),
        Runtime: runtimeSchema,
        Health: {
          type: 'object',
          required: ['status', 'sandbox', 'capacity', 'in_flight', 'queued', 'limits', 'request_id'],
          properties: {
            status: { enum: ['ok', 'unavailable', 'shutting_down'] },
            sandbox: {
              type: 'object',
              required: ['mode', 'reason', 'capabilities'],
              properties: {
                mode: { enum: [...SANDBOX_MODES, null] },
                path: { enum: ['warm', 'cold', null], description: 'warm: pre-forked, pre-confined interpreters; cold: a new interpreter per run.' },
                reason: { type: 'string' },
                requested: { enum: ['auto', ...SANDBOX_MODES] },
                capabilities: {
                  type: 'object',
                  additionalProperties: { type: 'object', required: ['available', 'detail'], properties: { available: { type: 'boolean' }, detail: { type: 'string' } } },
                },
              },
            },
            capacity: { type: 'integer' },
            in_flight: { type: 'integer' },
            queued: { type: 'integer' },
            limits: { type: 'object', additionalProperties: { type: 'number' } },
            quarantined_uids: {
              type: 'array',
              description: 'Run uids out of use: processes of theirs survived SIGKILL. Their slots refuse runs (503) until the processes are gone; the service retries the kill with backoff.',
              items: {
                type: 'object',
                properties: { uid: { type: 'integer' }, since: { type: 'string' }, pids: { type: 'array', items: { type: 'integer' } }, detail: { type: 'string' } },
              },
            },
            warm_pool: {
              type: 'object',
              description:
                "Warm path only: children confined and waiting for a job (each becomes exactly one run). A child's kind is its zygote's: `full` (numpy and pandas preloaded; runs any script) or `lean` (WARM_LEAN: standard library only; runs scripts that import nothing else).",
              properties: {
                size: { type: 'integer' },
                lean: { type: 'boolean', description: 'WARM_LEAN: a lean zygote runs beside the full one.' },
                waiting: { type: 'integer' },
                children: {
                  type: 'array',
                  items: { type: 'object', properties: { slot: { type: 'integer' }, pid: { type: 'integer' }, kind: { type: 'string', enum: ['full', 'lean'] } } },
                },
              },
            },
            canary: { type: 'object', required: ['ok', 'detail'], properties: { ok: { type: 'boolean' }, detail: { type: 'string' }, wall_ms: { type: 'number' }, queue_ms: { type: 'number' } } },
            request_id: { type: 'string' },
          },
        },
      },
    },
  };
}
