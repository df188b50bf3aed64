/**
 * shellcheck over every shell script of the repository's deployment and set-up, and over the
 * bash script embedded in cloudbuild.yaml's deploy step. shellcheck must be installed
 * (Debian: apt-get install shellcheck); the test fails loudly when it is not.
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { loadCloudBuild, REPO } from './helpers';

function scripts(dir: string): string[] {
  const abs = path.join(REPO, dir);
  if (!fs.existsSync(abs)) return [];
  return fs
    .readdirSync(abs)
    .filter((f) => f.endsWith('.sh'))
    .map((f) => path.join(dir, f));
}

const files = [...scripts('infra/gcloud'), ...scripts('scripts'), ...scripts('sandbox-image')];

function shellcheck(args: string[]): { status: number | null; output: string } {
  const result = spawnSync('shellcheck', args, { cwd: REPO, encoding: 'utf8', timeout: 30000 });
  if (result.error && (result.error as NodeJS.ErrnoException).code === 'ENOENT') {
    throw new Error('shellcheck is not installed: apt-get install shellcheck');
  }
  if (result.error) throw result.error;
  return { status: result.status, output: `${result.stdout}${result.stderr}` };
}

test('there are scripts to check', () => {
  expect(files).toContain('infra/gcloud/deploy.sh');
});

test.each(files)('shellcheck %s', (file) => {
  const { status, output } = shellcheck(['--external-sources', file]);
  expect(output).toBe('');
  expect(status).toBe(0);
});

test("shellcheck cloudbuild.yaml's deploy step", () => {
  const step = loadCloudBuild().steps.find((s) => s.id === 'deploy');
  expect(step?.entrypoint).toBe('bash');
  const script = step!.args![1].replace(/\$\$/g, '$');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cloudbuild-step-'));
  try {
    const file = path.join(dir, 'deploy-step.sh');
    fs.writeFileSync(file, `#!/usr/bin/env bash\n${script}`);
    const { status, output } = shellcheck([file]);
    expect(output).toBe('');
    expect(status).toBe(0);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
