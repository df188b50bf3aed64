/**
 * The warm path, in either sandbox mode. A zygote with numpy and pandas imported forks, per run
 * slot, a child that is already confined exactly as a cold run is (its own uid, its own
 * directory or namespaces, the allow-listed environment, rlimits, no_new_privs, Landlock, the
 * seccomp policy) and waits. A request hands it the job; the child runs one script and exits; it
 * is never reused. Its uid's processes are killed before its answer, and its files removed after
 * it, before the slot gets its next child. What differs between the modes is the boundary's
 * (boundary.ts).
 *
 * With WARM_LEAN a second, lean zygote (no numpy, no pandas) forks children confined exactly
 * alike (the same command, limits and policy; only what is already imported differs), which start
 * and exit faster. Each child has the kind of its zygote, each run the kind of its script
 * (scriptKind.ts). A slot refills with the kind of the run it just ran (at start-up: full); a
 * full child runs any script, a lean child only a lean one: given a full script it is discarded
 * (as a child that never ran) and a full one is forked for the run. Admission prefers a slot whose
 * child suits the script (readyFor).
 *
 * A child is confined, and placed in its cgroup, before its run exists: with the configured
 * limits (limits.ts), every run's maxima. A run may ask for less: the service lowers the child's
 * cgroup to the run's limits before the job is sent (a run whose cgroup cannot be lowered fails,
 * it never runs with more), and the child lowers its own rlimits from the job before any user
 * code (the runner).
 */
import { randomUUID } from 'crypto';
import * as path from 'path';
import type { Config } from '../../config';
import { settlesWithin, withDeadline } from '../../deadline';
import type { Logger } from '../../logging';
import { CappedCapture, drainWithin } from '../capture';
import { cgroupLimits, type RunCgroup, type RunCgroups } from '../cgroup/cgroups';
import type { SandboxFiles } from '../files';
import { runLimits, type RunLimits } from '../limits';
import { DRAIN_AFTER_KILL_MS } from '../processRun';
import { channelMaxBytes, readChannel, WARM_READY, warmJob } from '../protocol';
import { RunGuard } from '../runGuard';
import { failedRun, withUsageNote, type RunReport, type RunRequest, type SandboxPath, type WaitingChild } from '../types';
import { allExiting, cleanUpAfterAnswer, killAllOfUid, pidsByUid, processesOfUid, uidReady, uidRefusal } from '../uidReaper';
import { memoryVerdict, usageLimits } from '../usageWatch';
import { CHANNEL_SOCKET, type ChildPlace, type WarmBoundary } from './boundary';
import { ChannelServer, type ChildStreams } from './channelServer';
import { readLine } from './readLine';
import type { ScriptKind } from './scriptKind';
import { Zygote, type ChildExit } from './zygote';

const PREPARE_TIMEOUT_MS = 15000;
/** How long after its answer a run's child may take to be reaped before its uid is killed whole. */
const EXIT_GRACE_MS = 1000;
/** How long shutdown waits for the pool's children to be released. */
const CLOSE_TIMEOUT_MS = 3000;

interface WarmChild {
  /** Whose child it is: the lean zygote's (a standard-library script only) or the full one's (any). */
  kind: ScriptKind;
  token: string;
  uid: number;
  /** The run's own cgroup (where the host has cgroups): the child is moved in before its job. */
  cgroup?: RunCgroup;
  place: ChildPlace;
  streams: ChildStreams;
  exited: Promise<ChildExit>;
}

/**
 * Where a run slot's child is in its life. A slot holds one child at a time and forks the next
 * only once the last has settled, so no two children ever share the slot's uid. A slot with no
 * entry is empty: its next run prepares a child itself (a slot beyond WARM_POOL_SIZE, a failed
 * preparation, a child that died waiting).
 */
type Slot =
  /** Being forked and confined; `done` once it waits (or failed, and the slot is empty). */
  | { state: 'preparing'; done: Promise<void> }
  /** Confined, greeted and in its run's cgroup: the slot's next run takes it. */
  | { state: 'waiting'; child: WarmChild }
  /** Running one request's script. */
  | { state: 'running' }
  /** Its run answered, or it died waiting: being reaped, its uid swept and its files removed; `done` once the slot moved on. */
  | { state: 'settling'; done: Promise<void> };

