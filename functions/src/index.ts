/**
 * Entry point loaded by the Functions Framework (`--target=service`): one HTTP function serves
 * POST /execute, GET /healthz and GET /openapi.json.
 */
import * as functions from '@google-cloud/functions-framework';
import { loadConfig } from './config';
import { createService } from './service';

const { context, handler } = createService(loadConfig());
context.lifecycle.takeOverSignals();

functions.http('service', (req, res) => {
  void handler(req, res);
});
