/** Renders sandbox-image/nsjail/python.cfg: its {{NAME}} placeholders come from configuration. */
import { promises as fs } from 'fs';
import * as path from 'path';
import type { Config } from '../config';
import type { SandboxFiles } from './files';
import { sandboxEnvironment } from './job';

export const JAIL_WORKDIR = '/tmp';
export const JAIL_RUNNER_DIR = '/sandbox/runner';
export const JAIL_POLICY_FILE = '/sandbox/seccomp-policy.json';

export function renderNsjailConfig(template: string, config: Config, sandboxDir: string): string {
  const envars = Object.entries(sandboxEnvironment(JAIL_WORKDIR))
    .map(([key, value]) => `envar: ${JSON.stringify(`${key}=${value}`)}`)
    .join('\n');
  const values: Record<string, string> = {
    TIME_LIMIT_S: String(Math.ceil(config.scriptTimeoutMs / 1000) + 1),
    CPU_S: String(Math.ceil(config.scriptTimeoutMs / 1000)),
    MEMORY_MB: String(config.scriptMemoryMb),
    FILE_MB: String(config.scriptMaxFileMb),
    OPEN_FILES: String(config.scriptMaxOpenFiles),
    PROCESSES: String(config.scriptMaxProcesses),
    TMP_MB: String(config.scriptTmpMb),
    SANDBOX_DIR: sandboxDir,
    ENVARS: envars,
  };
  return template.replace(/\{\{([A-Z_]+)\}\}/g, (match, name: string) => {
    if (!(name in values)) throw new Error(`unknown placeholder ${match} in the nsjail config`);
    return values[name];
  });
}

/** Writes the rendered config (binding the staged runner and policy) where only root can read it. */
export async function writeNsjailConfig(config: Config, files: SandboxFiles): Promise<string> {
  const template = await fs.readFile(files.nsjailTemplate, 'utf8');
  const target = path.join(files.dir, 'nsjail.cfg');
  await fs.writeFile(target, renderNsjailConfig(template, config, files.dir), { mode: 0o600 });
  return target;
}
