/** Writing answers: always JSON, always with the request id, exactly once per request. */
import type { ServerResponse } from 'http';
import { ApiError } from '../errors';

export function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): number {
  if (res.headersSent || res.writableEnded || res.destroyed) return 0;
  const payload = Buffer.from(JSON.stringify(body), 'utf8');
  res.statusCode = status;
  res.setHeader('Content-Type', 'application/json; charset=utf-8');
  res.setHeader('Content-Length', String(payload.length));
  res.setHeader('Cache-Control', 'no-store');
  res.setHeader('X-Content-Type-Options', 'nosniff');
  for (const [name, value] of Object.entries(headers)) res.setHeader(name, value);
  res.end(payload);
  return payload.length;
}

export function errorBody(error: ApiError, requestId: string): Record<string, unknown> {
  return { error: { type: error.type, message: error.message, ...error.details }, request_id: requestId };
}
