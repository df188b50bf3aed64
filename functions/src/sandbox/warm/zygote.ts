/**
 * A zygote process (sandbox-image/runner/zygote.py): started once, restarted when it dies,
 * asked to fork one pre-confined child per run. It reports each child's exit status. How it is
 * started (directly, or inside zygote.cfg's jail) is its boundary's business (boundary.ts). The
 * warm path has a full one (numpy and pandas preloaded) and, with WARM_LEAN, a lean one.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'child_process';
import type { Logger } from '../../logging';
import { sandboxEnvironment } from '../protocol';
import type { ScriptKind } from './scriptKind';

export interface ChildExit {
  code: number | null;
  signal: string | null;
  /** The zygote died, and with it (PR_SET_PDEATHSIG) this child: no exit status was seen. */
  lost?: boolean;
}

/** A mount a child makes in its own mount namespace (sandbox-image/runner/namespaces.py). */
export interface ChildMount {
  target: string;
  fstype: string;
  options: string;
  flags: Array<'ro' | 'nosuid' | 'nodev' | 'noexec'>;
}

export interface PreforkCommand {
  token: string;
  uid: number;
  workdir: string;
  environment: Record<string, string>;
  limits: unknown;
  confine: unknown;
  /** RLIMIT_AS's room for what preloading mapped: the full zygote's measure, for children of both kinds (zygote.py with_preload). */
  preload_allowance_bytes: number;
  /** seccomp mode: the slot's root, as the zygote sees it; the child chroots into it while still root. */
  root?: string;
  /** nsjail mode: the child's own pid, mount, ipc and network namespaces, and what it mounts. */
  namespaces?: { mounts: ChildMount[]; unmount: string[] };
}

/** The zygote's command line (argv[0] first). */
export type ZygoteLaunch = string[];

const RESTART_DELAY_MS = [100, 500, 2000, 5000];

export class Zygote {
  private process: ChildProcessWithoutNullStreams | undefined;
  private ready: Promise<void> | undefined;
  private readonly children = new Map<string, (exit: ChildExit) => void>();
  private restarts = 0;
  private stopped = false;
  /** The address space its preloading mapped, as it last reported at start-up. */
  preloadBytes: number | undefined;
  /** Called for every child still running when the zygote dies (its children die with it). */
  onLost: (token: string) => void = () => undefined;

  constructor(
    readonly kind: ScriptKind,
    private readonly launch: ZygoteLaunch,
    private readonly logger: Logger | undefined,
  ) {}

  start(): Promise<void> {
    if (this.ready) return this.ready;
    const [command, ...args] = this.launch;
    const child = spawn(command, args, { env: sandboxEnvironment('/nonexistent'), cwd: '/', stdio: ['pipe', 'pipe', 'pipe'] });
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
          let event: { event: string; token?: string; code?: number | null; signal?: string | null; preload_bytes?: number };
          try {
            event = JSON.parse(line) as typeof event;
          } catch {
            continue;
          }
          if (event.event === 'started') {
            this.restarts = 0;
            this.preloadBytes = event.preload_bytes;
            resolve();
          } else if (event.event === 'exit' && event.token) {
            const exited = this.children.get(event.token);
            this.children.delete(event.token);
            exited?.({ code: event.code ?? null, signal: event.signal ?? null });
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
  prefork(command: PreforkCommand): Promise<ChildExit> {
    const exited = new Promise<ChildExit>((resolve) => this.children.set(command.token, resolve));
    this.process?.stdin.write(JSON.stringify({ op: 'prefork', ...command }) + '\n');
    return exited;
  }

  stop(): void {
    this.stopped = true;
    this.process?.stdin.end();
    this.process?.kill('SIGKILL');
  }

  private lost(reason: string, stderr: string): void {
    const orphans = [...this.children.entries()];
    this.children.clear();
    for (const [token, exited] of orphans) {
      exited({ code: null, signal: 'SIGKILL', lost: true });
      this.onLost(token);
    }
    this.ready = undefined;
    this.process = undefined;
    if (this.stopped) return;
    const delay = RESTART_DELAY_MS[Math.min(this.restarts, RESTART_DELAY_MS.length - 1)];
    this.restarts++;
    this.logger?.error(`the warm-pool's ${this.kind} zygote died; restarting it`, { event: 'zygote_died', zygote: this.kind, reason, stderr_tail: stderr.slice(-500), restart_in_ms: delay });
    setTimeout(() => {
      if (!this.stopped) this.start().catch(() => undefined);
    }, delay).unref();
  }
}
