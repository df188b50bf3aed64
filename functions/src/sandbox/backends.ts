/**
 * The sandbox backends, one folder each (nsjail/, seccomp/). Everything that names the modes
 * (SANDBOX_MODE=auto's choice, the probe's findings, the API's `sandbox` field) derives them from
 * this list, so adding a backend is its folder and one line here.
 */
import type { Config } from '../config';
import type { RunCgroups } from './cgroup/cgroups';
import type { SandboxFiles } from './files';
import { nsjailBackend } from './nsjail';
import { seccompBackend } from './seccomp';
import type { Finding, Sandbox } from './types';
import type { WarmBoundary } from './warm/boundary';

/** What a backend is given to set itself up: the instance's configuration, staged files and cgroups. */
export interface BackendHost {
  config: Config;
  files: SandboxFiles;
  cgroups: RunCgroups | undefined;
}

export interface BackendTrial {
  /** /health's findings: the backend's own under its mode, and any it adds (seccomp: landlock). */
  findings: Record<string, Finding>;
  /** Its cold path, when the trial run succeeded. */
  cold?: Sandbox;
  /** Its warm path's boundary, tried when the backend is chosen and WARM_POOL is on. */
  warm?: WarmBoundary;
}

export interface Backend<Mode extends string = string> {
  readonly mode: Mode;
  /** Its findings before its trial (NOT_TRIED), with their shape: /health shows every backend's, tried or not. */
  readonly notTried: Record<string, Finding>;
  /** Tried even when SANDBOX_MODE names another backend: its findings describe the host. */
  readonly alwaysTried: boolean;
  /** Sets the backend up on this host and proves it with a trial run (trial.ts). */
  trial(host: BackendHost): Promise<BackendTrial>;
}

/** In the order SANDBOX_MODE=auto prefers them. */
export const BACKENDS = [nsjailBackend, seccompBackend] as const;

export type SandboxMode = (typeof BACKENDS)[number]['mode'];

export const SANDBOX_MODES: readonly SandboxMode[] = BACKENDS.map((backend) => backend.mode);
