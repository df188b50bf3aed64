/**
 * The HTTP surface: routing, the request id, trace context, one JSON answer per request, and the
 * request's log line. Handlers return {status, body} or throw ApiError; anything else is a bug,
 * answered 500 with the request id and logged with its stack (never sent to the client).
 *
 * Routes live under the context's basePath ('' when the function is served on its own).
 * GET /runtime says what scripts run with (handlers/runtime.ts).
 * GET /health is the health check; /healthz is kept as an alias for local use only, because Cloud
 * Run's front end answers every path it reserves (/healthz among them) itself, with a 404.
 */
import type { IncomingMessage, ServerResponse } from 'http';
import type { RequestInfo, ServiceContext } from './context';
import { ApiError } from './errors';
import { execute, type HandlerResult } from './handlers/execute';
import { health } from './handlers/health';
import { openapi } from './handlers/openapi';
import { runtime } from './handlers/runtime';
import { remoteIpFor, requestIdFor } from './http/caller';
import { bodyBytes } from './http/requestBody';
import { errorBody, sendJson } from './http/respond';
import { traceFromHeaders } from './http/trace';
import { durationString, type Severity } from './logging';

type Handler = (req: IncomingMessage, res: ServerResponse, ctx: ServiceContext, info: RequestInfo) => Promise<HandlerResult>;

const healthRoute: Record<string, Handler> = { GET: (req, _res, ctx, info) => health(req, ctx, info) };

/** Paths relative to the base path. */
export const ROUTES: Record<string, Record<string, Handler>> = {
  '/execute': { POST: execute },
  '/health': healthRoute,
  // Alias for local use: on Cloud Run a request for /healthz never reaches the container.
  '/healthz': healthRoute,
  '/openapi.json': { GET: async (_req, _res, ctx, info) => openapi(ctx, info) },
  '/runtime': { GET: async (_req, _res, ctx, info) => runtime(ctx, info) },
};

/** The request's path relative to basePath, or undefined when it lies outside it. */
export function routePath(url: string | undefined, basePath: string): string | undefined {
  let pathname: string;
  try {
    pathname = new URL(url ?? '/', 'http://localhost').pathname;
  } catch {
    return undefined;
  }
  if (!basePath) return pathname;
  if (pathname === basePath) return '/';
  return pathname.startsWith(`${basePath}/`) ? pathname.slice(basePath.length) : undefined;
}

/** Whether a request is one of this function's own (any method on one of its routes). */
export function ownsRequest(req: IncomingMessage, basePath: string): boolean {
  const path = routePath(req.url, basePath);
  return path !== undefined && Object.prototype.hasOwnProperty.call(ROUTES, path);
}

export function createHandler(ctx: ServiceContext): (req: IncomingMessage, res: ServerResponse) => Promise<void> {
  return async (req, res) => {
    const info: RequestInfo = {
      requestId: requestIdFor(req),
      trace: traceFromHeaders(req.headers),
      startedAt: process.hrtime.bigint(),
      logFields: {},
      abort: new AbortController(),
    };
    res.setHeader('X-Request-Id', info.requestId);
    // Shutdown waits for every tracked request until its answer is written.
    const untrack = ctx.lifecycle.track(info.abort);
    const onClose = () => {
      if (!res.writableFinished) info.abort.abort('client_closed');
    };
    res.on('close', onClose);
    let result: HandlerResult;
    let severity: Severity = 'INFO';
    try {
      result = await route(req, res, ctx, info);
    } catch (error) {
      if (error instanceof ApiError) {
        result = { status: error.status, body: errorBody(error, info.requestId), headers: error.headers };
        info.logFields.outcome ??= error.type;
      } else {
        severity = 'ERROR';
        info.logFields.outcome = 'internal_error';
        info.logFields.error = error;
        result = { status: 500, body: errorBody(new ApiError('internal_error', `internal error; quote request id ${info.requestId}`), info.requestId) };
      }
    }
    if (result.status >= 500 && severity === 'INFO') severity = 'WARNING';
    // An unread body may be huge: close the connection instead of draining it.
    const headers = result.status === 413 ? { ...result.headers, Connection: 'close' } : result.headers;
    const size = sendJson(res, result.status, result.body, headers);
    logRequest(ctx, req, info, result.status, size, severity);
    res.off('close', onClose);
    await written(res);
    untrack();
  };
}

/** Resolves once the answer has been handed to the OS (or the connection is gone). */
function written(res: ServerResponse): Promise<void> {
  if (res.writableFinished || res.destroyed) return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      resolve();
    };
    const timer = setTimeout(done, 5000);
    res.once('finish', done);
    res.once('close', done);
  });
}

async function route(req: IncomingMessage, res: ServerResponse, ctx: ServiceContext, info: RequestInfo): Promise<HandlerResult> {
  const relative = routePath(req.url, ctx.basePath);
  const methods = relative !== undefined && Object.prototype.hasOwnProperty.call(ROUTES, relative) ? ROUTES[relative] : undefined;
  const path = relative === undefined ? (req.url ?? '/').split('?')[0] : `${ctx.basePath}${relative}`;
  if (!methods) throw new ApiError('not_found', `no such path: ${path} (try POST ${ctx.basePath}/execute)`);
  const method = req.method === 'HEAD' && methods.GET ? 'GET' : (req.method ?? '');
  const handler = methods[method];
  if (!handler) {
    const allow = Object.keys(methods).flatMap((m) => (m === 'GET' ? ['GET', 'HEAD'] : [m]));
    throw new ApiError('method_not_allowed', `${req.method} is not allowed on ${path}; use ${allow.join(', ')}`, { allow }, { Allow: allow.join(', ') });
  }
  return handler(req, res, ctx, info);
}

function logRequest(ctx: ServiceContext, req: IncomingMessage, info: RequestInfo, status: number, size: number, severity: Severity): void {
  const latencyNs = process.hrtime.bigint() - info.startedAt;
  const requestBytes = bodyBytes(req);
  const referer = req.headers.referer;
  ctx.logger.write(severity, `${req.method} ${req.url} ${status}`, {
    httpRequest: {
      requestMethod: req.method ?? '',
      requestUrl: req.url ?? '',
      status,
      userAgent: req.headers['user-agent'],
      remoteIp: remoteIpFor(req, ctx.behindFrontEnd),
      ...(referer ? { referer } : {}),
      ...(requestBytes !== undefined ? { requestSize: String(requestBytes) } : {}),
      responseSize: String(size),
      latency: durationString(latencyNs),
      protocol: `HTTP/${req.httpVersion}`,
    },
    trace: info.trace,
    request_id: info.requestId,
    ...info.logFields,
  });
}
