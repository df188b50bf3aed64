/**
 * The package's entry point (package.json "main"). Importing it does nothing: no hook, no probe,
 * no warm pool, no signal handler. It exports
 *
 * - `createPythonExecHandler(options)`: a new HTTP handler (a Functions Framework HttpFunction)
 *   serving POST /execute, GET /health (alias /healthz for local use) and GET /openapi.json under
 *   an optional basePath, to mount in an app of your own;
 * - `service`: the handler the Functions Framework serves with `--target=service
 *   --signature-type=http` (the image, `npm start`, `npx functions-framework`). It owns the
 *   process: configuration from the environment, SIGTERM/SIGINT taken over for the graceful
 *   shutdown.
 *
 * `service` is built when it is first read, which the Functions Framework does when it loads the
 * target, just before its server listens: so an invalid setting stops the start-up (the framework
 * prints the ConfigError, naming the variable, and exits 1), the body handling is in place before
 * the first request, and the sandbox probe and the warm pool start with the server.
 */
import { createPythonExecHandler, type PythonExecHandler } from './service';

export { createPythonExecHandler, normaliseBasePath, type PythonExecHandler, type PythonExecOptions } from './service';
export { Logger } from './logging';
export { loadConfig, type Config } from './config';

let defaultService: PythonExecHandler | undefined;

function buildService(): PythonExecHandler {
  if (!defaultService) {
    defaultService = createPythonExecHandler({
      ownsProcess: true,
      // Cloud Run sets K_SERVICE; there every request comes through its front end.
      behindFrontEnd: Boolean(process.env.K_SERVICE),
    });
    void defaultService.start();
  }
  return defaultService;
}

/** The Functions Framework target: built (and started) on first read, see above. */
export declare const service: PythonExecHandler;
Object.defineProperty(exports, 'service', { enumerable: false, get: buildService });
