/**
 * Renders the jails of sandbox-image/nsjail/: python.cfg (a cold run) and zygote.cfg (the warm
 * pool's zygote), each with filesystem.cfg in place of {{FILESYSTEM}} and every other {{NAME}}
 * from configuration. They are rendered once per instance, so they hold only what is the same for
 * every run; a cold run's own limits are flags on its command line (jail.ts).
 */
import { promises as fs } from 'fs';
import * as path from 'path';
import type { Config } from '../../config';
import type { SandboxFiles } from '../files';
import { sandboxEnvironment } from '../protocol';
import type { ChildMount } from '../warm/zygote';
import { JAIL_WORKDIR } from './jail';

export interface NsjailConfigFiles {
  /** The jail of one cold run. */
  run: string;
  /** The jail of the warm pool's zygote. */
  zygote: string;
}

/**
 * What a warm child mounts in its own mount namespace: the same /proc, /tmp and /dev/shm that
 * python.cfg gives a cold run (a test holds the two to the same options), owned by the run's
 * uid as a cold run's are.
 */
export function warmChildMounts(config: Config, uid: number): ChildMount[] {
  const owner = `uid=${uid},gid=${uid}`;
  return [
    { target: '/proc', fstype: 'proc', options: '', flags: ['ro', 'nosuid', 'nodev', 'noexec'] },
    { target: JAIL_WORKDIR, fstype: 'tmpfs', options: `size=${config.scriptTmpMb}m,nr_inodes=10000,mode=1777,${owner}`, flags: ['nosuid', 'nodev'] },
    { target: '/dev/shm', fstype: 'tmpfs', options: `size=16m,nr_inodes=1000,mode=1777,${owner}`, flags: ['nosuid', 'nodev', 'noexec'] },
  ];
}

export function renderNsjailConfig(template: string, config: Config, files: Pick<SandboxFiles, 'dir' | 'warmDir'>, filesystem = ''): string {
  const envars = Object.entries(sandboxEnvironment(JAIL_WORKDIR))
    .map(([key, value]) => `envar: ${JSON.stringify(`${key}=${value}`)}`)
    .join('\n');
  const values: Record<string, string> = {
    ZYGOTE_MEMORY_MB: String(config.zygoteMemoryMb),
    FILE_MB: String(config.scriptMaxFileMb),
    OPEN_FILES: String(config.scriptMaxOpenFiles),
    TMP_MB: String(config.scriptTmpMb),
    SANDBOX_DIR: files.dir,
    SANDBOX_ROOTFS: config.sandboxRootfs,
    WARM_DIR: files.warmDir,
    ENVARS: envars,
  };
  const substitute = (text: string): string =>
    text.replace(/\{\{([A-Z_]+)\}\}/g, (match, name: string) => {
      if (!(name in values)) throw new Error(`unknown placeholder ${match} in the nsjail config`);
      return values[name];
    });
  return substitute(template.replace('{{FILESYSTEM}}', () => filesystem));
}

/**
 * Writes both rendered configs (binding the staged runner and policy) where only root can read
 * them. The templates are read from SANDBOX_DIR's nsjail/, by the service (root) only.
 */
export async function writeNsjailConfigs(config: Config, files: SandboxFiles): Promise<NsjailConfigFiles> {
  const read = (name: string) => fs.readFile(path.join(config.sandboxDir, 'nsjail', name), 'utf8');
  const filesystem = await read('filesystem.cfg');
  const written = { run: path.join(files.dir, 'nsjail.cfg'), zygote: path.join(files.dir, 'zygote.cfg') };
  await fs.writeFile(written.run, renderNsjailConfig(await read('python.cfg'), config, files, filesystem), { mode: 0o600 });
  await fs.writeFile(written.zygote, renderNsjailConfig(await read('zygote.cfg'), config, files, filesystem), { mode: 0o600 });
  return written;
}
