/**
 * What the warm path does differently in each sandbox mode: how its zygote is started, who
 * connects to the channel socket, where a child runs and what is left to clean after it. The pool,
 * the channels and the run itself are the same for both (warmSandbox.ts).
 *
 * seccomp mode: the zygote runs on the host as root; each child gets a private directory in the
 *   work root, and the files its uid left in world-writable places are removed after the run.
 * nsjail mode: the zygote runs in zygote.cfg's jail; each child gets pid, mount, ipc and network
 *   namespaces of its own with a fresh /proc, /tmp and /dev/shm, which vanish with its last process.
 */
import * as path from 'path';
import type { Config } from '../../config';
import type { SandboxFiles } from '../files';
import {
  hostRunnerPaths,
  JAIL_POLICY_FILE,
  JAIL_RUNNER_DIR,
  JAIL_WARM_DIR,
  jailRunnerPaths,
  runnerJobSpec,
  sandboxEnvironment,
  type RunnerPaths,
} from '../job';
import { warmChildMounts } from '../nsjailConfig';
import type { SandboxMode } from '../types';
import { removeFilesOfUid } from '../uidReaper';
import { makeRunDir, removeRunDir } from '../workRoot';
import type { PreforkCommand, ZygoteLaunch } from './zygote';

export const CHANNEL_SOCKET = 'channels.sock';

/** Where one child runs. */
export interface ChildPlace {
  /** What the zygote hands the child, besides its token and uid. */
  command: Omit<PreforkCommand, 'token' | 'uid'>;
  /** seccomp mode: the run's host directory (its size is watched; it is removed after the run). */
  hostDir?: string;
}

export interface WarmBoundary {
  readonly mode: SandboxMode;
  /** The uid children connect to the channel socket as (before they take their run's uid). */
  readonly channelClientUid: number;
  zygoteLaunch(): ZygoteLaunch;
  placeChild(slot: number, uid: number): Promise<ChildPlace>;
  /** After the run, once no process of the uid is left. */
  cleanUp(place: ChildPlace, uid: number): Promise<void>;
}

function childCommand(config: Config, paths: RunnerPaths): ChildPlace['command'] {
  const { limits, confine } = runnerJobSpec(config, paths);
  return { workdir: paths.workdir, environment: sandboxEnvironment(paths.workdir), limits, confine };
}

function zygoteArgv(config: Config, runnerDir: string, socketDir: string, policyFile: string): string[] {
  return [config.sandboxPython, '-I', '-B', '-u', path.join(runnerDir, 'zygote.py'), path.join(socketDir, CHANNEL_SOCKET), policyFile, String(config.zygoteMemoryMb)];
}

export function seccompBoundary(config: Config, files: SandboxFiles): WarmBoundary {
  return {
    mode: 'seccomp',
    channelClientUid: 0,
    zygoteLaunch: () => zygoteArgv(config, files.runnerDir, files.warmDir, files.policyFile),
    async placeChild(slot, uid) {
      const dir = await makeRunDir(config.workRoot, slot, uid);
      return { command: childCommand(config, hostRunnerPaths(files, dir)), hostDir: dir };
    },
    async cleanUp(place, uid) {
      await Promise.all([removeFilesOfUid(uid), place.hostDir ? removeRunDir(place.hostDir) : undefined]);
    },
  };
}

/**
 * The zygote is uid 0 of its jail's user namespace and SANDBOX_UID_BASE-1 outside it; the run
 * slots' uids map to themselves, so the service sees (and kills) a run's processes by the same
 * uid as in every other mode.
 */
export function nsjailBoundary(config: Config, nsjail: { binary: string; zygoteConfig: string }): WarmBoundary {
  const zygoteUid = config.sandboxUidBase - 1;
  const slots = `${config.sandboxUidBase}:${config.sandboxUidBase}:${config.maxConcurrentRuns}`;
  return {
    mode: 'nsjail',
    channelClientUid: zygoteUid,
    zygoteLaunch: () => [
      nsjail.binary,
      '--config', nsjail.zygoteConfig,
      '--user', `0:${zygoteUid}:1`, '--group', `0:${zygoteUid}:1`,
      '--user', slots, '--group', slots,
      '--', ...zygoteArgv(config, JAIL_RUNNER_DIR, JAIL_WARM_DIR, JAIL_POLICY_FILE),
    ],
    async placeChild(_slot, uid) {
      const namespaces = { mounts: warmChildMounts(config, uid), unmount: [JAIL_WARM_DIR] };
      return { command: { ...childCommand(config, jailRunnerPaths()), namespaces } };
    },
    async cleanUp() {
      // The run's /tmp, /dev/shm and namespaces went with its last process.
    },
  };
}