export class WarmSandbox implements SandboxPath {
  readonly mode: WarmBoundary['mode'];
  readonly path = 'warm' as const;
  private readonly slots = new Map<number, Slot>();
  /** Shut down: slots are emptied, never refilled. */
  private closed = false;
  private readonly channels: ChannelServer;
  /** The full zygote, and with WARM_LEAN the lean one. */
  private readonly zygotes = new Map<ScriptKind, Zygote>();
  /** What children are confined to before their run exists. */
  private readonly limits: RunLimits;

  constructor(
    private readonly config: Config,
    files: SandboxFiles,
    private readonly boundary: WarmBoundary,
    private readonly cgroups: RunCgroups | undefined,
    logger?: Logger,
  ) {
    this.mode = boundary.mode;
    this.limits = runLimits(config);
    this.channels = new ChannelServer(path.join(files.warmDir, CHANNEL_SOCKET), boundary.channelClientUid);
    for (const kind of config.warmLean ? (['full', 'lean'] as const) : (['full'] as const)) {
      const zygote = new Zygote(kind, boundary.zygoteLaunch(kind), logger);
      zygote.onLost = (token) => this.channels.forget(token);
      this.zygotes.set(kind, zygote);
    }
  }

  async start(): Promise<void> {
    if (process.getuid?.() !== 0) throw new Error('the warm pool needs root (to give each child its own uid)');
    await this.channels.start();
    await Promise.all([...this.zygotes.values()].map((zygote) => zygote.start()));
    for (let slot = 0; slot < Math.min(this.config.warmPoolSize, this.config.maxConcurrentRuns); slot++) this.refill(slot, 'full');
  }

  stop(): void {
    for (const zygote of this.zygotes.values()) zygote.stop();
  }

  /**
   * Shutdown: the zygote goes (its waiting children die with it), no slot forks again, and each
   * child's cgroup and place are released before this resolves, so nothing of the pool outlives
   * the service (bounded by CLOSE_TIMEOUT_MS).
   */
  async close(): Promise<void> {
    this.closed = true;
    this.stop();
    for (const [slot, entry] of this.slots) {
      if (entry.state === 'waiting') this.settle(slot, this.discard(entry.child), () => this.slots.delete(slot));
    }
    const deadline = Date.now() + CLOSE_TIMEOUT_MS;
    for (;;) {
      const pending = [...this.slots.values()].flatMap((entry) => (entry.state === 'preparing' || entry.state === 'settling' ? [entry.done] : []));
      if (pending.length === 0 || Date.now() >= deadline) return;
      await settlesWithin(Promise.all(pending), deadline - Date.now());
    }
  }

  /**
   * Children confined and waiting for a job, by slot, with their kind and their pid on the host
   * (for /health and for operators): a waiting child is the only process of its uid. Looked up
   * here, not per run, because it costs a walk of /proc.
   */
  waiting(): WaitingChild[] {
    const waiting = [...this.slots.entries()].flatMap(([slot, entry]) => (entry.state === 'waiting' ? [{ slot, uid: entry.child.uid, kind: entry.child.kind }] : []));
    const pids = pidsByUid(new Set(waiting.map(({ uid }) => uid)));
    return waiting.map(({ slot, uid, kind }) => ({ slot, pid: pids.get(uid)?.[0] ?? -1, kind }));
  }

  /**
   * The slots where a child of the kind a script of this kind runs in is waiting, ready: a run
   * there forks nothing on its way. Admission prefers them; failing that it hands out the least
   * recently used slot, whose child may be of the other kind. Only waiting children count: a slot
   * still settling or preparing would put its refill on the run's path, and preferring it would
   * keep the other slots from ever changing kind (one full slot serving every full script).
   */
  readyFor(kind: ScriptKind): (slot: number) => boolean {
    const wanted = this.childKindFor(kind);
    return (slot) => {
      const entry = this.slots.get(slot);
      return entry?.state === 'waiting' && entry.child.kind === wanted;
    };
  }

