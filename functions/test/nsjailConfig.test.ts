/**
 * The jails of sandbox-image/nsjail/ as the service renders them: complete, and a warm child's own
 * mounts the same as a cold run's. (The jails themselves are exercised by every nsjail-mode test.)
 */
import { readFileSync } from 'fs';
import * as path from 'path';
import { loadConfig } from '../src/config';
import { renderNsjailConfig, warmChildMounts } from '../src/sandbox/nsjail/config';
import { REPO } from './helpers/service';

const config = loadConfig({ SCRIPT_TMP_MB: '96', ZYGOTE_MEMORY_MB: '900' });
const files = { dir: '/work/sandbox-1', warmDir: '/work/warm-1' };
const read = (name: string) => readFileSync(path.join(REPO, 'sandbox-image', 'nsjail', name), 'utf8');
const render = (name: string) => renderNsjailConfig(read(name), config, files, read('filesystem.cfg'));

test.each(['python.cfg', 'zygote.cfg'])('%s renders completely, with the shared file system', (name) => {
  const rendered = render(name);
  expect(rendered).not.toMatch(/\{\{/);
  expect(rendered).toContain('dst: "/sandbox/runner"');
  expect(rendered).toContain('src: "/work/sandbox-1/seccomp-policy.json"');
  expect(rendered).toContain('keep_env: false');
});

test('an unknown placeholder is an error, not a silent gap', () => {
  expect(() => renderNsjailConfig('name: "{{NOPE}}"', config, files)).toThrow(/NOPE/);
});

test("a warm child mounts /tmp and /dev/shm with exactly a cold run's options", () => {
  const coldTmpfs = new Map([...render('python.cfg').matchAll(/mount \{ dst: "([^"]+)" fstype: "tmpfs" rw: true options: "([^"]+)"([^}]*)\}/g)].map((m) => [m[1], { options: m[2], rest: m[3] }]));
  const warm = warmChildMounts(config, 60007).filter((mount) => mount.fstype === 'tmpfs');
  expect(warm.map((mount) => mount.target).sort()).toEqual([...coldTmpfs.keys()].sort());
  for (const mount of warm) {
    const cold = coldTmpfs.get(mount.target)!;
    // The warm child adds its owner (nsjail makes a cold run's tmpfs the run's own the same way).
    expect(mount.options).toBe(`${cold.options},uid=60007,gid=60007`);
    for (const flag of ['nosuid', 'nodev', 'noexec'] as const) {
      expect(mount.flags.includes(flag)).toBe(cold.rest.includes(`${flag}: true`));
    }
  }
  expect(warm.find((mount) => mount.target === '/tmp')!.options).toContain('size=96m');
});

test("the zygote's jail keeps only the capabilities forking jailed children takes, and binds the socket directory read-only", () => {
  const rendered = render('zygote.cfg');
  expect([...rendered.matchAll(/^cap: "([A-Z_]+)"/gm)].map((m) => m[1]).sort()).toEqual(['CAP_SETGID', 'CAP_SETPCAP', 'CAP_SETUID', 'CAP_SYS_ADMIN']);
  expect(rendered).not.toMatch(/^keep_caps: true/m);
  expect(rendered).toContain('mount { src: "/work/warm-1" dst: "/sandbox/warm" is_bind: true rw: false');
  expect(rendered).toContain('rlimit_as: 900');
});
