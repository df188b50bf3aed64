/**
 * What the warm path does differently in each backend (its warmBoundary.ts: nsjail/, seccomp/):
 * how its zygote is started, who connects to the channel socket, where a child runs and what is
 * left to clean after it. The pool, the channels and the run itself are the same for all
 * (warmSandbox.ts), and so is what a child is told to confine itself to (childCommand).
 */
import * as path from 'path';
import type { Config } from '../../config';
import type { SandboxMode } from '../backends';
import type { RunLimits } from '../limits';
import { confinement, sandboxEnvironment, type RunnerPaths } from '../protocol';
import type { WatchedDir } from '../usageWatch';
import type { ScriptKind } from './scriptKind';
import type { PreforkCommand, ZygoteLaunch } from './zygote';

export const CHANNEL_SOCKET = 'channels.sock';

/** Where one child runs. */
export interface ChildPlace {
  /** What the zygote hands the child, besides its token and uid. */
  command: Omit<PreforkCommand, 'token' | 'uid' | 'preload_allowance_bytes'>;
  /** seccomp mode: the run's host directory (its size is watched; it is removed after the run). */
  dir?: WatchedDir;
}

export interface WarmBoundary {
  readonly mode: SandboxMode;
  /** The uid children connect to the channel socket as (before they take their run's uid). */
  readonly channelClientUid: number;
  /** The command line of the zygote of this kind: both live alike, only their preload differs. */
  zygoteLaunch(kind: ScriptKind): ZygoteLaunch;
  /** Where the slot's next child runs, confined to these limits. */
  placeChild(slot: number, uid: number, limits: RunLimits): Promise<ChildPlace>;
  /** After the run, once no process of the uid is left. */
  cleanUp(place: ChildPlace, uid: number): Promise<void>;
}

/** A child's confinement, as a cold run's job carries it (protocol.ts), and its environment. */
export function childCommand(limits: RunLimits, paths: RunnerPaths): ChildPlace['command'] {
  const { limits: rlimits, confine } = confinement(limits, paths);
  return { workdir: paths.workdir, environment: sandboxEnvironment(paths.workdir), limits: rlimits, confine };
}

/** A zygote's command line (sandbox-image/runner/zygote.py), with its paths as the zygote sees them; the lean one without numpy and pandas. */
export function zygoteArgv(config: Config, runnerDir: string, socketDir: string, policyFile: string, kind: ScriptKind): string[] {
  const argv = [config.sandboxPython, '-I', '-B', '-u', path.join(runnerDir, 'zygote.py'), path.join(socketDir, CHANNEL_SOCKET), policyFile, String(config.zygoteMemoryMb)];
  return kind === 'lean' ? [...argv, '--lean'] : argv;
}
