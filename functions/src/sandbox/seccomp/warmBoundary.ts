/**
 * Seccomp mode's warm path: the zygote runs as root, chrooted into its own copy of the sandbox's
 * root (slots.ts), where the channel socket is too (/sandbox/warm). Each child connects to it,
 * then chroots into its slot's root below (/slots/<n>) while still root, before it takes its
 * run's uid; after the run the slot's /tmp is emptied (slots.ts resetTmp) before the slot forks
 * its next child.
 */
import type { Config } from '../../config';
import { removeFilesOfUid } from '../uidReaper';
import { childCommand, zygoteArgv, type WarmBoundary } from '../warm/boundary';
import { ROOT_POLICY_FILE, ROOT_RUNNER_DIR, ROOT_WARM_DIR, slotRunnerPaths, type SlotRoots } from './slots';

/** chroot(8) of the host: chroots, changes to the new /, and execs the root's interpreter. */
const CHROOT = '/usr/sbin/chroot';

export function seccompBoundary(config: Config, slots: SlotRoots): WarmBoundary {
  return {
    mode: 'seccomp',
    channelClientUid: 0,
    // Both zygotes (full and lean) chroot into the same zygote root: neither writes to it.
    zygoteLaunch: (kind) => [CHROOT, slots.root, ...zygoteArgv(config, ROOT_RUNNER_DIR, ROOT_WARM_DIR, ROOT_POLICY_FILE, kind)],
    async placeChild(slot, uid, limits) {
      await slots.ensureSlot(slot, uid);
      return { command: { ...childCommand(limits, slotRunnerPaths()), root: slots.slotRootInWorld(slot) }, dir: slots.watchedTmp(slot) };
    },
    async cleanUp(place, uid) {
      await removeFilesOfUid(uid);
      await slots.resetTmp(uid - config.sandboxUidBase, uid);
    },
  };
}
