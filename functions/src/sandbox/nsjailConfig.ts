/** Renders sandbox-image/nsjail/python.cfg: its {{NAME}} placeholders come from configuration. */
import { promises as fs, rmSync } from 'fs';
import * as path from 'path';
import type { Config } from '../config';
import { sandboxEnvironment } from './job';

export const JAIL_WORKDIR = '/tmp';
export const JAIL_RUNNER_DIR = '/sandbox/runner';
export const JAIL_POLICY_FILE = '/sandbox/seccomp-policy.json';

export function renderNsjailConfig(template: string, config: Config): string {
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
    SANDBOX_DIR: config.sandboxDir,
    ENVARS: envars,
  };
  return template.replace(/\{\{([A-Z_]+)\}\}/g, (match, name: string) => {
    if (!(name in values)) throw new Error(`unknown placeholder ${match} in the nsjail config`);
    return values[name];
  });
}

/** Writes the rendered config where only root can read it; returns its path. */
export async function writeNsjailConfig(config: Config): Promise<string> {
  const template = await fs.readFile(path.join(config.sandboxDir, 'nsjail', 'python.cfg'), 'utf8');
  await fs.mkdir(config.workRoot, { recursive: true, mode: 0o711 });
  const target = path.join(config.workRoot, `nsjail-${process.pid}.cfg`);
  await fs.writeFile(target, renderNsjailConfig(template, config), { mode: 0o600 });
  process.once('exit', () => rmSync(target, { force: true }));
  return target;
}
