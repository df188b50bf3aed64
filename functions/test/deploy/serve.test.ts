/**
 * `npm run serve` (scripts/serve.sh) starts the compiled service exactly as the image's CMD does
 * (dockerfile.test.ts checks the two commands are the same). Here it is run for real: it serves,
 * and SIGTERM sent to the started process reaches the service itself (exec, no npm or shell in
 * between), which shuts down cleanly.
 */
import { spawn } from 'child_process';
import { readFileSync } from 'fs';
import * as path from 'path';
import { freePort, REPO } from '../helpers/service';

test('scripts/serve.sh serves /health and exits 0 on SIGTERM', async () => {
  const port = await freePort();
  const child = spawn('bash', [path.join(REPO, 'scripts/serve.sh')], {
    cwd: REPO,
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin', PORT: String(port), SANDBOX_MODE: 'seccomp', WARM_POOL: 'off', NODE_ENV: 'production' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout!.on('data', (d: Buffer) => (output += d.toString('utf8')));
  child.stderr!.on('data', (d: Buffer) => (output += d.toString('utf8')));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  try {
    let health: { status: string; sandbox: { mode: string } } | undefined;
    for (let i = 0; i < 200 && !health; i++) {
      try {
        health = (await (await fetch(`http://127.0.0.1:${port}/health`)).json()) as typeof health;
      } catch {
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    expect(health).toMatchObject({ status: 'ok', sandbox: { mode: 'seccomp' } });
    // exec: the pid bash was started with is now node running the Functions Framework.
    const cmdline = readFileSync(`/proc/${child.pid}/cmdline`, 'utf8').split('\0');
    expect(cmdline[0]).toMatch(/node$/);
    expect(cmdline).toContain('--target=service');
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
    expect(output).toContain('"event":"shutdown_complete"');
  } finally {
    if (child.exitCode === null) child.kill('SIGKILL');
  }
});
