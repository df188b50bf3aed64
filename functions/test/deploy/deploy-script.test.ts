/**
 * infra/gcloud/deploy.sh, run against a stub gcloud: what it creates, that it grants the runtime
 * account nothing, and that it deploys with exactly the flags of cloudbuild.yaml's deploy step.
 */
import { parse as parseYaml } from 'yaml';
import { CloudBuild, dictFlag, flags, loadCloudBuild, removeStub, repoFile, runCloudBuildDeploy, runDeployArgs, runWithStub, StubRun } from './helpers';

const BASE = { PROJECT_ID: 'test-project', TAG: 't1', BUILD: 'none' };

function deploy(settings: Record<string, string> = {}, env: Record<string, string> = {}): StubRun {
  const args = Object.entries({ ...BASE, ...settings }).map(([k, v]) => `${k}=${v}`);
  return runWithStub('bash', ['infra/gcloud/deploy.sh', ...args], env);
}

function callsOf(run: StubRun, ...prefix: string[]): string[][] {
  return run.calls.filter((c) => prefix.every((p, i) => c[i] === p));
}

let cb: CloudBuild;
beforeAll(() => {
  cb = loadCloudBuild();
});
afterAll(removeStub);

test('deploys with the same gcloud run deploy arguments as cloudbuild.yaml', () => {
  const script = deploy();
  expect(script.status).toBe(0);
  const build = runCloudBuildDeploy(cb, { _TAG: 't1' });
  expect(build.status).toBe(0);
  expect(runDeployArgs(script)).toEqual(runDeployArgs(build));

  // And they keep agreeing when the settings change.
  const changed = { MAX_CONCURRENT_RUNS: '3', MEMORY_MIB: '4096', CPU: '4', SCRIPT_TIMEOUT_MS: '30000', SANDBOX_MODE: 'nsjail', ALLOW_UNAUTHENTICATED: 'true' };
  const script2 = deploy(changed);
  const build2 = runCloudBuildDeploy(cb, { _TAG: 't1', ...Object.fromEntries(Object.entries(changed).map(([k, v]) => [`_${k}`, v])) });
  expect(runDeployArgs(script2)).toEqual(runDeployArgs(build2));
});

test('defaults equal cloudbuild.yaml substitutions', () => {
  const f = flags(runDeployArgs(deploy()));
  const envVars = dictFlag(f.get('--set-env-vars'));
  expect(f.get('--concurrency')).toBe(cb.substitutions._MAX_CONCURRENT_RUNS);
  expect(envVars.MAX_CONCURRENT_RUNS).toBe(cb.substitutions._MAX_CONCURRENT_RUNS);
  expect(f.get('--execution-environment')).toBe('gen2');
  expect(f.get('--no-allow-unauthenticated')).toBe(true);
  expect(f.get('--image')).toBe('us-central1-docker.pkg.dev/test-project/python-exec/python-exec:t1');
});

test('creates the repository and a service account with no roles when they are missing', () => {
  const run = deploy({}, { STUB_EXISTS: '0' });
  expect(run.status).toBe(0);
  expect(callsOf(run, 'services', 'enable').length).toBe(1);
  expect(callsOf(run, 'services', 'enable')[0]).toEqual(expect.arrayContaining(['run.googleapis.com', 'artifactregistry.googleapis.com']));
  const repo = callsOf(run, 'artifacts', 'repositories', 'create');
  expect(repo.length).toBe(1);
  expect(repo[0]).toEqual(expect.arrayContaining(['python-exec', '--repository-format=docker', '--location=us-central1']));
  const sa = callsOf(run, 'iam', 'service-accounts', 'create');
  expect(sa.length).toBe(1);
  expect(sa[0][3]).toBe('python-exec-runtime');
  // Nothing is ever granted to anyone at project level, and the only IAM change is run.invoker.
  const grants = run.calls.filter((c) => c.some((a) => /add-iam-policy-binding|set-iam-policy/.test(a)));
  expect(grants).toEqual([]);
});

test('leaves existing resources alone (idempotent)', () => {
  const run = deploy();
  expect(run.status).toBe(0);
  expect(callsOf(run, 'artifacts', 'repositories', 'create')).toEqual([]);
  expect(callsOf(run, 'iam', 'service-accounts', 'create')).toEqual([]);
});

test('refuses to deploy when the runtime service account has been granted roles', () => {
  const run = deploy({}, { STUB_ROLES: 'roles/editor\n' });
  expect(run.status).not.toBe(0);
  expect(run.stderr).toMatch(/roles\/editor/);
  expect(callsOf(run, 'run', 'deploy')).toEqual([]);
});

test('invokers get roles/run.invoker on the service; allUsers only through ALLOW_UNAUTHENTICATED', () => {
  const run = deploy({ INVOKERS: 'user:a@example.com,serviceAccount:c@p.iam.gserviceaccount.com' });
  expect(run.status).toBe(0);
  const bindings = callsOf(run, 'run', 'services', 'add-iam-policy-binding');
  expect(bindings.map((b) => flags(b).get('--member'))).toEqual(['user:a@example.com', 'serviceAccount:c@p.iam.gserviceaccount.com']);
  for (const b of bindings) expect(flags(b).get('--role')).toBe('roles/run.invoker');

  const everyone = deploy({ INVOKERS: 'allUsers' });
  expect(everyone.status).not.toBe(0);
  expect(everyone.stderr).toMatch(/ALLOW_UNAUTHENTICATED/);
  expect(callsOf(everyone, 'run', 'deploy')).toEqual([]);
});

test('builds with cloudbuild.yaml (deploy step off) using only substitutions it declares', () => {
  const run = deploy({ BUILD: 'cloudbuild' });
  expect(run.status).toBe(0);
  const submits = callsOf(run, 'builds', 'submit');
  expect(submits.length).toBe(1);
  const f = flags(submits[0]);
  expect(f.get('--config')).toBe('cloudbuild.yaml');
  expect(f.get('--ignore-file')).toBe('infra/gcloud/gcloudignore');
  expect(repoFile('infra/gcloud/gcloudignore')).toMatch(/tfstate/);
  const subs = dictFlag(f.get('--substitutions'));
  expect(subs._DEPLOY).toBe('false');
  expect(subs._TAG).toBe('t1');
  const declared = Object.keys((parseYaml(repoFile('cloudbuild.yaml')) as CloudBuild).substitutions);
  for (const key of Object.keys(subs)) expect(declared).toContain(key);
  // The image it builds is the image it deploys.
  const image = `${subs._REGION}-docker.pkg.dev/test-project/${subs._REPOSITORY}/${subs._SERVICE}:${subs._TAG}`;
  expect(flags(runDeployArgs(run)).get('--image')).toBe(image);
  // Built before deployed.
  const order = run.calls.map((c) => `${c[0]} ${c[1]}`);
  expect(order.indexOf('builds submit')).toBeLessThan(order.indexOf('run deploy'));
});

test('rejects settings that cannot work before touching the project', () => {
  const bads: Array<Record<string, string>> = [{ MAX_CONCURRENT_RUNS: '5' }, { SANDBOX_MODE: 'off' }, { SHUTDOWN_GRACE_MS: '15000' }, { CPU: 'two' }, { NOPE: '1' }];
  for (const bad of bads) {
    const run = deploy(bad);
    expect({ bad, status: run.status === 0 ? 'succeeded' : 'failed', calls: run.calls.length }).toEqual({ bad, status: 'failed', calls: 0 });
  }
});
