/**
 * The seccomp backend: the runner as a subprocess under the run slot's own uid, chrooted into the
 * slot's own copy of the sandbox's root, confined by the rlimits, Landlock rules and seccomp
 * policy it applies to itself. Its cold path is coldSandbox.ts, its warm path's boundary
 * warmBoundary.ts, and the slots' roots slots.ts (prepared with the image, or linked at run time:
 * the finding's slot_roots says which).
 */
import type { Backend } from '../backends';
import { LimitedSandbox } from '../limits';
import { trialRun } from '../trial';
import { NOT_TRIED } from '../types';
import { SeccompSandbox } from './coldSandbox';
import { SlotRoots, slotsUnusable } from './slots';
import { seccompBoundary } from './warmBoundary';

export const seccompBackend: Backend<'seccomp'> = {
  mode: 'seccomp',
  notTried: { seccomp: NOT_TRIED, landlock: { ...NOT_TRIED, abi: 0 } },
  // Its trial also finds what every backend's runner applies on this host: seccomp, and Landlock.
  alwaysTried: true,
  async trial({ config, files, cgroups }) {
    const refused = slotsUnusable();
    if (refused) return { findings: { seccomp: { available: false, detail: refused }, landlock: { available: false, abi: 0, detail: 'unknown: the trial run that reports it did not run' } } };
    // The image's prepared roots when it has them (slots.ts), otherwise linked at run time.
    const slots = await SlotRoots.create(config, files);
    const cold = new LimitedSandbox(new SeccompSandbox(config, files, cgroups, slots), config);
    const trial = await trialRun(cold);
    const layers = trial.report.channel.kind === 'message' ? trial.report.channel.message.layers : undefined;
    const abi = layers?.landlock_abi ?? 0;
    return {
      findings: {
        seccomp: { available: trial.ok, detail: trial.detail, slot_roots: slots.source.detail },
        landlock: {
          available: abi > 0,
          abi,
          detail: !layers
            ? 'unknown: the trial run that reports it failed'
            : abi > 0
              ? `Landlock ABI ${abi}: writes only to the run's /tmp, reads only system files of the sandbox's root`
              : 'the kernel offers no Landlock; file access rests on uid permissions',
        },
      },
      cold: trial.ok ? cold : undefined,
      warm: seccompBoundary(config, slots),
    };
  },
};
