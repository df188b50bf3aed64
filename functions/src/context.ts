/** What every handler may use: built once per handler by service.ts. */
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
  /**
   * Resolves when the start-up probe has chosen a sandbox (or found none). Reading it starts the
   * probe if nothing has yet: on the first request, or when the handler is started explicitly.
   */
  readonly probe: Promise<ProbeResult>;
  /** Where the handler is mounted: '' (the root) or a prefix such as '/pyexec'. */
  basePath: string;
  /** Requests arrive through Cloud Run's front end: X-Forwarded-For names the caller. */
  behindFrontEnd: boolean;
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
