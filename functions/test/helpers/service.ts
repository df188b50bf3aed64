/**
 * Starts the real compiled service the way the image does (scripts/serve.sh's command) on a free
 * port, with real Python in a real sandbox, and talks to it over real HTTP.
 */
import { spawn, type ChildProcess } from 'child_process';
import { accessSync, constants, promises as fsPromises, mkdtempSync, rmSync, statSync } from 'fs';
import * as net from 'net';
import * as os from 'os';
import * as path from 'path';

export const REPO = path.resolve(__dirname, '..', '..', '..');
const MAIN = path.join(REPO, 'node_modules/@google-cloud/functions-framework/build/src/main.js');
/** Set in every test service's environment: it must never appear in any response. */
export const CANARY_SECRET = 'canary-secret-7f3a9c1e52b84d06';

export interface RunningService {
  url: string;
  mode: string;
  process: ChildProcess;
  logs: string[];
  /** Structured log lines (stdout parsed as JSON). */
  logEntries(): Record<string, any>[];
  stop(signal?: NodeJS.Signals): Promise<number | null>;
  exited: Promise<number | null>;
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
    server.on('error', reject);
  });
}

/** The nsjail binary from NSJAIL_PATH or PATH, or undefined. */
export function findNsjail(): string | undefined {
  const candidates = process.env.NSJAIL_PATH ? [process.env.NSJAIL_PATH] : (process.env.PATH ?? '').split(':').map((d) => path.join(d, 'nsjail'));
  for (const candidate of candidates) {
    try {
      accessSync(candidate, constants.X_OK);
      if (statSync(candidate).isFile()) return candidate;
    } catch {
      // not here
    }
  }
  return undefined;
}

/** The path under test, set by the jest project (jest.config.js): 'cold' or 'warm'. */
export function pathUnderTest(): 'cold' | 'warm' {
  return process.env.TEST_SANDBOX_PATH === 'warm' ? 'warm' : 'cold';
}

/**
 * Modes to test, on the path of the jest project: seccomp always; nsjail when present, otherwise
 * a loud skip notice.
 */
export function sandboxModes(): string[] {
  // An unprivileged container cannot create namespaces: only seccomp mode exists there.
  if (unprivileged()) return ['seccomp'];
  const nsjail = findNsjail();
  if (!nsjail) {
    process.stderr.write('\n*** SKIPPING nsjail-mode tests: no nsjail binary (set NSJAIL_PATH or put nsjail on PATH). Only seccomp mode is tested. ***\n\n');
    return ['seccomp'];
  }
  return ['seccomp', 'nsjail'];
}

/** A start-up prefix: the service is PID 1 of a pid namespace of its own (a container without an init), /proc to match; killed with its unshare. */
export const AS_PID_1 = ['unshare', '--pid', '--fork', '--mount-proc', '--kill-child'];

/** The Node process of a service started with AS_PID_1: unshare's only child. */
export async function nodePidOf(service: RunningService): Promise<number> {
  const pid = service.process.pid!;
  return Number((await fsPromises.readFile(`/proc/${pid}/task/${pid}/children`, 'utf8')).trim().split(/\s+/)[0]);
}

