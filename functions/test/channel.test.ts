/**
 * The result channel as the service reads it (protocol.ts readChannel), in-process: which
 * messages are believed after which marker, and the output files' caps. The channel is untrusted:
 * the script shares the runner's process and can write to it after the markers.
 */
import { CONFINED_MARKER, readChannel, USER_CODE_MARKER, type ChannelState } from '../src/sandbox/protocol';

const CAPS = { resultMaxBytes: 100, outputFilesMax: 2, outputFilesMaxBytes: 10 };

function read(markers: number[], message: unknown): ChannelState {
  const bytes = Buffer.concat([Buffer.from(markers), Buffer.from(JSON.stringify(message))]);
  return readChannel({ overflowed: false, buffer: () => bytes }, CAPS);
}

const ok = (extra: Record<string, unknown> = {}) => ({ status: 'ok', cpu_ms: 1, layers: {}, result: 1, ...extra });
const error = (type: string, extra: Record<string, unknown> = {}) => ({ status: 'error', cpu_ms: 1, layers: {}, error: { type, message: 'm', ...extra } });
const CONFINED = [CONFINED_MARKER];
const RUNNING = [CONFINED_MARKER, USER_CODE_MARKER];

test.each([
  ['a result after both markers', RUNNING, ok(), 'message'],
  ['a script error after both markers', RUNNING, error('runtime_error'), 'message'],
  ['a syntax error before user code', CONFINED, error('syntax_error'), 'message'],
  ['input_files before user code', CONFINED, error('input_files', { errno: 'ENOSPC' }), 'message'],
  ['input_files written by the script (after the user-code marker)', RUNNING, error('input_files', { errno: 'ENOSPC' }), 'invalid'],
  ['sandbox_error without any marker', [], error('sandbox_error'), 'message'],
  ['sandbox_error after the confinement marker', CONFINED, error('sandbox_error'), 'invalid'],
  ['sandbox_error written by the script', RUNNING, error('sandbox_error'), 'invalid'],
  ['a result without the confinement marker', [], ok(), 'invalid'],
])('%s: %s', (_name, markers, message, kind) => {
  expect(read(markers, message).kind).toBe(kind);
});

describe('output files are held to the run caps, whatever the script wrote to the channel', () => {
  const file = (path: string, text: string) => ({ path, size: Buffer.byteLength(text), content_base64: Buffer.from(text).toString('base64') });

  test('within the caps: believed', () => {
    expect(read(RUNNING, ok({ files: [file('out/a', 'hello'), file('out/b', 'world')], skipped: [], files_truncated: false })).kind).toBe('message');
  });

  test.each([
    ['more files than OUTPUT_FILES_MAX', { files: [file('out/a', 'a'), file('out/b', 'b'), file('out/c', 'c')] }],
    ['more bytes than OUTPUT_FILES_MAX_BYTES', { files: [file('out/a', 'hello'), file('out/b', 'world!')] }],
    ['a size that is not its content', { files: [{ ...file('out/a', 'hello'), size: 2 }] }],
    ['content that is not base64', { files: [{ path: 'out/a', size: 3, content_base64: '@@@@' }] }],
    ['a path outside out/', { files: [file('../etc/passwd', 'x')] }],
    ['a path that climbs out of out/', { files: [file('out/../../.ssh/authorized_keys', 'x')] }],
    ['a path with an empty or "." component', { files: [file('out//a', 'x')] }],
    ['a path with a control character', { files: [file('out/a\nb', 'x')] }],
    ['the same path twice', { files: [file('out/a', 'x'), file('out/a', 'y')] }],
    ['a skipped entry outside out/', { skipped: [{ path: '/etc/shadow', reason: 'symlink' }] }],
    ['an unknown skip reason', { skipped: [{ path: 'out/x', reason: 'because' }] }],
  ])('%s: not believed', (_name, extra) => {
    expect(read(RUNNING, ok(extra)).kind).toBe('invalid');
  });
});

test('a result over RESULT_MAX_BYTES written by the script itself is oversize, whatever room the channel had for files', () => {
  const big = 'x'.repeat(400 * 1024);
  expect(read(RUNNING, ok({ result: big })).kind).toBe('oversize');
  expect(read(RUNNING, ok({ result: 'x'.repeat(90) })).kind).toBe('message');
});