  async run(request: RunRequest): Promise<RunReport> {
    // A uid whose processes survived a kill is out of use until they are gone (uidReaper.ts).
    const quarantined = uidRefusal(this.config.sandboxUidBase + request.slot);
    if (quarantined) return failedRun(this.mode, `run slot ${request.slot} refuses runs: ${quarantined}`);
    const kind = this.childKindFor(request.kind);
    let child: WarmChild;
    try {
      child = await this.take(request.slot, kind);
    } catch (error) {
      this.refill(request.slot, kind);
      return failedRun(this.mode, `the warm sandbox could not prepare a child: ${(error as Error).message}`);
    }
    try {
      return { ...(await this.execute(child, request)), warmChild: child.kind };
    } finally {
      // Before the answer: no process of the uid can run any more (execute made sure). After
      // it, off the answer's path, the slot settles: the zygote reaps the child (its address
      // space torn down), a last sweep of the uid, then the run's files are removed. The slot's
      // next run waits for all of it (take: untilTakeable), and so does its next child.
      const reaped = this.reap(child).catch(() => undefined);
      // The slot's next child is of this run's kind: the next script on the slot is likely alike.
      this.settle(
        request.slot,
        reaped.then(() => cleanUpAfterAnswer(child.uid, () => this.boundary.cleanUp(child.place, child.uid))),
        () => this.refill(request.slot, kind),
      );
    }
  }

  /** The kind of child a script of this kind runs in: its own, or full when there is no lean zygote. */
  private childKindFor(kind: ScriptKind): ScriptKind {
    return this.zygotes.has(kind) ? kind : 'full';
  }

  /* ------------------------------------------------------------ a slot's states */

  /**
   * The slot's waiting child when it can run a script of this kind, or a new one of the kind; the
   * slot is running after. A full child runs any script; a lean one given a full script never
   * ran: it is discarded (its uid emptied, its place cleaned) before the new child is forked.
   */
  private async take(slot: number, kind: ScriptKind): Promise<WarmChild> {
    // A last bound: a slot whose previous run could not be cleaned up answers 503, never hangs.
    const limit = 2 * PREPARE_TIMEOUT_MS;
    await withDeadline(this.untilTakeable(slot), limit, `the slot was not free within ${limit} ms`);
    const entry = this.slots.get(slot);
    if (entry?.state === 'waiting' && (entry.child.kind === 'full' || entry.child.kind === kind)) {
      this.slots.set(slot, { state: 'running' });
      return entry.child;
    }
    if (entry?.state === 'waiting') {
      this.slots.set(slot, { state: 'running' }); // first: its death must not settle the slot (waitIn)
      await this.discard(entry.child);
    }
    const child = await this.prepare(slot, kind);
    this.slots.set(slot, { state: 'running' });
    return child;
  }

  /** Resolves once a child waits in the slot or it is empty: preparing and settling end in one of them. */
  private async untilTakeable(slot: number): Promise<void> {
    for (let entry = this.slots.get(slot); entry?.state === 'preparing' || entry?.state === 'settling'; entry = this.slots.get(slot)) await entry.done;
  }

  /** Prepares the slot's next child, of this kind, ahead of its run; slots beyond WARM_POOL_SIZE stay empty. */
  private refill(slot: number, kind: ScriptKind): void {
    if (this.closed || slot >= this.config.warmPoolSize) {
      this.slots.delete(slot);
      return;
    }
    this.prepare(slot, kind).catch(() => undefined); // the slot is left empty: its next run prepares one
  }

  /** Forks the slot's next child of this kind: preparing until it is confined, then waiting (empty if that failed). */
  private prepare(slot: number, kind: ScriptKind): Promise<WarmChild> {
    const child = this.fork(slot, kind);
    const entry: Slot = {
      state: 'preparing',
      done: child.then(
        (ready) => {
          if (this.slots.get(slot) === entry) this.waitIn(slot, ready);
        },
        () => {
          if (this.slots.get(slot) === entry) this.slots.delete(slot);
        },
      ),
    };
    this.slots.set(slot, entry);
    return child;
  }

