/**
 * The warm path, in either sandbox mode. A zygote with numpy and pandas imported forks, per run
 * slot, a child that is already confined exactly as a cold run is (its own uid, its own
 * directory or namespaces, the allow-listed environment, rlimits, no_new_privs, Landlock, the
 * seccomp policy) and waits. A request hands it the job; the child runs one script and exits; it
 * is never reused. Its uid's processes are killed and its files removed before the slot gets its
 * next child. What differs between the modes is the boundary's (boundary.ts).
 */
import { randomUUID } from 'crypto';
import * as path from 'path';
import type { Config } from '../../config';
import { settlesWithin, withDeadline } from '../../deadline';
import type { Logger } from '../../logging';
import { CappedCapture, drainWithin } from '../capture';
import type { RunCgroup, RunCgroups } from '../cgroup/cgroups';
import type { SandboxFiles } from '../files';
import { channelMaxBytes } from '../job';
import { DRAIN_AFTER_KILL_MS, readChannel } from '../processRun';
import { RunGuard } from '../runGuard';
import { failedRun, withUsageNote, type RunReport, type RunRequest, type Sandbox } from '../types';
import { allExiting, killAllOfUid, pidsByUid, processesOfUid } from '../uidReaper';
import { memoryVerdict, runUsageLimits } from '../usageWatch';
import { CHANNEL_SOCKET, type ChildPlace, type WarmBoundary } from './boundary';
import { ChannelServer, type ChildStreams } from './channelServer';
import { readLine } from './readLine';
import { Zygote, type ChildExit } from './zygote';

const PREPARE_TIMEOUT_MS = 15000;
/** How long after its answer a run's child may take to be reaped before its uid is killed whole. */
const EXIT_GRACE_MS = 1000;

interface WarmChild {
  token: string;
  uid: number;
  /** The run's own cgroup (where the host has cgroups): the child is moved in before its job. */
  cgroup?: RunCgroup;
  place: ChildPlace;
  streams: ChildStreams;
  exited: Promise<ChildExit>;
  dead: boolean;
}

export class WarmSandbox implements Sandbox {
  readonly mode: WarmBoundary['mode'];
  readonly path = 'warm' as const;
  private readonly prepared = new Map<number, Promise<WarmChild>>();
  private readonly ready = new Map<number, WarmChild>();
  private readonly channels: ChannelServer;
  private readonly zygote: Zygote;

  constructor(
    private readonly config: Config,
    files: SandboxFiles,
    private readonly boundary: WarmBoundary,
    private readonly cgroups: RunCgroups | undefined,
    logger?: Logger,
  ) {
    this.mode = boundary.mode;
    this.channels = new ChannelServer(path.join(files.warmDir, CHANNEL_SOCKET), boundary.channelClientUid);
    this.zygote = new Zygote(boundary.zygoteLaunch(), logger);
    this.zygote.onLost = (token) => this.channels.forget(token);
  }

  async start(): Promise<void> {
    if (process.getuid?.() !== 0) throw new Error('the warm pool needs root (to give each child its own uid)');
    await this.channels.start();
    await this.zygote.start();
    for (let slot = 0; slot < Math.min(this.config.warmPoolSize, this.config.maxConcurrentRuns); slot++) this.refill(slot);
  }

  stop(): void {
    this.zygote.stop();
  }

  /**
   * Children confined and waiting for a job, by slot, with their pid on the host (for /healthz
   * and for operators): a waiting child is the only process of its uid. Looked up here, not per
   * run, because it costs a walk of /proc.
   */
  waiting(): Array<{ slot: number; pid: number }> {
    const waiting = [...this.ready.entries()].filter(([, child]) => !child.dead);
    const pids = pidsByUid(new Set(waiting.map(([, child]) => child.uid)));
    return waiting.map(([slot, child]) => ({ slot, pid: pids.get(child.uid)?.[0] ?? -1 }));
  }

