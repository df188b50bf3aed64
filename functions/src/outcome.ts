/**
 * Turns what was observed about a run (RunReport) into the answer: status, error type and body.
 * The result channel is the only source of `result`; stdout is never parsed.
 */
import { ERROR_TYPES, type ErrorType } from './errors';
import { MIB, publicLimits, type RunLimits } from './sandbox/limits';
import type { RunReport } from './sandbox/types';

export interface Outcome {
  status: number;
  /** 'success' or the error type; also what the log records. */
  type: 'success' | ErrorType;
  body: Record<string, unknown>;
}

export interface RunContext {
  requestId: string;
  queueMs: number;
  /** The limits the run had: echoed, and named in limit errors. */
  limits: RunLimits;
  /** Why the run was aborted, when it was: the client left, or the instance is shutting down. */
  abortReason?: 'client_closed' | 'shutdown';
}

const MEMORY_SIGNS = /MemoryError|Cannot allocate memory|std::bad_alloc|out of memory|Unable to allocate/i;

export function interpret(report: RunReport, context: RunContext): Outcome {
  const cpuMs = report.channel.kind === 'message' ? report.channel.message.cpu_ms : null;
  const run = {
    stdout: report.stdout.text,
    stderr: report.stderr.text,
    truncated: { stdout: report.stdout.truncated, stderr: report.stderr.truncated, files: false },
    timing: { wall_ms: round(report.wallMs), cpu_ms: cpuMs, queue_ms: round(context.queueMs) },
    limits: publicLimits(context.limits),
    sandbox: report.mode,
    request_id: context.requestId,
  };
  const fail = (type: ErrorType, message: string, details: Record<string, unknown> = {}): Outcome => ({
    status: ERROR_TYPES[type].status,
    type,
    body: { error: { type, message, ...details }, ...run },
  });

  if (report.sandboxFailure) {
    return { status: 503, type: 'sandbox_unavailable', body: { error: { type: 'sandbox_unavailable', message: report.sandboxFailure }, request_id: context.requestId } };
  }
  if (report.aborted && context.abortReason === 'shutdown' && report.channel.kind !== 'message') {
    return fail('shutting_down', 'the instance shut down before the run finished; retry the request');
  }
  // A run over an aggregate limit is reported as such even if main() returned meanwhile: the
  // kernel (or the sampler) already ended some of its processes.
  if (report.exceeded?.kind === 'memory') {
    return fail('memory_limit', report.exceeded.message, { signal: report.signal ?? 'SIGKILL' });
  }
  if (report.exceeded?.kind === 'disk') {
    return fail('killed', report.exceeded.message, { signal: report.signal ?? 'SIGKILL' });
  }
  if (report.channel.kind === 'message') {
    const message = report.channel.message;
    if (message.status === 'ok') {
      const files = { files: message.files ?? [], skipped: message.skipped ?? [] };
      return { status: 200, type: 'success', body: { result: message.result, ...files, ...run, truncated: { ...run.truncated, files: message.files_truncated ?? false } } };
    }
    const { type, message: text, ...details } = message.error;
    if (type === 'sandbox_error') {
      return { status: 503, type: 'sandbox_unavailable', body: { error: { type: 'sandbox_unavailable', message: text }, request_id: context.requestId } };
    }
    // The runner could not write the request's files, before any user code (protocol.ts). They
    // passed validation, so a full disk is the instance's trouble; anything else names the files.
    if (type === 'input_files') {
      if (details.errno === 'ENOSPC' || details.errno === 'EDQUOT') {
        return { status: 503, type: 'sandbox_unavailable', body: { error: { type: 'sandbox_unavailable', message: `the run's disk is full: ${text}` }, request_id: context.requestId } };
      }
      return fail('invalid_request', text, { field: 'files' });
    }
    return fail(type, text, details);
  }
  if (report.timedOut) {
    return fail('timeout', `the script did not finish within its time limit of ${context.limits.timeoutMs} ms`);
  }
  if (report.signal === 'SIGXCPU') {
    return fail('timeout', `the script used up its CPU time limit of ${context.limits.cpuSeconds} s`);
  }
  if (report.channel.kind === 'oversize') {
    return fail('result_too_large', 'the result channel carried more than the result size limit');
  }
  if (report.signal && MEMORY_SIGNS.test(report.stderr.text)) {
    return fail('memory_limit', `the script exceeded its memory limit of ${context.limits.memoryBytes / MIB} MiB (ended by ${report.signal})`, { signal: report.signal });
  }
  if (report.channel.kind === 'invalid') {
    return fail('killed', 'the run ended without a valid result: the script wrote to the result channel itself');
  }
  if (report.signal) {
    return fail('killed', `the script was killed by ${report.signal} before main() returned`, { signal: report.signal });
  }
  if (report.aborted) {
    return fail('killed', 'the run was stopped because the client closed the connection');
  }
  return fail('killed', `the script's process exited with status ${report.exitCode} before main() returned (os._exit or a crash)`, {
    exit_code: report.exitCode ?? -1,
  });
}

function round(ms: number): number {
  return Math.round(ms * 10) / 10;
}