  /**
   * The child waits in its slot. One that dies waiting (its zygote died, or it was killed) is
   * settled and its slot left empty: a new child is forked for the slot's next run, not sooner,
   * so a zygote that keeps dying is restarted at its own pace.
   */
  private waitIn(slot: number, child: WarmChild): void {
    const entry: Slot = { state: 'waiting', child };
    this.slots.set(slot, entry);
    void child.exited.then(() => {
      if (this.slots.get(slot) === entry) this.settle(slot, this.discard(child), () => this.slots.delete(slot));
    });
  }

  /** The slot settles its child until `work` is over, then moves on to `next`. */
  private settle(slot: number, work: Promise<void>, next: () => void): void {
    const entry: Slot = {
      state: 'settling',
      done: work
        .catch(() => undefined)
        .then(() => {
          if (this.slots.get(slot) === entry) next();
        }),
    };
    this.slots.set(slot, entry);
  }

  /* ------------------------------------------------------------ one child */

  /**
   * Resolves when the child has been reaped and nothing of its uid is left. The answer is sent
   * only once nothing of the run can execute code any more (execute()), so the child's exit is
   * only its address space being torn down; one that is not reaped within EXIT_GRACE_MS is
   * killed whole, so no slot can be held by a run after its answer.
   */
  private async reap(child: WarmChild): Promise<void> {
    await settlesWithin(child.exited, EXIT_GRACE_MS);
    await this.release(child);
    await child.exited;
  }

  /** Kills every process of the child's run (the guard's kill: never rejects; endRun reports survivors). */
  private async killAll(child: Pick<WarmChild, 'uid' | 'cgroup'>): Promise<void> {
    await this.endRun(child);
  }

  /**
   * Kills every process of the child's run: through its cgroup, and by its uid when the cgroup
   * is not empty after that (or there is none). Returns why some survived every kill (their uid
   * is quarantined then: killAllOfUid), or undefined.
   */
  private async endRun(child: Pick<WarmChild, 'uid' | 'cgroup'>): Promise<string | undefined> {
    try {
      if (child.cgroup) {
        await child.cgroup.kill().catch(() => undefined);
        if (child.cgroup.pids().length === 0) return undefined;
      }
      await killAllOfUid(child.uid);
      return undefined;
    } catch (error) {
      return (error as Error).message;
    }
  }

  /**
   * Nothing of the run is left afterwards: every process of its uid is gone and its cgroup
   * removed. When some survive, the uid is quarantined (killAllOfUid throws) and its cgroup is
   * removed once it recovers (its recovery is the first of the uid's cleanups).
   */
  private async release(child: Pick<WarmChild, 'uid' | 'cgroup'>): Promise<void> {
    try {
      await killAllOfUid(child.uid);
    } catch (error) {
      const { cgroup } = child;
      if (cgroup) void cleanUpAfterAnswer(child.uid, () => cgroup.destroy());
      throw error;
    }
    await child.cgroup?.destroy();
  }

  /** The run's processes that have not exited: its cgroup's, or its uid's. */
  private processesOf(child: WarmChild): number[] {
    return child.cgroup ? child.cgroup.pids() : processesOfUid(child.uid);
  }

  /** A child that never ran: released, its streams closed (nothing reads them: a paused socket would never see its end), and its place cleaned. */
  private async discard(child: WarmChild): Promise<void> {
    await this.release(child);
    for (const socket of Object.values(child.streams)) socket.destroy();
    await this.boundary.cleanUp(child.place, child.uid);
  }

  /**
   * The child was confined and cgrouped with this.limits; a run may only ask for less. Its cgroup
   * is lowered to the run's limits here, before its job (its rlimits are lowered by the child
   * itself, from the job). Returns why the run cannot have its limits, or undefined.
   */
  private async lowerTo(child: WarmChild, limits: RunLimits): Promise<string | undefined> {
    const above = (['memoryBytes', 'maxProcesses', 'cpuSeconds', 'maxOpenFiles', 'maxFileBytes'] as const).filter((key) => limits[key] > this.limits[key]);
    if (above.length > 0) return `the run's limits (${above.join(', ')}) are above those the warm children are confined to`;
    if (!child.cgroup || (limits.memoryBytes === this.limits.memoryBytes && limits.maxProcesses === this.limits.maxProcesses)) return undefined;
    try {
      await child.cgroup.lower(cgroupLimits(limits));
      return undefined;
    } catch (error) {
      return `the run's cgroup could not be lowered to its limits: ${(error as Error).message}`;
    }
  }

