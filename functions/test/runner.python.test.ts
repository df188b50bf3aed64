/**
 * The runner's own Python: its unit tests (sandbox-image/runner/tests, standard-library unittest;
 * no sandbox), and the agreement between what it fits its messages to (MESSAGE_LIMITS,
 * CHANNEL_ENVELOPE_BYTES in runner.py) and what the service accepts (runnerMessageSchema and
 * CHANNEL_ENVELOPE_BYTES in sandbox/protocol.ts). A message over any limit reads as an invalid
 * channel: the run would be reported as `killed` whatever the script really did.
 *
 * All of it runs on the interpreter the runner really runs on: the sandbox root's (SANDBOX_ROOTFS,
 * Python 3.13), inside that root. The root's python3 cannot simply be run from the host: it needs
 * the root's glibc (the host's is older), and even through the root's own ld.so its libraries
 * would resolve absolute links (Debian's /etc/alternatives, so BLAS) to the host's files. So, as
 * rootfs.test.ts does: a private mount namespace with a fresh tmpfs on the root's /tmp (the root
 * itself is never written), a copy of sandbox-image's runner and seccomp policy there, and chroot
 * into the root as nobody (as a run is: unprivileged), with an empty environment but for PATH,
 * HOME, TMPDIR and LANG, in /tmp, so that the relative paths below are the same as in the
 * checkout. Without a built root, or without root privileges (chroot, mount), the host's
 * /usr/bin/python3 (3.11) runs them instead, after one loud notice.
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import type { RunLimits } from '../src/sandbox/limits';
import { checkInputFiles } from '../src/inputFiles';
import { CHANNEL_ENVELOPE_BYTES, CONFINED_MARKER, OUTPUT_PATH_MAX_CHARS, SKIPPED_MAX, channelMaxBytes, hasControlCharacter, readChannel, runnerMessageSchema } from '../src/sandbox/protocol';
import { REPO } from './helpers/service';

const ROOTFS = process.env.SANDBOX_ROOTFS || '/var/cache/pyexec-rootfs/current/root';
const ROOT_PYTHON = process.env.SANDBOX_PYTHON || '/usr/bin/python3'; // its path inside ROOTFS, as the service's setting
const HOST_PYTHON = '/usr/bin/python3';
const NOBODY = 65534;
const rootBuilt = fs.existsSync(path.join(ROOTFS, ROOT_PYTHON));
const inRoot = rootBuilt && process.getuid?.() === 0;
if (!inRoot) {
  const why = rootBuilt ? 'running them inside it needs root (mount, chroot)' : `there is no sandbox root at ${ROOTFS} (scripts/setup.sh --test builds it)`;
  process.stderr.write(`\n*** The runner's Python tests run on the HOST's ${HOST_PYTHON}, not the sandbox root's: ${why}. ***\n\n`);
}

/** $1 the root, $2 sandbox-image, $3 the interpreter inside the root; then its arguments. */
const IN_ROOT =
  'mount -t tmpfs -o size=256m,mode=1777 tmpfs "$1/tmp" && mkdir "$1/tmp/sandbox-image" && cp -R "$2/runner" "$2/seccomp-policy.json" "$1/tmp/sandbox-image/" && ' +
  `root="$1" python="$3" && shift 3 && exec chroot --userspec=${NOBODY}:${NOBODY} "$root" /usr/bin/env -i -C /tmp PATH=/usr/bin:/bin HOME=/tmp TMPDIR=/tmp LANG=C.UTF-8 "$python" -B "$@"`;

