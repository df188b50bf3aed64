/**
 * Concurrency: 200 requests at once, each returning its own random token, all get their own
 * token back (no run sees or answers for another; the queue holds them all).
 */
import { sandboxModes } from '../helpers/service';
import { attackCase, execute, py, randomToken, SECURITY_LIMITS, startService, type RunningService } from './helpers';

describe.each(sandboxModes())('security: concurrency in %s mode', (mode) => {
  let service: RunningService;
  beforeAll(async () => {
    service = await startService({ ...SECURITY_LIMITS, SCRIPT_TIMEOUT_MS: '10000', MAX_QUEUE: '250', MAX_QUEUE_WAIT_MS: '120000' }, mode);
  });
  afterAll(async () => {
    await service?.stop();
  });

  attackCase(
    'concurrency',
    '200 concurrent requests each get their own random token back',
    { seccomp: 'per-slot uid; per-run dir and channel', nsjail: 'per-slot uid; namespaces of its own per run' },
    mode,
    () => service,
    async () => {
      const tokens = Array.from({ length: 200 }, () => randomToken());
      const script = py('import os', 'def main(token):', "    open('token.txt', 'w').write(token)", "    return {'token': open('token.txt').read(), 'pid': os.getpid()}");
      const answers = await Promise.all(tokens.map((token) => execute(service, script, { token })));
      const statuses = answers.map((a) => a.status);
      expect(statuses.filter((s) => s !== 200)).toEqual([]);
      answers.forEach((answer, i) => expect(answer.body.result.token).toBe(tokens[i]));
    },
    180000,
  );
});