  /** Forks a child of this kind for the slot; resolves once it is confined, greeted and in its run's cgroup. */
  private async fork(slot: number, kind: ScriptKind): Promise<WarmChild> {
    if (this.closed) throw new Error('the warm pool is shut down'); // a zygote is never started again after close()
    const zygote = this.zygotes.get(kind)!;
    await zygote.start();
    const preloadAllowance = this.preloadAllowance();
    const uid = this.config.sandboxUidBase + slot;
    // The uid's last run (a cold trial run at start-up too) may still be removing its files; a
    // quarantined uid gets no child until its processes are gone.
    const refusal = await uidReady(uid);
    if (refusal) throw new Error(refusal);
    const cgroup = this.cgroups?.create(slot, this.limits);
    const place = await this.boundary.placeChild(slot, uid, this.limits);
    const token = randomUUID();
    const streams = this.channels.expect(token);
    const exited = zygote.prefork({ token, uid, ...place.command, preload_allowance_bytes: preloadAllowance });
    const child: Partial<WarmChild> = { kind, token, uid, cgroup, place, exited };
    const greeted = async () => {
      child.streams = await streams;
      const line = await readLine(child.streams.result, 100);
      if (line !== WARM_READY) throw new Error(`unexpected greeting ${JSON.stringify(line.slice(0, 40))}`);
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

  /**
   * RLIMIT_AS's room for preloading, the same for children of both kinds so their limits are
   * identical: what the full zygote's preloading mapped (zygote.py with_preload). A lean child
   * that imports pandas itself then has the room a full child has. Known once start() is over.
   */
  private preloadAllowance(): number {
    const bytes = this.zygotes.get('full')!.preloadBytes;
    if (bytes === undefined) throw new Error('the full zygote has not reported what its preloading mapped');
    return bytes;
  }

  private async execute(child: WarmChild, request: RunRequest): Promise<RunReport> {
    // Serialized before anything is started for the run: nothing to release if it throws.
    const job = warmJob(request);
    const { limits } = request;
    const refused = await this.lowerTo(child, limits);
    if (refused) {
      // The job is never sent: the child dies without running anything, and is reaped as usual.
      await this.endRun(child);
      for (const socket of Object.values(child.streams)) socket.destroy();
      return failedRun(this.mode, refused);
    }
    const started = process.hrtime.bigint();
    const { stdout, stderr, result } = child.streams;
    const captures = {
      stdout: new CappedCapture(stdout, limits.outputMaxBytes),
      stderr: new CappedCapture(stderr, limits.outputMaxBytes),
      result: new CappedCapture(result, channelMaxBytes(limits)),
    };
    for (const socket of [stdout, stderr, result]) socket.resume();
    const usage = usageLimits(limits, { cgroup: child.cgroup, uid: child.uid, dir: child.place.dir });
    const guard = new RunGuard({ timeoutMs: limits.timeoutMs, signal: request.signal, usage, kill: () => this.killAll(child) });
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
        nothingLeft = readChannel(captures.result, limits).kind === 'message' && allExiting(this.processesOf(child));
        exit = nothingLeft ? { code: 0, signal: null } : await child.exited;
      }
      const wallMs = Number(process.hrtime.bigint() - started) / 1e6;
      guard.stop();
      const survivors = nothingLeft ? undefined : await this.endRun(child); // descendants that outlived the child
      await drainWithin(Object.values(captures), DRAIN_AFTER_KILL_MS);
      for (const socket of [stdout, stderr, result]) socket.destroy();
      if (survivors) return failedRun(this.mode, `the run's processes could not all be killed: ${survivors}; run slot ${request.slot} refuses runs until they are gone`, wallMs);
      const channel = readChannel(captures.result, limits);
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