/** Zombies whose parent is the given process (nobody reaped them). */
export async function zombiesOf(parent: number): Promise<number[]> {
  const zombies: number[] = [];
  for (const entry of await fsPromises.readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = await fsPromises.readFile(`/proc/${entry}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (fields[0] === 'Z' && Number(fields[1]) === parent) zombies.push(Number(entry));
    } catch {
      // gone
    }
  }
  return zombies;
}

/** The "unprivileged" jest project: every test service runs as in `docker run` without --privileged. */
export function unprivileged(): boolean {
  return process.env.TEST_UNPRIVILEGED === '1';
}

/** Runs a command as an unprivileged container would (helpers/unprivileged.py says how). */
export const UNPRIVILEGED_PREFIX = ['/usr/bin/python3', '-I', path.join(__dirname, 'unprivileged.py')];

export interface StartOptions {
  /** The path to start and expect: default the jest project's (pathUnderTest()). */
  path?: 'cold' | 'warm';
  /** Also accept a service that found no usable sandbox (it answers every run 503): for tests of a refusal. */
  allowNoSandbox?: boolean;
}

/**
 * Starts the service. `prefix` runs it under another command (e.g. `unshare --pid --fork` to make
 * it PID 1 of a namespace of its own, as in a container started without an init).
 */
export async function startService(env: Record<string, string> = {}, mode = 'seccomp', prefix: string[] = [], options: StartOptions = {}): Promise<RunningService> {
  const port = await freePort();
  const nsjail = findNsjail();
  const expectedPath = options.path ?? pathUnderTest();
  const wrapper = unprivileged() ? UNPRIVILEGED_PREFIX : [];
  const [command, ...args] = [...wrapper, ...prefix, process.execPath, MAIN, '--target=service', '--signature-type=http'];
  const workRoot = env.SANDBOX_WORK_ROOT ?? mkdtempSync(path.join(os.tmpdir(), 'pyexec-test-'));
  const child = spawn(command, args, {
    cwd: REPO,
    env: {
      PATH: process.env.PATH ?? '/usr/bin:/bin',
      PORT: String(port),
      SANDBOX_MODE: mode,
      ...(nsjail ? { NSJAIL_PATH: nsjail } : {}),
      SECRET_API_KEY: CANARY_SECRET,
      // A work root of its own: test runs sharing this machine never see each other's files.
      SANDBOX_WORK_ROOT: workRoot,
      // Services started by concurrent test files must never share run uids (a run's cleanup
      // kills every process of its uid).
      SANDBOX_UID_BASE: String(200000 + Math.floor(Math.random() * 50000) * 64),
      WARM_POOL: expectedPath === 'warm' ? 'on' : 'off',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const logs: string[] = [];
  let partial = '';
  child.stdout!.on('data', (chunk: Buffer) => {
    partial += chunk.toString('utf8');
    const lines = partial.split('\n');
    partial = lines.pop() ?? '';
    logs.push(...lines.filter(Boolean));
  });
  child.stderr!.on('data', (chunk: Buffer) => logs.push(`[stderr] ${chunk.toString('utf8')}`));
  let stopping = false;
  const exited = new Promise<number | null>((resolve) =>
    child.on('exit', (code, signal) => {
      // A service that dies on its own is a bug: show why, or the failing tests only say "fetch failed".
      if (!stopping && code !== 0) process.stderr.write(`\n*** test service (${mode}) exited unexpectedly (code ${code}, signal ${signal}); last log lines:\n${logs.slice(-30).join('\n')}\n`);
      resolve(code);
    }),
  );
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 30000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`service exited during start-up:\n${logs.join('\n')}`);
    try {
      const response = await fetch(`${url}/health`);
      const body = (await response.json()) as { sandbox: { mode: string | null; path: string | null } };
      if (options.allowNoSandbox && body.sandbox.mode === null) break;
      if (body.sandbox.mode !== mode || body.sandbox.path !== expectedPath) {
        throw new Error(`service chose mode ${body.sandbox.mode} (${body.sandbox.path}), wanted ${mode} (${expectedPath}): ${JSON.stringify(body.sandbox)}`);
      }
      break;
    } catch (error) {
      if ((error as Error).message.startsWith('service chose')) {
        child.kill('SIGKILL');
        throw error;
      }
      if (Date.now() > deadline) throw new Error(`service did not start:\n${logs.join('\n')}`, { cause: error });
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  return {
    url,
    mode,
    process: child,
    logs,
    logEntries: () =>
      logs.flatMap((line) => {
        try {
          return [JSON.parse(line)];
        } catch {
          return [];
        }
      }),
    // SIGTERM by default, as Cloud Run does, so the service cleans up after itself; SIGKILL if
    // it has not exited within 30 s (a bound for a hung service, not a speed check: on a loaded
    // 2-core host a clean shutdown has taken over 10 s).
    stop: async (signal = 'SIGTERM') => {
      stopping = true;
      if (child.exitCode === null) child.kill(signal);
      const timer = setTimeout(() => child.exitCode === null && child.kill('SIGKILL'), 30000);
      const code = await exited;
      clearTimeout(timer);
      if (!env.SANDBOX_WORK_ROOT) rmSync(workRoot, { recursive: true, force: true });
      return code;
    },
    exited,
  };
}

export interface Answer {
  status: number;
  headers: Headers;
  body: any;
  text: string;
}

export async function request(url: string, init: RequestInit = {}): Promise<Answer> {
  const response = await fetch(url, init);
  const text = await response.text();
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    body = undefined;
  }
  return { status: response.status, headers: response.headers, body, text };
}

export function execute(service: RunningService, script: string, args?: Record<string, unknown>): Promise<Answer> {
  return request(`${service.url}/execute`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(args === undefined ? { script } : { script, args }),
  });
}

/** POST /execute with a whole request body (files, limits). */
export function executeBody(service: RunningService, body: Record<string, unknown>): Promise<Answer> {
  return request(`${service.url}/execute`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
}

/** Python source from lines (keeps test scripts readable). */
export function py(...lines: string[]): string {
  return lines.join('\n') + '\n';
}
