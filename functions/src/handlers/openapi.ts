/** GET /openapi.json */
import type { RequestInfo } from '../context';
import { openApiDocument } from '../openapi';
import type { HandlerResult } from './execute';

export async function openapi(_info: RequestInfo): Promise<HandlerResult> {
  return { status: 200, body: openApiDocument() };
}
