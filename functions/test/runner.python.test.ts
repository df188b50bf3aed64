/**
 * The runner's own Python: its unit tests (sandbox-image/runner/tests, standard-library unittest;
 * no sandbox, no root), and the agreement between what it fits its messages to (MESSAGE_LIMITS,
 * CHANNEL_ENVELOPE_BYTES in runner.py) and what the service accepts (runnerMessageSchema and
 * CHANNEL_ENVELOPE_BYTES in sandbox/protocol.ts). A message over any limit reads as an invalid
 * channel: the run would be reported as `killed` whatever the script really did.
 */
import { spawnSync } from 'child_process';
import { CHANNEL_ENVELOPE_BYTES, CONFINED_MARKER, readChannel, runnerMessageSchema } from '../src/sandbox/protocol';
import { REPO } from './helpers/service';

const PYTHON = process.env.SANDBOX_PYTHON || '/usr/bin/python3';

function python(args: string[], input?: string): { status: number | null; output: string; stdout: string } {
  const result = spawnSync(PYTHON, ['-B', ...args], {
    cwd: REPO,
    input,
    encoding: 'utf8',
    maxBuffer: 256 * 1024 * 1024,
    env: { ...process.env, PYTHONDONTWRITEBYTECODE: '1' },
  });
  if (result.error) throw new Error(`${PYTHON} could not be run: ${result.error.message}`);
  return { status: result.status, output: `${result.stdout}${result.stderr}`, stdout: result.stdout };
}

/** Runs Python code with sandbox-image/runner importable; returns its stdout as JSON. */
function pythonJson(code: string, input?: unknown): any {
  const prelude = 'import json, sys\nsys.path.insert(0, "sandbox-image/runner")\nimport runner\n';
  const result = python(['-c', prelude + code], input === undefined ? undefined : JSON.stringify(input));
  if (result.status !== 0) throw new Error(`python exited with ${result.status}:\n${result.output}`);
  return JSON.parse(result.stdout);
}

/** The maxLength of each string field of the error object of runnerMessageSchema. */
function schemaLimits(): Record<string, number> {
  const errorBranch = runnerMessageSchema.oneOf.find((branch) => branch.properties.status.const === 'error');
  const properties = (errorBranch!.properties as unknown as { error: { properties: Record<string, { maxLength?: number }> } }).error.properties;
  const limits: Record<string, number> = {};
  for (const [field, schema] of Object.entries(properties)) {
    if (schema.maxLength !== undefined) limits[field] = schema.maxLength;
  }
  return limits;
}

test("the runner's Python unit tests pass (python3 -m unittest discover -s sandbox-image/runner/tests)", () => {
  const result = python(['-m', 'unittest', 'discover', '-s', 'sandbox-image/runner/tests', '-t', 'sandbox-image/runner']);
  if (result.status !== 0) process.stderr.write(`\n*** the runner's Python unit tests failed (exit ${result.status}):\n${result.output}\n`);
  expect(result.output).toMatch(/\nOK/);
  expect(result.status).toBe(0);
}, 180000);

test("runner.MESSAGE_LIMITS is the maxLength of every string field of runnerMessageSchema's error", () => {
  const limits = schemaLimits();
  expect(Object.keys(limits).sort()).toEqual(['exception', 'message', 'text', 'traceback']);
  expect(pythonJson('print(json.dumps(runner.MESSAGE_LIMITS))')).toEqual(limits);
});

test("runner.CHANNEL_ENVELOPE_BYTES is protocol.ts's", () => {
  expect(pythonJson('print(json.dumps(runner.CHANNEL_ENVELOPE_BYTES))')).toBe(CHANNEL_ENVELOPE_BYTES);
});

test('what the runner sends for huge and odd exceptions is what readChannel accepts, at the smallest RESULT_MAX_BYTES', () => {
  const deep = '#'.repeat(250);
  const cases: Array<[string, string]> = [
    ['runtime_error', "def main():\n    raise ValueError('x' * 300000)\n"],
    ['runtime_error', "def main():\n    raise ValueError('\\U0001F600' * 300000)\n"],
    ['runtime_error', "def main():\n    raise ValueError('\\ud800' * 300000 + '\\udc00')\n"],
    ['runtime_error', "def main():\n    raise type('X' * 300000, (Exception,), {'__str__': lambda self: 1 / 0})()\n"],
    ['runtime_error', "def main():\n    e = ValueError('\\u00e9' * 300000)\n    e.add_note('\\U0001F600' * 300000)\n    raise e\n"],
    [
      'runtime_error',
      `def down(n):\n    try:\n        return across(n + 1)  ${deep}\n    except RecursionError:\n        raise ValueError('bottom')\ndef across(n):\n    return down(n + 1)  ${deep}\ndef main():\n    down(0)\n`,
    ],
    ['syntax_error', `def main():\n    return 1 ${'+ \u00e9 '.repeat(100000)}+\n`],
    ['killed', "import sys\ndef main():\n    sys.exit('\\U0001F600' * 300000)\n"],
    ['killed', 'import sys\ndef main():\n    sys.exit(10**5000)\n'], // nothing to shorten: str() of the code fails
    ['result_not_serializable', "def main():\n    return {'\\U0001F600' * 300000: {1}}\n"],
  ];
  const sent: string[] = pythonJson(
    [
      'import tempfile',
      'out = []',
      'for source in json.load(sys.stdin):',
      '    with tempfile.TemporaryFile() as f:',
      '        runner.run({"script": source, "args": {}}, runner.Channel(f.fileno(), 16))',
      '        f.seek(0)',
      '        out.append(f.read().decode("ascii"))',
      'sys.stdout.write(json.dumps(out))',
    ].join('\n'),
    cases.map(([, source]) => source),
  );
  const smallestResultMaxBytes = 16; // config.ts: RESULT_MAX_BYTES is at least 16
  sent.forEach((raw, i) => {
    const bytes = Buffer.concat([Buffer.from([CONFINED_MARKER]), Buffer.from(raw, 'ascii')]);
    const state = readChannel({ overflowed: bytes.length > smallestResultMaxBytes + CHANNEL_ENVELOPE_BYTES, buffer: () => bytes });
    expect({ case: i, state: state.kind }).toEqual({ case: i, state: 'message' });
    if (state.kind !== 'message' || state.message.status !== 'error') throw new Error(`case ${i}: not an error message`);
    expect({ case: i, type: state.message.error.type }).toEqual({ case: i, type: cases[i][0] });
    if (!cases[i][1].includes('10**5000')) expect(JSON.stringify(state.message.error)).toContain('[shortened: ');
  });
});