  async run(request: RunRequest): Promise<RunReport> {
    const uid = this.config.sandboxUidBase + request.slot;
    let child: WarmChild;
    try {
      child = await this.take(request.slot);
    } catch (error) {
      this.refill(request.slot);
      return failedRun(this.mode, `the warm sandbox could not prepare a child: ${(error as Error).message}`);
    }
    try {
      return await this.execute(child, request);
    } finally {
      // Before the answer: no process of the uid can run any more (execute made sure) and its
      // files are gone. After it, the slot's next child waits for the zygote to have reaped
      // this one (its address space torn down) and for a last sweep of the uid.
      await this.boundary.cleanUp(child.place, uid);
      this.refill(request.slot, this.settle(child));
    }
  }

  /**
   * Resolves when the child has been reaped and nothing of its uid is left. The answer is sent
   * only once nothing of the run can execute code any more (execute()), so the child's exit is
   * only its address space being torn down; one that is not reaped within EXIT_GRACE_MS is
   * killed whole, so no slot can be held by a run after its answer.
   */
  private async settle(child: WarmChild): Promise<void> {
    await settlesWithin(child.exited, EXIT_GRACE_MS);
    await this.release(child);
    await child.exited;
  }

  /** Kills every process of the child's run: through its cgroup, or its uid where there is none. */
  private killAll(child: Pick<WarmChild, 'uid' | 'cgroup'>): Promise<void> {
    return child.cgroup ? child.cgroup.kill() : killAllOfUid(child.uid);
  }

  /** Nothing of the run is left afterwards: every process of its uid is gone and its cgroup removed. */
  private async release(child: Pick<WarmChild, 'uid' | 'cgroup'>): Promise<void> {
    await killAllOfUid(child.uid);
    await child.cgroup?.destroy();
  }

  /** The run's processes that have not exited: its cgroup's, or its uid's. */
  private processesOf(child: WarmChild): number[] {
    return child.cgroup ? child.cgroup.pids() : processesOfUid(child.uid);
  }

  private async take(slot: number): Promise<WarmChild> {
    const waiting = this.prepared.get(slot);
    this.prepared.delete(slot);
    this.ready.delete(slot);
    // A last bound: a slot whose previous run could not be cleaned up answers 503, never hangs.
    const limit = 2 * PREPARE_TIMEOUT_MS;
    const child = waiting ? await withDeadline(waiting.catch(() => undefined), limit, `the slot was not free within ${limit} ms`) : undefined;
    if (child && !child.dead) return child;
    if (child) await this.discard(child);
    return this.prepare(slot);
  }

  private refill(slot: number, after: Promise<unknown> = Promise.resolve()): void {
    if (this.prepared.has(slot)) return;
    if (slot >= this.config.warmPoolSize) {
      // No waiting child for this slot, but its next run must still wait for this cleanup.
      const cleaned = after.then(() => Promise.reject(new Error('no waiting child for this slot')));
      cleaned.catch(() => undefined);
      this.prepared.set(slot, cleaned);
      return;
    }
    const preparing = after.catch(() => undefined).then(() => this.prepare(slot));
    preparing.then(
      (child) => {
        if (this.prepared.get(slot) === preparing) this.ready.set(slot, child);
      },
      () => undefined,
    );
    this.prepared.set(slot, preparing);
  }

  private async discard(child: WarmChild): Promise<void> {
    await this.release(child);
    await this.boundary.cleanUp(child.place, child.uid);
  }

