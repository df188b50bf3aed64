/** The composition root: configuration, logger, admission, lifecycle and the start-up probe. */
import { Admission } from './admission';
import { createHandler } from './app';
import type { Config } from './config';
import type { ServiceContext } from './context';
import { installBodyInterception } from './http/requestBody';
import { Lifecycle } from './lifecycle';
import { Logger } from './logging';
import { probe, type ProbeResult } from './sandbox/probe';

export function createService(config: Config, logger = new Logger(config.projectId)) {
  installBodyInterception();
  const admission = new Admission(config.maxConcurrentRuns, config.maxQueue, config.maxQueueWaitMs, Math.max(1, Math.ceil(config.scriptTimeoutMs / 1000)));
  const lifecycle = new Lifecycle(admission, logger, config.shutdownGraceMs);
  const probed: Promise<ProbeResult> = probe(config, logger).then(
    (result) => {
      const { report } = result;
      const log = report.mode ? logger.info.bind(logger) : logger.error.bind(logger);
      log(report.mode ? `sandbox mode: ${report.mode}, ${report.path} path (${report.reason})` : `no usable sandbox: every run will be refused with 503 (${report.reason})`, {
        event: 'startup',
        sandbox_mode: report.mode,
        sandbox_path: report.path,
        reason: report.reason,
        capabilities: report.capabilities,
        limits: { ...config, projectId: undefined },
      });
      return result;
    },
    (error: Error) => {
      logger.error('the start-up probe failed: every run will be refused with 503', { event: 'startup', error_stack: error.stack });
      const detail = { available: false, detail: 'probe failed' };
      return {
        sandbox: null,
        report: {
          mode: null,
          path: null,
          reason: `the start-up probe failed: ${error.message}`,
          requested: config.sandboxMode,
          capabilities: { running_as_root: detail, seccomp: detail, landlock: { ...detail, abi: 0 }, nsjail: detail, cgroups: { ...detail, version: null, controllers: [] }, warm_pool: detail },
        },
      };
    },
  );
  const context: ServiceContext = { config, logger, admission, lifecycle, probe: probed };
  return { context, handler: createHandler(context) };
}
