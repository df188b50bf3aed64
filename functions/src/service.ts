/**
 * The composition root: one Python-execution HTTP handler with its configuration, logger,
 * admission, lifecycle and sandbox. Creating a handler starts nothing but the scoped body
 * handling of its own routes (http/requestBody.ts); the sandbox probe (and with it the warm pool)
 * starts on the first request or on `start()`, and signals are taken over only by a handler that
 * owns its process (index.ts's `service`).
 */
import type { IncomingMessage, ServerResponse } from 'http';
import { Admission } from './admission';
import { createHandler, ownsRequest } from './app';
import { loadConfig, type Config } from './config';
import type { ServiceContext } from './context';
import { claimRequestBodies } from './http/requestBody';
import { Lifecycle } from './lifecycle';
import { Logger } from './logging';
import { allCapabilities, probe, type ProbeReport, type ProbeResult } from './sandbox/probe';
import { uidRefusal } from './sandbox/uidReaper';
import type { Sandbox } from './sandbox/types';

export interface PythonExecOptions {
  /** Settings; default: read from the environment (config.ts). */
  config?: Config;
  /** Where the structured log lines go; default: stdout, with config.projectId for trace links. */
  logger?: Logger;
  /**
   * A sandbox to use instead of probing the host for one (tests, or a host that builds its own);
   * null: none, so every run is refused with 503 sandbox_unavailable.
   */
  sandbox?: Sandbox | null;
  /** Or a whole probe result (what the start-up probe would have found) to use instead of probing. */
  probeResult?: ProbeResult | Promise<ProbeResult>;
  /** Mount point when the function shares a server with others, e.g. '/pyexec'; default '' (the root). */
  basePath?: string;
  /** Requests come through Cloud Run's front end, so X-Forwarded-For names the caller (logs only). */
  behindFrontEnd?: boolean;
  /**
   * The function owns its process (it is the Functions Framework's target): it takes SIGTERM and
   * SIGINT over for a graceful shutdown and exits when that is done. Default false: a mounted
   * function leaves signals to its host, which calls `shutdown()`.
   */
  ownsProcess?: boolean;
  /** How an owning function ends the process after shutdown (tests replace it). */
  exit?: (code: number) => void;
}

/** The HTTP handler (a Functions Framework HttpFunction), with its controls. */
export interface PythonExecHandler {
  (req: IncomingMessage, res: ServerResponse): Promise<void>;
  readonly context: ServiceContext;
  /** Starts the sandbox probe (and the warm pool) now instead of on the first request; idempotent. */
  start(): Promise<ProbeResult>;
  /**
   * Graceful shutdown: admit nothing new, let runs finish within SHUTDOWN_GRACE_MS, kill the rest
   * and answer them 503. Ends the process only when the handler owns it.
   */
  shutdown(reason?: string): Promise<void>;
  /** Stops handling request bodies for this function's routes (the handler must not be used after). */
  close(): void;
}

/** '' or '/a/b': a leading slash, no trailing one, plain path characters. */
export function normaliseBasePath(basePath: string | undefined): string {
  const trimmed = (basePath ?? '').trim().replace(/\/+$/, '');
  if (trimmed === '') return '';
  const withSlash = trimmed.startsWith('/') ? trimmed : `/${trimmed}`;
  if (!/^(\/[A-Za-z0-9._~-]+)+$/.test(withSlash)) throw new Error(`basePath must look like /name or /a/b, got "${basePath}"`);
  return withSlash;
}

export function createPythonExecHandler(options: PythonExecOptions = {}): PythonExecHandler {
  const config = options.config ?? loadConfig();
  const logger = options.logger ?? new Logger(config.projectId);
  const basePath = normaliseBasePath(options.basePath);
  const ownsProcess = options.ownsProcess ?? false;
  const admission = new Admission(config.maxConcurrentRuns, config.maxQueue, config.maxQueueWaitMs, Math.max(1, Math.ceil(config.scriptTimeoutMs / 1000)));
  const exit = ownsProcess ? (options.exit ?? ((code: number) => process.exit(code))) : () => undefined;
  const lifecycle = new Lifecycle(admission, logger, config.shutdownGraceMs, exit);

  let probed: Promise<ProbeResult> | undefined;
  const start = (): Promise<ProbeResult> => {
    if (ownsProcess) lifecycle.takeOverSignals();
    probed ??= findSandbox(config, logger, options).then(
      (result) => {
        const { sandbox } = result;
        if (sandbox?.close) lifecycle.onStop(() => sandbox.close!());
        // Slot n runs as uid base+n: a quarantined uid's slot is not handed out while another can serve.
        const base = result.report.capabilities.uid_range.base;
        if (base !== null) admission.outOfUse = (slot) => uidRefusal(base + slot) !== undefined;
        return logStartup(config, logger, result);
      },
      (error: Error) => probeFailed(config, logger, error),
    );
    return probed;
  };

  const context: ServiceContext = {
    config,
    logger,
    admission,
    lifecycle,
    basePath,
    behindFrontEnd: options.behindFrontEnd ?? false,
    get probe() {
      return start();
    },
  };
  const release = claimRequestBodies((req) => ownsRequest(req, basePath));
  const inner = createHandler(context);
  const handler = ((req: IncomingMessage, res: ServerResponse) => {
    void start();
    return inner(req, res);
  }) as PythonExecHandler;
  Object.defineProperties(handler, {
    context: { value: context, enumerable: true },
    start: { value: start, enumerable: true },
    shutdown: { value: (reason = 'shutdown requested') => lifecycle.shutdown(reason), enumerable: true },
    close: { value: release, enumerable: true },
  });
  return handler;
}

function findSandbox(config: Config, logger: Logger, options: PythonExecOptions): Promise<ProbeResult> {
  if (options.probeResult) return Promise.resolve(options.probeResult);
  if (options.sandbox !== undefined) return Promise.resolve(givenSandbox(config, options.sandbox));
  return probe(config, logger);
}

function givenSandbox(config: Config, sandbox: Sandbox | null): ProbeResult {
  const report: ProbeReport = {
    mode: sandbox?.mode ?? null,
    path: sandbox?.path ?? null,
    reason: sandbox ? `sandbox given to the handler (${sandbox.mode}, ${sandbox.path})` : 'no sandbox was given to the handler',
    requested: config.sandboxMode,
    capabilities: allCapabilities({ available: false, detail: 'not probed: the sandbox was given to the handler' }),
  };
  return { sandbox, report };
}

function logStartup(config: Config, logger: Logger, result: ProbeResult): ProbeResult {
  const { report } = result;
  const fields = {
    event: 'startup',
    sandbox_mode: report.mode,
    sandbox_path: report.path,
    reason: report.reason,
    capabilities: report.capabilities,
    limits: { ...config, projectId: undefined },
  };
  if (report.mode) logger.info(`sandbox mode: ${report.mode}, ${report.path} path (${report.reason})`, fields);
  else logger.error(`no usable sandbox: every run will be refused with 503 (${report.reason})`, fields);
  return result;
}

function probeFailed(config: Config, logger: Logger, error: Error): ProbeResult {
  logger.error('the start-up probe failed: every run will be refused with 503', { event: 'startup', error });
  return {
    sandbox: null,
    report: {
      mode: null,
      path: null,
      reason: `the start-up probe failed: ${error.message}`,
      requested: config.sandboxMode,
      capabilities: allCapabilities({ available: false, detail: 'probe failed' }),
    },
  };
}
