/**
 * Structured logs: one JSON object per line on stdout, which Cloud Run's logging agent turns into a
 * LogEntry (https://cloud.google.com/logging/docs/structured-logging). Each line is serialised by
 * @google-cloud/logging's public `Entry#toStructuredJSON`; no client, no credentials, no network.
 *
 * What the agent reads specially, and what this module guarantees for it:
 * - `severity` on every line;
 * - `httpRequest` as the LogEntry HttpRequest, with `latency` a Duration string ("0.011s");
 * - `logging.googleapis.com/trace`, `/spanId`, `/traceSampled` when a project id is configured;
 * - `logging.googleapis.com/sourceLocation` on ERROR and worse;
 * - `stack_trace` (V8's `error.stack`) when an Error is logged, where Error Reporting looks first;
 * - no `logName` (LogSync would add one; the agent names the log itself).
 */
import { Entry } from '@google-cloud/logging';
import type { Writable } from 'stream';

export type Severity = 'DEBUG' | 'INFO' | 'NOTICE' | 'WARNING' | 'ERROR' | 'CRITICAL';

const SEVERITY_RANK: Record<Severity, number> = { DEBUG: 100, INFO: 200, NOTICE: 300, WARNING: 400, ERROR: 500, CRITICAL: 600 };

const SOURCE_LOCATION_KEY = 'logging.googleapis.com/sourceLocation';

export interface HttpRequestLog {
  requestMethod: string;
  requestUrl: string;
  status: number;
  userAgent?: string;
  remoteIp?: string;
  referer?: string;
  requestSize?: string;
  responseSize?: string;
  /** A Duration in its JSON form: seconds with up to nine fractional digits and an "s" ("0.011s"). */
  latency: string;
  protocol?: string;
}

export interface Trace {
  traceId: string;
  spanId?: string;
  sampled?: boolean;
}

export interface LogFields {
  httpRequest?: HttpRequestLog;
  trace?: Trace;
  /** An error to report: its stack goes to `stack_trace` and its top frame to sourceLocation. */
  error?: unknown;
  [key: string]: unknown;
}

export interface SourceLocation {
  file: string;
  line: string;
  function?: string;
}

/**
 * A duration in nanoseconds in google.protobuf.Duration's canonical JSON form: seconds, then 0, 3,
 * 6 or 9 fractional digits, then "s" ("2s", "0.011s", "0.011250s", "0.000000500s").
 */
export function durationString(nanoseconds: bigint): string {
  const ns = nanoseconds < 0n ? 0n : nanoseconds;
  const seconds = ns / 1_000_000_000n;
  const nanos = (ns % 1_000_000_000n).toString().padStart(9, '0');
  if (nanos === '000000000') return `${seconds}s`;
  const fraction = nanos.endsWith('000000') ? nanos.slice(0, 3) : nanos.endsWith('000') ? nanos.slice(0, 6) : nanos;
  return `${seconds}.${fraction}s`;
}

/** The first frame of a V8 stack ("    at fn (file:line:col)" or "    at file:line:col"), skipping `skip` frames. */
export function sourceLocationFromStack(stack: string | undefined, skip = 0): SourceLocation | undefined {
  if (!stack) return undefined;
  const frames = stack.split('\n').filter((line) => /^\s+at /.test(line));
  for (const frame of frames.slice(skip)) {
    const withName = /^\s+at (?:async )?(.*?) \((.*):(\d+):\d+\)$/.exec(frame);
    if (withName) return { file: withName[2], line: withName[3], function: withName[1] };
    const bare = /^\s+at (?:async )?(.*):(\d+):\d+$/.exec(frame);
    if (bare) return { file: bare[1], line: bare[2] };
  }
  return undefined;
}

export class Logger {
  constructor(
    private readonly projectId: string | undefined,
    private readonly transport: Writable = process.stdout,
  ) {}

  write(severity: Severity, message: string, fields: LogFields = {}): void {
    this.emit(severity, message, fields);
  }

  info(message: string, fields?: LogFields): void {
    this.emit('INFO', message, fields);
  }

  warn(message: string, fields?: LogFields): void {
    this.emit('WARNING', message, fields);
  }

  error(message: string, fields?: LogFields): void {
    this.emit('ERROR', message, fields);
  }

  /** Called only by the public methods above, so the logging code's caller is always two frames up. */
  private emit(severity: Severity, message: string, fields: LogFields = {}): void {
    const { httpRequest, trace, error, ...payload } = fields;
    const metadata: Record<string, unknown> = { severity };
    if (httpRequest) metadata.httpRequest = httpRequest;
    if (trace && this.projectId) {
      metadata.trace = `projects/${this.projectId}/traces/${trace.traceId}`;
      if (trace.spanId) metadata.spanId = trace.spanId;
      if (trace.sampled !== undefined) metadata.traceSampled = trace.sampled;
    } else if (trace) {
      payload.trace_id = trace.traceId;
    }
    const data: Record<string, unknown> = { message, ...payload };
    const stack = error instanceof Error ? error.stack : undefined;
    if (error !== undefined) {
      // Error Reporting reads stack_trace first; it must be V8's error.stack, unchanged.
      if (stack) data.stack_trace = stack;
      else data.error = typeof error === 'string' ? error : JSON.stringify(error);
    }
    if (SEVERITY_RANK[severity] >= SEVERITY_RANK.ERROR) {
      // Where the error was thrown when there is one, otherwise the code that logged the line.
      const location = sourceLocationFromStack(stack) ?? sourceLocationFromStack(new Error().stack, 2);
      if (location) data[SOURCE_LOCATION_KEY] = location;
    }
    try {
      const entry = new Entry(metadata, data);
      this.transport.write(`${JSON.stringify(entry.toStructuredJSON(this.projectId ?? '', false))}\n`);
    } catch (failure) {
      // Logging must never take the service down.
      process.stderr.write(`log write failed: ${(failure as Error).message}: ${message}\n`);
    }
  }
}
