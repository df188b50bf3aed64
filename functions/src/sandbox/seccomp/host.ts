/**
 * Where a seccomp-mode run lives on the host, on either path: the runner and the policy where
 * files.ts staged them, a private directory of its own in the work root, and of /proc only its
 * own entries.
 */
import type { Config } from '../../config';
import type { SandboxFiles } from '../files';
import { MIB } from '../limits';
import type { RunnerPaths } from '../protocol';
import type { WatchedDir } from '../usageWatch';
import { makeRunDir } from '../workRoot';

/**
 * Seccomp mode shares the host's /proc. Landlock keeps the run to its own process directory
 * (/proc/self resolves to the runner's /proc/<pid> when the rule is made; its threads and the
 * directories below it are included) and a few system-wide files libraries read. Listing /proc,
 * and every other process's entries, are refused: a run sees no other run's processes. Children
 * of the runner have another pid and so no /proc/self; what reads it (subprocess's fd scan)
 * falls back.
 */
const PROC_SELF_ONLY = [
  '/proc/self',
  '/proc/cpuinfo',
  '/proc/meminfo',
  '/proc/stat',
  '/proc/loadavg',
  '/proc/uptime',
  '/proc/version',
  '/proc/filesystems',
  '/proc/sys/vm/overcommit_memory',
  '/proc/sys/kernel/osrelease',
  '/proc/sys/kernel/random',
];

export function hostRunnerPaths(files: SandboxFiles, workdir: string): RunnerPaths {
  return { workdir, runnerDir: files.runnerDir, policyFile: files.policyFile, procPaths: PROC_SELF_ONLY };
}

/**
 * The run's private directory, made for its uid (removeRunDir removes it after the run). The
 * usage sampler holds what it holds to SCRIPT_TMP_MB, a per-instance limit as nsjail's /tmp is.
 */
export async function makeWatchedRunDir(config: Config, slot: number, uid: number | undefined): Promise<WatchedDir> {
  return { path: await makeRunDir(config.workRoot, slot, uid), maxBytes: config.scriptTmpMb * MIB };
}
