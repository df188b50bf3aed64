/**
 * Shared pieces of the attack suite. Every case names its category and the layer expected to stop
 * it in each mode (the test title carries both, so the table in docs/SECURITY.md can be made from
 * a run with `--json`), asserts the secure outcome, then that the service still answers a normal
 * script, and that the canary secret of the service's environment appeared in no answer.
 */
import { promises as fs } from 'fs';
import { CANARY_SECRET, execute, py, startService, type Answer, type RunningService } from '../helpers/service';

export { CANARY_SECRET, execute, py, startService, type Answer, type RunningService };

/** Short limits so exhaustion cases end quickly; caps small enough to observe. */
export const SECURITY_LIMITS = {
  SCRIPT_TIMEOUT_MS: '3000',
  OUTPUT_MAX_BYTES: '65536',
  RESULT_MAX_BYTES: '65536',
  SCRIPT_TMP_MB: '64',
};

export type Layer = string | { seccomp: string; nsjail: string };

export function layerOf(layer: Layer, mode: string): string {
  return typeof layer === 'string' ? layer : (layer as Record<string, string>)[mode];
}

/** A uid base of our own (the helper picks one too, but a test cannot know it). */
export function uidBase(): number {
  return 300000 + Math.floor(Math.random() * 40000) * 64;
}

/** The service still runs a normal script correctly after the attack. */
export async function expectHealthy(service: RunningService): Promise<void> {
  const answer = await execute(service, py('def main():', "    return 'ok'"));
  expect(answer.status).toBe(200);
  expect(answer.body.result).toBe('ok');
  expect(service.process.exitCode).toBeNull();
}

/** Runs an attack script: the canary never appears in the answer. */
export async function attack(service: RunningService, script: string, args?: Record<string, unknown>): Promise<Answer> {
  const answer = await execute(service, script, args);
  expect(answer.text).not.toContain(CANARY_SECRET);
  return answer;
}

/**
 * Registers one attack case: `<category>: <name> [<layer>]`. The body gets the mode; afterwards
 * the service must still be healthy.
 */
export function attackCase(category: string, name: string, layer: Layer, mode: string, getService: () => RunningService, body: () => Promise<void>, timeoutMs?: number): void {
  test(
    `${category}: ${name} [${layerOf(layer, mode)}]`,
    async () => {
      await body();
      await expectHealthy(getService());
    },
    timeoutMs,
  );
}

/** Python helpers prepended to attack scripts: try() reports an outcome as data, never raises. */
export const TRY = py(
  'import errno as _errno, os, ctypes',
  'def attempt(fn):',
  '    try:',
  '        value = fn()',
  "        return {'ok': True, 'value': repr(value)[:300]}",
  '    except BaseException as exc:',
  "        return {'ok': False, 'error': type(exc).__name__, 'errno': _errno.errorcode.get(getattr(exc, 'errno', None) or 0), 'message': str(exc)[:300]}",
  '_libc = ctypes.CDLL(None, use_errno=True)',
  '_libc.syscall.restype = ctypes.c_long',
  'def raw_syscall(nr, *args):',
  '    """A syscall by number; returns 0 or the errno name."""',
  '    ctypes.set_errno(0)',
  '    result = _libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])',
  '    return _errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno())) if result == -1 else result',
);

export { processesWithArgument } from '../helpers/processes';

/** The warm path's pre-forked children, confined and waiting for their (future) run. */
async function waitingChildren(service: RunningService | undefined): Promise<Set<number>> {
  if (!service) return new Set();
  const health = (await (await fetch(`${service.url}/health`)).json()) as { warm_pool?: { children: Array<{ pid: number }> } };
  return new Set((health.warm_pool?.children ?? []).map((child) => child.pid));
}

/**
 * Host processes owned by a uid in [base, base + count). With the service given, the warm
 * path's waiting children are left out: each was forked after the previous run ended, for the
 * next run, and has run nothing yet.
 */
export async function processesOfUids(base: number, count = 64, service?: RunningService): Promise<number[]> {
  const before = await waitingChildren(service);
  const found: number[] = [];
  for (const entry of await fs.readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const { uid } = await fs.stat(`/proc/${entry}`);
      if (uid >= base && uid < base + count) found.push(Number(entry));
    } catch {
      // gone
    }
  }
  const after = await waitingChildren(service);
  return found.filter((pid) => !before.has(pid) && !after.has(pid));
}

/** Host files owned by a uid in [base, base + count) at the top of the world-writable places. */
export async function filesOfUids(base: number, count = 64): Promise<string[]> {
  const found: string[] = [];
  for (const place of ['/tmp', '/var/tmp', '/dev/shm']) {
    for (const entry of await fs.readdir(place).catch(() => [] as string[])) {
      try {
        const { uid } = await fs.lstat(`${place}/${entry}`);
        if (uid >= base && uid < base + count) found.push(`${place}/${entry}`);
      } catch {
        // gone
      }
    }
  }
  return found;
}

export function randomToken(): string {
  return `tok-${Math.random().toString(36).slice(2)}-${Date.now().toString(36)}`;
}

export async function waitFor(predicate: () => Promise<boolean>, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  for (;;) {
    if (await predicate()) return true;
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 50));
  }
}
