/**
 * Seccomp mode's warm path: the zygote runs on the host as root; each child gets a private
 * directory in the work root, and the files its uid left in world-writable places are removed
 * after the run.
 */
import type { Config } from '../../config';
import type { SandboxFiles } from '../files';
import { removeFilesOfUid } from '../uidReaper';
import { childCommand, zygoteArgv, type WarmBoundary } from '../warm/boundary';
import { removeRunDir } from '../workRoot';
import { hostRunnerPaths, makeWatchedRunDir } from './host';

export function seccompBoundary(config: Config, files: SandboxFiles): WarmBoundary {
  return {
    mode: 'seccomp',
    channelClientUid: 0,
    zygoteLaunch: () => zygoteArgv(config, files.runnerDir, files.warmDir, files.policyFile),
    async placeChild(slot, uid, limits) {
      const dir = await makeWatchedRunDir(config, slot, uid);
      return { command: childCommand(limits, hostRunnerPaths(files, dir.path)), dir };
    },
    async cleanUp(place, uid) {
      await Promise.all([removeFilesOfUid(uid), place.dir ? removeRunDir(place.dir.path) : undefined]);
    },
  };
}
