/**
 * The zygote process (sandbox-image/runner/zygote.py): started once, restarted when it dies,
 * asked to fork one pre-confined child per run. It reports each child's exit status.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'child_process';
import * as path from 'path';
import type { Config } from '../../config';
import type { Logger } from '../../logging';
import type { SandboxFiles } from '../files';
import { sandboxEnvironment } from '../job';

export interface ChildExit {
  code: number | null;
  signal: string | null;
  /** The zygote died, and with it (PR_SET_PDEATHSIG) this child: no exit status was seen. */
  lost?: boolean;
}

export interface PreforkCommand {
  token: string;
  uid: number;
  workdir: string;
  environment: Record<string, string>;
  limits: unknown;
  confine: unknown;
}

interface Tracked {
  forked?: (pid: number) => void;
  exited: (exit: ChildExit) => void;
}

const RESTART_DELAY_MS = [100, 500, 2000, 5000];

export class Zygote {
  private process: ChildProcessWithoutNullStreams | undefined;
  private ready: Promise<void> | undefined;
  private readonly children = new Map<string, Tracked>();
  private restarts = 0;
  private stopped = false;
  /** Called for every child still running when the zygote dies (its children die with it). */
  onLost: (token: string) => void = () => undefined;

  constructor(
    private readonly config: Config,
    private readonly files: SandboxFiles,
    private readonly socketPath: string,
    private readonly logger: Logger | undefined,
  ) {}

  start(): Promise<void> {
    if (this.ready) return this.ready;
    const child = spawn(
      this.config.sandboxPython,
      ['-I', '-B', '-u', path.join(this.files.runnerDir, 'zygote.py'), this.socketPath, this.files.policyFile, String(this.config.zygoteMemoryMb)],
      { env: sandboxEnvironment('/nonexistent'), cwd: '/', stdio: ['pipe', 'pipe', 'pipe'] },
    );
    this.process = child;
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => (stderr = (stderr + chunk.toString('utf8')).slice(-4000)));
    this.ready = new Promise((resolve, reject) => {
      let buffer = '';
      child.stdout.on('data', (chunk: Buffer) => {
        buffer += chunk.toString('utf8');
        let newline;
        while ((newline = buffer.indexOf('\n')) >= 0) {
          const line = buffer.slice(0, newline);
          buffer = buffer.slice(newline + 1);
          let event: { event: string; token?: string; pid?: number; code?: number | null; signal?: string | null };
          try {
            event = JSON.parse(line);
          } catch {
            continue;
          }
          if (event.event === 'started') {
            this.restarts = 0;
            resolve();
          } else if (event.event === 'forked' && event.token) {
            this.children.get(event.token)?.forked?.(event.pid ?? -1);
          } else if (event.event === 'exit' && event.token) {
            const tracked = this.children.get(event.token);
            this.children.delete(event.token);
            tracked?.exited({ code: event.code ?? null, signal: event.signal ?? null });
          }
        }
      });
      child.on('error', (error) => reject(error));
      child.on('exit', (code, signal) => {
        reject(new Error(`the zygote exited (code ${code}, signal ${signal}) before it was ready: ${stderr.trim().slice(-500)}`));
        this.lost(`code ${code}, signal ${signal}`, stderr);
      });
    });
    child.stdin.on('error', () => undefined);
    return this.ready;
  }

  /** Forks a child; resolves when it has exited (or the zygote died under it). */
  prefork(command: PreforkCommand): { exited: Promise<ChildExit>; pid: Promise<number> } {
    let forked: (pid: number) => void = () => undefined;
    const pid = new Promise<number>((resolve) => (forked = resolve));
    const exited = new Promise<ChildExit>((resolve) => this.children.set(command.token, { exited: resolve, forked }));
    this.process?.stdin.write(JSON.stringify({ op: 'prefork', ...command }) + '\n');
    return { exited, pid };
  }

  stop(): void {
    this.stopped = true;
    this.process?.stdin.end();
    this.process?.kill('SIGKILL');
  }

  private lost(reason: string, stderr: string): void {
    const orphans = [...this.children.entries()];
    this.children.clear();
    for (const [token, tracked] of orphans) {
      tracked.exited({ code: null, signal: 'SIGKILL', lost: true });
      this.onLost(token);
    }
    this.ready = undefined;
    this.process = undefined;
    if (this.stopped) return;
    const delay = RESTART_DELAY_MS[Math.min(this.restarts, RESTART_DELAY_MS.length - 1)];
    this.restarts++;
    this.logger?.error('the warm-pool zygote died; restarting it', { event: 'zygote_died', reason, stderr_tail: stderr.slice(-500), restart_in_ms: delay });
    setTimeout(() => {
      if (!this.stopped) this.start().catch(() => undefined);
    }, delay).unref();
  }
}
