/** ajv validators compiled once from schemas.ts, with error messages that name the field. */
import Ajv, { type ErrorObject, type ValidateFunction } from 'ajv';
import { ApiError } from './errors';
import { executeRequestSchema, runnerMessageSchema, type ExecuteRequest, type RunnerMessage } from './schemas';

const ajv = new Ajv({ allErrors: false, strict: true, allowUnionTypes: true });

const validateRequest: ValidateFunction<ExecuteRequest> = ajv.compile<ExecuteRequest>(executeRequestSchema);
const validateRunnerMessage: ValidateFunction<RunnerMessage> = ajv.compile<RunnerMessage>(runnerMessageSchema);

export function parseExecuteRequest(body: unknown): ExecuteRequest {
  if (validateRequest(body)) return body;
  throw new ApiError('invalid_request', describe(validateRequest.errors?.[0]), { field: fieldOf(validateRequest.errors?.[0]) });
}

export function isRunnerMessage(value: unknown): value is RunnerMessage {
  return validateRunnerMessage(value);
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
      return `unknown field "${field}" (allowed: script, args)`;
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
