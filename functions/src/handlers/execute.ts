/** POST /execute: body -> validation -> classification -> admission -> sandbox run -> outcome. */
import { createHash } from 'crypto';
import type { IncomingMessage, ServerResponse } from 'http';
import type { RequestInfo, ServiceContext } from '../context';
import { ApiError } from '../errors';
import { readBody } from '../http/requestBody';
import { interpret } from '../outcome';
import { runLimits } from '../sandbox/limits';
import { scriptKind } from '../sandbox/warm/scriptKind';
import { parseExecuteRequest, requestBounds } from '../validation';

export interface HandlerResult {
  status: number;
  body: Record<string, unknown>;
  headers?: Record<string, string>;
}

export async function execute(req: IncomingMessage, _res: ServerResponse, ctx: ServiceContext, info: RequestInfo): Promise<HandlerResult> {
  requireJson(req);
  // Every slot busy and the queue full (or shutting down): refuse before reading, parsing,
  // validating or hashing the body, so an overloaded instance spends almost nothing on a 429.
  // acquire() below still decides for the requests that pass: the state may change meanwhile.
  const refusal = ctx.admission.refusal();
  if (refusal) throw refusal;
  const raw = await readBody(req, ctx.config.requestMaxBytes);
  const request = parseExecuteRequest(parseJson(raw), requestBounds(ctx.config));
  const asked = { timeoutMs: request.limits?.timeout_ms, memoryMb: request.limits?.memory_mb };
  info.logFields.script_sha256 = createHash('sha256').update(request.script, 'utf8').digest('hex');
  info.logFields.script_bytes = Buffer.byteLength(request.script, 'utf8');
  if (ctx.config.logScripts) info.logFields.script = request.script;

  const { sandbox, report } = await ctx.probe;
  if (!sandbox) throw new ApiError('sandbox_unavailable', `no sandbox is usable on this instance: ${report.reason}`);

  // Standard-library imports only (lean) or not (full): the warm path prefers a slot whose waiting
  // child suits the script, and runs a lean script in a lean child.
  const kind = scriptKind(request.script);
  info.logFields.script_kind = kind;

  // The run is killed if the client leaves, or when shutdown's grace period ends (app.ts).
  const { signal } = info.abort;
  const lease = await ctx.admission.acquire(signal, sandbox.readyFor?.(kind));
  info.logFields.queue_ms = Math.round(lease.queueMs);
  try {
    const run = await sandbox.run({ script: request.script, kind, args: request.args ?? {}, files: request.files ?? [], limits: asked, slot: lease.slot, signal });
    const outcome = interpret(run, {
      requestId: info.requestId,
      queueMs: lease.queueMs,
      // The same derivation the sandbox made for the run (LimitedSandbox, limits.ts).
      limits: runLimits(ctx.config, asked),
      abortReason: signal.aborted ? (signal.reason as 'client_closed' | 'shutdown') : undefined,
    });
    Object.assign(info.logFields, {
      outcome: outcome.type,
      sandbox: run.mode,
      sandbox_path: sandbox.path,
      warm_child: run.warmChild,
      wall_ms: Math.round(run.wallMs),
      cpu_ms: run.channel.kind === 'message' ? run.channel.message.cpu_ms : null,
      stdout_bytes: run.stdout.bytes,
      stderr_bytes: run.stderr.bytes,
      files_in: request.files?.length ?? 0,
      files_out: run.channel.kind === 'message' && run.channel.message.status === 'ok' ? (run.channel.message.files?.length ?? 0) : 0,
      timeout_ms: request.limits?.timeout_ms,
      memory_mb: request.limits?.memory_mb,
      exit_code: run.exitCode,
      signal: run.signal,
    });
    return { status: outcome.status, body: outcome.body };
  } finally {
    lease.release();
  }
}

function requireJson(req: IncomingMessage): void {
  const type = req.headers['content-type'];
  const [mediaType, ...params] = (type ?? '').split(';').map((part) => part.trim().toLowerCase());
  if (mediaType !== 'application/json') {
    throw new ApiError('unsupported_media_type', type ? `Content-Type must be application/json, got "${type}"` : 'Content-Type must be application/json (it is missing)');
  }
  const charset = params.find((param) => param.startsWith('charset='));
  if (charset && !/^charset="?utf-8"?$/.test(charset)) {
    throw new ApiError('unsupported_media_type', `only UTF-8 JSON is accepted, got ${charset}`);
  }
}

/**
 * JSON.parse does not recurse (V8 parses iteratively): a body of 1 MiB of '[' is a SyntaxError, and
 * a body nested arbitrarily deep parses; parseExecuteRequest then bounds the depth of `args` before
 * anything walks or serializes it. Whatever JSON.parse throws comes from the client's body: 400.
 */
function parseJson(raw: Buffer): unknown {
  if (raw.length === 0) throw new ApiError('invalid_request', 'the request body is empty; send a JSON object with a "script" field');
  try {
    return JSON.parse(raw.toString('utf8'));
  } catch (error) {
    throw new ApiError('invalid_request', `the request body is not valid JSON: ${(error as Error).message}`);
  }
}