  private async prepare(slot: number): Promise<WarmChild> {
    await this.zygote.start();
    const uid = this.config.sandboxUidBase + slot;
    const cgroup = this.cgroups?.create(slot);
    const place = await this.boundary.placeChild(slot, uid);
    const token = randomUUID();
    const streams = this.channels.expect(token);
    const exited = this.zygote.prefork({ token, uid, ...place.command });
    const child: Partial<WarmChild> = { token, uid, cgroup, place, exited, dead: false };
    void exited.then(() => (child.dead = true));
    const greeted = async () => {
      child.streams = await streams;
      const line = await readLine(child.streams.result, 100);
      if (line !== 'ready') throw new Error(`unexpected greeting ${JSON.stringify(line.slice(0, 40))}`);
      // Confined and waiting for its job, no user code yet: the only process of its uid (the
      // slot's previous run was emptied before this child was forked). Into the run's cgroup it
      // goes, and everything it will start with it.
      if (cgroup) {
        const pids = processesOfUid(uid);
        if (pids.length !== 1) throw new Error(`expected one waiting process of uid ${uid}, found ${pids.length}`);
        cgroup.place(pids[0]);
      }
    };
    const died = exited.then((exit) => {
      throw new Error(`the child exited during set-up (code ${exit.code}, signal ${exit.signal})`);
    });
    died.catch(() => undefined); // only the race below looks at it; a later rejection is not unhandled
    try {
      await withDeadline(Promise.race([greeted(), died]), PREPARE_TIMEOUT_MS, `no ready child within ${PREPARE_TIMEOUT_MS} ms`);
    } catch (error) {
      this.channels.forget(token);
      await this.release({ uid, cgroup });
      await this.boundary.cleanUp(place, uid);
      throw error;
    }
    return child as WarmChild;
  }

  private async execute(child: WarmChild, request: RunRequest): Promise<RunReport> {
    // Serialized before anything is started for the run: nothing to release if it throws.
    const job = JSON.stringify({ script: request.script, args: request.args, result_max_bytes: this.config.resultMaxBytes });
    const started = process.hrtime.bigint();
    const { stdout, stderr, result } = child.streams;
    const captures = {
      stdout: new CappedCapture(stdout, this.config.outputMaxBytes),
      stderr: new CappedCapture(stderr, this.config.outputMaxBytes),
      result: new CappedCapture(result, channelMaxBytes(this.config)),
    };
    for (const socket of [stdout, stderr, result]) socket.resume();
    const usage = runUsageLimits(this.config, { cgroup: child.cgroup, uid: child.uid, dir: child.place.hostDir });
    const guard = new RunGuard({ timeoutMs: this.config.scriptTimeoutMs, signal: request.signal, usage, kill: () => this.killAll(child) });
    try {
      result.on('error', () => undefined);
      result.end(job);

      // The run is over when the child has exited, or (sooner) when all three streams are
      // closed, a message arrived, and every process of the run is dead or already exiting.
      const closed = Promise.all(Object.values(captures).map((c) => c.done));
      const first = await Promise.race([child.exited.then((exit) => ({ exit })), closed.then(() => ({ exit: undefined }))]);
      let exit = first.exit;
      let nothingLeft = false;
      if (!exit) {
        nothingLeft = readChannel(captures.result).kind === 'message' && allExiting(this.processesOf(child));
        exit = nothingLeft ? { code: 0, signal: null } : await child.exited;
      }
      const wallMs = Number(process.hrtime.bigint() - started) / 1e6;
      guard.stop();
      if (!nothingLeft) await this.killAll(child); // descendants that outlived the child
      await drainWithin(Object.values(captures), DRAIN_AFTER_KILL_MS);
      for (const socket of [stdout, stderr, result]) socket.destroy();
      const channel = readChannel(captures.result);
      if (exit.lost && channel.kind !== 'message' && !guard.timedOut && !guard.aborted) {
        return failedRun(this.mode, "the warm pool's zygote died during the run, and the run with it; it is being restarted");
      }
      return withUsageNote(
        {
          mode: this.mode,
          channel,
          exitCode: exit.code,
          signal: exit.signal,
          timedOut: guard.timedOut,
          aborted: guard.aborted,
          stdout: captures.stdout.result(),
          stderr: captures.stderr.result(),
          wallMs,
        },
        guard.exceeded ?? memoryVerdict(usage),
      );
    } finally {
      // A kill the guard started (time limit, abort, usage) is over before the slot moves on.
      await guard.finish();
    }
  }
}
