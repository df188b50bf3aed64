/** What every handler may use: built once at start-up by service.ts. */
import type { Admission } from './admission';
import type { Config } from './config';
import type { Lifecycle } from './lifecycle';
import type { Logger, Trace } from './logging';
import type { ProbeResult } from './sandbox/probe';

export interface ServiceContext {
  config: Config;
  logger: Logger;
  admission: Admission;
  lifecycle: Lifecycle;
  /** Resolves when the start-up probe has chosen a sandbox (or found none). */
  probe: Promise<ProbeResult>;
}

/** Per request. */
export interface RequestInfo {
  requestId: string;
  trace: Trace | undefined;
  startedAt: bigint;
  /** Fields the handler wants in the request's log line. */
  logFields: Record<string, unknown>;
  /** Aborted when the client leaves ('client_closed') or shutdown's grace ends ('shutdown'). */
  abort: AbortController;
}
