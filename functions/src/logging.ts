/**
 * Structured logs: JSON lines on stdout through @google-cloud/logging's synchronous LogSync, which
 * Cloud Run's agent ingests as-is. No credentials, no network, nothing buffered to lose.
 */
import { Entry, LogSync, type Logging } from '@google-cloud/logging';
import type { Writable } from 'stream';

export type Severity = 'DEBUG' | 'INFO' | 'NOTICE' | 'WARNING' | 'ERROR' | 'CRITICAL';

export interface HttpRequestLog {
  requestMethod: string;
  requestUrl: string;
  status: number;
  userAgent?: string;
  remoteIp?: string;
  requestSize?: string;
  responseSize?: string;
  latency: { seconds: number; nanos: number };
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
  [key: string]: unknown;
}

export class Logger {
  private readonly log;

  constructor(private readonly projectId: string | undefined, transport: Writable = process.stdout) {
    // LogSync reads only projectId and detectedResource from its Logging. A full Logging instance
    // would build gRPC clients that look up credentials on the metadata server; we need none.
    const owner = { projectId: projectId ?? 'local', detectedResource: undefined } as unknown as Logging;
    this.log = new LogSync(owner, 'python-exec', transport, { useMessageField: false });
  }

  write(severity: Severity, message: string, fields: LogFields = {}): void {
    const { httpRequest, trace, ...payload } = fields;
    const metadata: Record<string, unknown> = { severity };
    if (httpRequest) metadata.httpRequest = httpRequest;
    if (trace && this.projectId) {
      metadata.trace = `projects/${this.projectId}/traces/${trace.traceId}`;
      if (trace.spanId) metadata.spanId = trace.spanId;
      if (trace.sampled !== undefined) metadata.traceSampled = trace.sampled;
    } else if (trace) {
      payload.trace_id = trace.traceId;
    }
    try {
      this.log.write(new Entry(metadata, { message, ...payload }));
    } catch (error) {
      // Logging must never take the service down.
      process.stderr.write(`log write failed: ${(error as Error).message}: ${message}\n`);
    }
  }

  info(message: string, fields?: LogFields): void {
    this.write('INFO', message, fields);
  }

  warn(message: string, fields?: LogFields): void {
    this.write('WARNING', message, fields);
  }

  error(message: string, fields?: LogFields): void {
    this.write('ERROR', message, fields);
  }
}
