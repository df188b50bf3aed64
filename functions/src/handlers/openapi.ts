/** GET /openapi.json */
import type { RequestInfo, ServiceContext } from '../context';
import { openApiDocument } from '../openapi';
import type { HandlerResult } from './execute';

export async function openapi(ctx: ServiceContext, _info: RequestInfo): Promise<HandlerResult> {
  return { status: 200, body: openApiDocument({ basePath: ctx.basePath }) };
}
