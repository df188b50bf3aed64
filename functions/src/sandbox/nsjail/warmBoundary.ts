/**
 * nsjail mode's warm path: the zygote runs in zygote.cfg's jail; each child gets pid, mount, ipc
 * and network namespaces of its own with a fresh /proc, /tmp and /dev/shm, which vanish with its
 * last process.
 *
 * The zygote is uid 0 of its jail's user namespace and SANDBOX_UID_BASE-1 outside it; the run
 * slots' uids map to themselves, so the service sees (and kills) a run's processes by the same
 * uid as in every other mode.
 */
import type { Config } from '../../config';
import { childCommand, zygoteArgv, type WarmBoundary } from '../warm/boundary';
import { warmChildMounts } from './config';
import { JAIL_POLICY_FILE, JAIL_RUNNER_DIR, JAIL_WARM_DIR, jailRunnerPaths } from './jail';

export function nsjailBoundary(config: Config, nsjail: { binary: string; zygoteConfig: string }): WarmBoundary {
  const zygoteUid = config.sandboxUidBase - 1;
  const slots = `${config.sandboxUidBase}:${config.sandboxUidBase}:${config.maxConcurrentRuns}`;
  return {
    mode: 'nsjail',
    channelClientUid: zygoteUid,
    // One jail per zygote: the full one and the lean one live side by side, alike.
    zygoteLaunch: (kind) => [
      nsjail.binary,
      '--config',
      nsjail.zygoteConfig,
      '--user',
      `0:${zygoteUid}:1`,
      '--group',
      `0:${zygoteUid}:1`,
      '--user',
      slots,
      '--group',
      slots,
      '--',
      ...zygoteArgv(config, JAIL_RUNNER_DIR, JAIL_WARM_DIR, JAIL_POLICY_FILE, kind),
    ],
    async placeChild(_slot, uid, limits) {
      const namespaces = { mounts: warmChildMounts(config, uid), unmount: [JAIL_WARM_DIR] };
      return { command: { ...childCommand(limits, jailRunnerPaths()), namespaces } };
    },
    async cleanUp() {
      // The run's /tmp, /dev/shm and namespaces went with its last process.
    },
  };
}