function python(args: string[], input?: string): { status: number | null; output: string; stdout: string } {
  const [command, argv] = inRoot
    ? ['unshare', ['--mount', '--propagation', 'private', 'sh', '-c', IN_ROOT, 'sh', ROOTFS, path.join(REPO, 'sandbox-image'), ROOT_PYTHON, ...args]]
    : [HOST_PYTHON, ['-B', ...args]];
  const result = spawnSync(command, argv, {
    cwd: REPO,
    input,
    encoding: 'utf8',
    maxBuffer: 256 * 1024 * 1024,
    env: { ...process.env, PYTHONDONTWRITEBYTECODE: '1' },
  });
  if (result.error) throw new Error(`${command} could not be run: ${result.error.message}`);
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

test("files.SKIPPED_MAX and files.PATH_MAX_CHARS are protocol.ts's", () => {
  expect(pythonJson('import files\nprint(json.dumps([files.SKIPPED_MAX, files.PATH_MAX_CHARS]))')).toEqual([SKIPPED_MAX, OUTPUT_PATH_MAX_CHARS]);
});

/** Names on either side of the control-character rule, and near it. */
const TRICKY_NAMES = [
  'plain.txt',
  'with space',
  'tab\there',
  'new\nline',
  'carriage\rreturn',
  'nul\u0000byte',
  '\u0001start',
  'escape\u001b[31mred',
  'unit-separator\u001f',
  'tilde~',
  'del\u007f',
  'c1-first\u0080',
  'next-line\u0085',
  'c1-csi\u009b2J',
  'c1-last\u009f',
  'nbsp\u00a0',
  'line-separator\u2028',
  'paragraph-separator\u2029',
  'rtl-override\u202e',
  'zero-width\u200b',
  'bom\ufeff',
  'replacement\ufffd',
  'accent-\u00e9',
  'emoji-\u{1F600}',
  'lone-\ud800-surrogate',
];

test("the control-character rule is one: protocol.ts's hasControlCharacter and runner/files.py's has_control_character agree", () => {
  const python: boolean[] = pythonJson('import files\nprint(json.dumps([files.has_control_character(name) for name in json.load(sys.stdin)]))', TRICKY_NAMES);
  const verdicts = (of: (name: string, i: number) => boolean) => Object.fromEntries(TRICKY_NAMES.map((name, i) => [JSON.stringify(name), of(name, i)]));
  expect(verdicts((_, i) => python[i])).toEqual(verdicts((name) => hasControlCharacter(name)));
  // The table has names on both sides of the rule.
  expect(new Set(TRICKY_NAMES.map((name) => hasControlCharacter(name)))).toEqual(new Set([true, false]));
});

test('output files named from the table: the runner skips exactly the names the service refuses as input paths, and readChannel accepts what it sends', () => {
  // What a file can be named: no NUL, valid Unicode.
  const names = TRICKY_NAMES.filter((name) => !name.includes('\u0000') && Buffer.from(name, 'utf8').toString('utf8') === name);
  const refusedAsInput = (name: string) => {
    try {
      checkInputFiles([{ path: `in/${name}`, content: 'x' }], { count: 1, totalBytes: 100, fileBytes: 100, diskBytes: 100 });
      return false;
    } catch (error) {
      return /control character/.test((error as Error).message);
    }
  };
  const limits = { resultMaxBytes: 1000, outputFilesMax: 100, outputFilesMaxBytes: 1000 } as RunLimits;
  const script = ['def main(names):', '    for name in names:', '        with open("out/" + name, "w") as f:', '            f.write("x")'].join('\n');
  const raw: string = pythonJson(
    [
      'import os, tempfile',
      'os.chdir(tempfile.mkdtemp())',
      'job = json.load(sys.stdin)',
      'with tempfile.TemporaryFile() as f:',
      '    runner.run(job, runner.Channel(f.fileno(), 1000))',
      '    f.seek(0)',
      '    sys.stdout.write(json.dumps(f.read().decode("ascii")))',
    ].join('\n'),
    { script, args: { names }, files: [], out: { dir: 'out', max_files: limits.outputFilesMax, max_bytes: limits.outputFilesMaxBytes } },
  );
  const bytes = Buffer.concat([Buffer.from([CONFINED_MARKER]), Buffer.from(raw, 'ascii')]);
  const state = readChannel({ overflowed: false, buffer: () => bytes }, limits);
  if (state.kind !== 'message' || state.message.status !== 'ok') throw new Error(`not an ok message: ${state.kind} ${raw.slice(0, 300)}`);
  const sent = state.message.files!.map((file) => file.path.slice('out/'.length)).sort();
  const skipped = state.message
    .skipped!.filter((entry) => entry.reason === 'name_not_printable')
    .map((entry) => entry.path.slice('out/'.length))
    .sort();
  expect({ sent, skipped }).toEqual({ sent: names.filter((name) => !refusedAsInput(name)).sort(), skipped: names.filter(refusedAsInput).sort() });
  expect(skipped.length).toBeGreaterThan(0);
});

test('an ok message with the most output files and skipped entries of the longest paths is what readChannel accepts, within channelMaxBytes', () => {
  // Paths of 1024 characters that are all emoji (12 bytes each as sent), more links than
  // SKIPPED_MAX, more files than max_files, some over max_bytes; a result of RESULT_MAX_BYTES.
  const limits = { resultMaxBytes: 16, outputFilesMax: 5, outputFilesMaxBytes: 100 } as RunLimits;
  const script = [
    'import os',
    'E = "\\U0001F600"',
    'def main():',
    '    top = "out"',
    '    while len(top) + 64 <= 1020:',
    '        top += "/" + E * 63',
    '    os.makedirs(top)',
    '    for i in range(8):',
    '        with open(f"out/{E * 60}{i}", "wb") as f:',
    '            f.write(bytes([i]) * (i * 7))',
    '    for i in range(150):  # paths of 1024 characters (listed) and of 1025 (cut to 1024)',
    '        os.symlink("/etc/passwd", f"{top}/{i:03d}{E * (57 + i % 2)}")',
    '    return "x" * 14',
  ].join('\n');
  const raw: string = pythonJson(
    [
      'import os, tempfile',
      'os.chdir(tempfile.mkdtemp())',
      'job = json.load(sys.stdin)',
      'with tempfile.TemporaryFile() as f:',
      '    runner.run(job, runner.Channel(f.fileno(), 16))',
      '    f.seek(0)',
      '    sys.stdout.write(json.dumps(f.read().decode("ascii")))',
    ].join('\n'),
    { script, args: {}, files: [], out: { dir: 'out', max_files: limits.outputFilesMax, max_bytes: limits.outputFilesMaxBytes } },
  );
  const bytes = Buffer.concat([Buffer.from([CONFINED_MARKER]), Buffer.from(raw, 'ascii')]);
  const state = readChannel({ overflowed: bytes.length > channelMaxBytes(limits), buffer: () => bytes }, limits);
  if (state.kind !== 'message' || state.message.status !== 'ok') throw new Error(`not an ok message: ${state.kind} ${raw.slice(0, 300)}`);
  const { files, skipped, files_truncated } = state.message;
  expect(files!.map((f) => f.size)).toEqual([0, 7, 14, 21, 28]); // 70 bytes; the next (35) does not fit
  expect(files_truncated).toBe(true);
  expect(skipped).toHaveLength(SKIPPED_MAX);
  expect(new Set(skipped!.map((s) => s.reason))).toEqual(new Set(['path_too_long', 'symlink']));
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
    const state = readChannel(
      { overflowed: bytes.length > smallestResultMaxBytes + CHANNEL_ENVELOPE_BYTES, buffer: () => bytes },
      { resultMaxBytes: smallestResultMaxBytes, outputFilesMax: 0, outputFilesMaxBytes: 0 },
    );
    expect({ case: i, state: state.kind }).toEqual({ case: i, state: 'message' });
    if (state.kind !== 'message' || state.message.status !== 'error') throw new Error(`case ${i}: not an error message`);
    expect({ case: i, type: state.message.error.type }).toEqual({ case: i, type: cases[i][0] });
    if (!cases[i][1].includes('10**5000')) expect(JSON.stringify(state.message.error)).toContain('[shortened: ');
  });
});
