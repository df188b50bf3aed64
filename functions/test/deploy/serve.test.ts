/**
 * `npm run serve` (scripts/serve.sh) starts the compiled service exactly as the image's CMD does
 * (dockerfile.test.ts checks the two commands, and the allocator settings, are the same). Here it is
 * run for real: it serves, and SIGTERM sent to the started process reaches the service itself
 * (exec, no npm or shell in between), which shuts down cleanly. The service runs on jemalloc
 * (LD_PRELOAD, MALLOC_CONF), and none of the sandbox's processes (the cold path's launcher, the warm
 * path's zygote and children, the scripts) inherits those: a script's environment is the allow-list.
 */
import { spawn } from 'child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'fs';
import * as os from 'os';
import * as path from 'path';
import { freePort, REPO } from '../helpers/service';

/** Every descendant of pid, from /proc/<n>/stat. */
function descendants(pid: number): number[] {
  const parents = new Map<number, number>();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      parents.set(Number(entry), Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]));
    } catch {
      // gone
    }
  }
  const out: number[] = [];
  const frontier = [pid];
  while (frontier.length) {
    const parent = frontier.pop()!;
    for (const [child, ppid] of parents) {
      if (ppid !== parent) continue;
      out.push(child);
      frontier.push(child);
    }
  }
  return out;
}

/** The environment variable names of a process, or undefined when it is gone. */
function environmentOf(pid: number): string[] | undefined {
  try {
    return readFileSync(`/proc/${pid}/environ`, 'utf8')
      .split('\0')
      .filter(Boolean)
      .map((pair) => pair.split('=')[0]);
  } catch {
    return undefined;
  }
}

/** A process's command line, for messages. */
function commandOf(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ').trim().slice(0, 200);
  } catch {
    return '(gone)';
  }
}

/** A process's real uid, or 0 when it is gone. */
function uidOf(pid: number): number {
  try {
    return Number(/^Uid:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0);
  } catch {
    return 0;
  }
}

const ALLOCATOR = ['LD_PRELOAD', 'MALLOC_CONF'];

describe.each(['cold', 'warm'])('scripts/serve.sh, %s path', (pathName) => {
  test("serves /health on jemalloc, keeps it from the sandbox's processes and scripts, and exits 0 on SIGTERM", async () => {
    const port = await freePort();
    const workRoot = mkdtempSync(path.join(os.tmpdir(), 'pyexec-serve-test-'));
    const child = spawn('bash', [path.join(REPO, 'scripts/serve.sh')], {
      cwd: REPO,
      env: {
        PATH: process.env.PATH ?? '/usr/bin:/bin',
        PORT: String(port),
        SANDBOX_MODE: 'seccomp',
        WARM_POOL: pathName === 'warm' ? 'on' : 'off',
        NODE_ENV: 'production',
        SANDBOX_WORK_ROOT: workRoot,
        SANDBOX_UID_BASE: String(200000 + Math.floor(Math.random() * 50000) * 64),
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    child.stdout!.on('data', (d: Buffer) => (output += d.toString('utf8')));
    child.stderr!.on('data', (d: Buffer) => (output += d.toString('utf8')));
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    try {
      let health: { status: string; sandbox: { mode: string; path: string } } | undefined;
      for (let i = 0; i < 300 && !health; i++) {
        try {
          health = (await (await fetch(`http://127.0.0.1:${port}/health`)).json()) as typeof health;
        } catch {
          await new Promise((r) => setTimeout(r, 100));
        }
      }
      expect(health).toMatchObject({ status: 'ok', sandbox: { mode: 'seccomp', path: pathName } });
      const pid = child.pid!;
      // exec: the pid bash was started with is now node running the Functions Framework.
      const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
      expect(cmdline[0]).toMatch(/node$/);
      expect(cmdline).toContain('--target=service');
      // jemalloc is loaded into the service (set-up installs libjemalloc2), with its settings.
      expect(readFileSync(`/proc/${pid}/maps`, 'utf8')).toMatch(/\/libjemalloc\.so\.2\n/);
      expect(environmentOf(pid)).toEqual(expect.arrayContaining(ALLOCATOR));
      expect(output).not.toContain('cannot be loaded');

      // A script that returns its environment, and lives long enough for the service's
      // descendants (launcher or zygote, runner, script) to be looked at meanwhile.
      const script = ['import os, time', 'def main():', '    time.sleep(1.5)', '    return dict(os.environ)', ''].join('\n');
      const answer = fetch(`http://127.0.0.1:${port}/execute`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ script }) });
      const seen = new Map<number, string[]>();
      for (let i = 0; i < 10; i++) {
        for (const p of descendants(pid)) {
          const names = environmentOf(p);
          const command = commandOf(p);
          // The sandbox's side: Python (launcher, zygote, runner, script) or a run uid. The service's
          // host helpers (cp, du, flock, ...) inherit its environment, harmlessly.
          if (names && (/python/.test(command) || uidOf(p) !== 0)) seen.set(p, [command, ...names]);
        }
        await new Promise((r) => setTimeout(r, 100));
      }
      const response = await answer;
      const text = await response.text();
      expect(response.status).toBe(200);
      const environment = (JSON.parse(text) as { result: Record<string, string> }).result;
      expect(Object.keys(environment)).toEqual(expect.arrayContaining(['PATH', 'HOME']));
      for (const name of ALLOCATOR) expect(Object.keys(environment)).not.toContain(name);
      expect(text).not.toMatch(/jemalloc|background_thread/);
      expect(seen.size).toBeGreaterThan(0);
      for (const [p, [command, ...names]] of seen) expect({ pid: p, command, allocator: names.filter((n) => ALLOCATOR.includes(n)) }).toEqual({ pid: p, command, allocator: [] });

      child.kill('SIGTERM');
      expect(await exited).toBe(0);
      expect(output).toContain('"event":"shutdown_complete"');
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
      rmSync(workRoot, { recursive: true, force: true });
    }
  }, 90000);
});
