/** The log line's format, in-process: what Cloud Logging's agent and Error Reporting read from it. */
import { Writable } from 'stream';
import { durationString, Logger, sourceLocationFromStack } from '../src/logging';

function capture(): { logger: Logger; lines: Record<string, any>[] } {
  const lines: Record<string, any>[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      lines.push(
        ...chunk
          .toString('utf8')
          .split('\n')
          .filter(Boolean)
          .map((line) => JSON.parse(line)),
      );
      done();
    },
  });
  return { logger: new Logger('demo-project', sink), lines };
}

test.each([
  [0n, '0s'],
  [2_000_000_000n, '2s'],
  [11_000_000n, '0.011s'],
  [11_250_000n, '0.011250s'],
  [500n, '0.000000500s'],
  [1_234_567_891n, '1.234567891s'],
  [-5n, '0s'],
])('durationString(%p) is %p (google.protobuf.Duration JSON)', (ns, text) => {
  expect(durationString(ns)).toBe(text);
});

test('sourceLocationFromStack reads V8 frames, named or not', () => {
  const stack = 'Error: x\n    at run (/app/functions/build/app.js:12:7)\n    at /app/functions/build/index.js:3:1';
  expect(sourceLocationFromStack(stack)).toEqual({ file: '/app/functions/build/app.js', line: '12', function: 'run' });
  expect(sourceLocationFromStack(stack, 1)).toEqual({ file: '/app/functions/build/index.js', line: '3' });
  expect(sourceLocationFromStack(undefined)).toBeUndefined();
});

test('a line has severity, the special fields, no logName and no library diagnostics', () => {
  const { logger, lines } = capture();
  logger.info('first', { a: 1 });
  logger.write('INFO', 'request', {
    httpRequest: { requestMethod: 'GET', requestUrl: '/health', status: 200, latency: '0.011s' },
    trace: { traceId: '4bf92f3577b34da6a3ce929d0e0e4736', spanId: '00f067aa0ba902b7', sampled: true },
  });
  expect(lines).toHaveLength(2);
  for (const line of lines) {
    expect(line.severity).toBe('INFO');
    expect(line).not.toHaveProperty('logName');
    expect(line).not.toHaveProperty('logging.googleapis.com/diagnostic');
    expect(line).not.toHaveProperty('logging.googleapis.com/sourceLocation');
  }
  expect(lines[0]).toMatchObject({ message: 'first', a: 1 });
  expect(lines[1]).toMatchObject({
    message: 'request',
    httpRequest: { latency: '0.011s', status: 200 },
    'logging.googleapis.com/trace': 'projects/demo-project/traces/4bf92f3577b34da6a3ce929d0e0e4736',
    'logging.googleapis.com/spanId': '00f067aa0ba902b7',
    // The structured-logging page names this special field trace_sampled (the LogEntry field is traceSampled).
    'logging.googleapis.com/trace_sampled': true,
  });
});

test('an ERROR line carries sourceLocation; with an Error, its V8 stack in stack_trace and its origin as the location', () => {
  const { logger, lines } = capture();
  logger.error('no error object');
  const thrown = new Error('boom');
  logger.write('ERROR', 'with an error', { error: thrown });
  expect(lines[0].severity).toBe('ERROR');
  expect(lines[0]['logging.googleapis.com/sourceLocation']).toMatchObject({ file: expect.stringContaining('logging.test'), line: expect.stringMatching(/^\d+$/) });
  expect(lines[1].stack_trace).toBe(thrown.stack);
  expect(lines[1]['logging.googleapis.com/sourceLocation']).toEqual(sourceLocationFromStack(thrown.stack));
  expect(lines[1]).not.toHaveProperty('error');
});
