/**
 * GET /health: cheap readiness (mode, capacity, in flight, queued, probe findings).
 * GET /health?deep=1: also runs a canary script through the real sandbox and reports its latency
 * (the Cloud Run startup probe uses this).
 * GET /healthz answers the same, for local use only: Cloud Run's front end reserves /healthz and
 * answers it with its own 404, so deployed callers and probes must use /health.
 */
import type { IncomingMessage } from 'http';
import type { RequestInfo, ServiceContext } from '../context';
import { TRIAL_KIND, trialRun } from '../sandbox/trial';
import { quarantinedUids } from '../sandbox/uidReaper';
import type { HandlerResult } from './execute';

export async function health(req: IncomingMessage, ctx: ServiceContext, info: RequestInfo): Promise<HandlerResult> {
  const { report, sandbox } = await ctx.probe;
  const deep = new URL(req.url ?? '/', 'http://localhost').searchParams.get('deep');
  const body: Record<string, unknown> = {
    status: ctx.lifecycle.shuttingDown ? 'shutting_down' : sandbox ? 'ok' : 'unavailable',
    sandbox: { mode: report.mode, path: report.path, reason: report.reason, requested: report.requested, capabilities: report.capabilities },
    capacity: ctx.admission.capacity,
    in_flight: ctx.admission.inFlight,
    queued: ctx.admission.queued,
    // Run uids out of use because processes of theirs survived SIGKILL (uidReaper.ts); their slots refuse runs until they are gone.
    quarantined_uids: quarantinedUids().map(({ uid, since, pids, detail }) => ({ uid, since: since.toISOString(), pids, detail })),
    limits: {
      timeout_ms: ctx.config.scriptTimeoutMs,
      memory_mb: ctx.config.scriptMemoryMb,
      max_processes: ctx.config.scriptMaxProcesses,
      output_max_bytes: ctx.config.outputMaxBytes,
      result_max_bytes: ctx.config.resultMaxBytes,
      request_max_bytes: ctx.config.requestMaxBytes,
      max_queue: ctx.config.maxQueue,
      max_queue_wait_ms: ctx.config.maxQueueWaitMs,
    },
    request_id: info.requestId,
  };
  if (sandbox?.waiting) {
    const waiting = sandbox.waiting();
    body.warm_pool = { size: ctx.config.warmPoolSize, lean: ctx.config.warmLean, waiting: waiting.length, children: waiting };
  }
  if (deep === '1' || deep === 'true') {
    if (sandbox && !ctx.lifecycle.shuttingDown) {
      const lease = await ctx.admission.acquire(undefined, sandbox.readyFor?.(TRIAL_KIND));
      try {
        const trial = await trialRun(sandbox, lease.slot);
        body.canary = { ok: trial.ok, detail: trial.detail, wall_ms: Math.round(trial.report.wallMs * 10) / 10, queue_ms: Math.round(lease.queueMs) };
        if (!trial.ok) body.status = 'unavailable';
      } finally {
        lease.release();
      }
    } else {
      body.canary = { ok: false, detail: 'no canary run: ' + (sandbox ? 'shutting down' : 'no sandbox') };
    }
  }
  return { status: body.status === 'ok' ? 200 : 503, body };
}
