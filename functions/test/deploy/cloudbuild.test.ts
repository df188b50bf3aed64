/**
 * cloudbuild.yaml: parsed with `yaml`, substituted the way Cloud Build does for a manual
 * `gcloud builds submit`, and its deploy step executed against a stub gcloud.
 */
import { buildValues, CloudBuild, dictFlag, flags, loadCloudBuild, MANUAL_BUILTINS, removeStub, runCloudBuildDeploy, runDeployArgs, substitute } from './helpers';

let cb: CloudBuild;
const IMAGE_TEMPLATE = '${_REGION}-docker.pkg.dev/$PROJECT_ID/${_REPOSITORY}/${_SERVICE}:${_TAG}';

beforeAll(() => {
  cb = loadCloudBuild();
});
afterAll(removeStub);

function step(id: string) {
  const found = cb.steps.find((s) => s.id === id);
  if (!found) throw new Error(`no step ${id}`);
  return found;
}

describe('build and push', () => {
  test('the steps are build, push, deploy, in that order', () => {
    expect(cb.steps.map((s) => s.id)).toEqual(['build', 'push', 'deploy']);
  });

  test('build uses sandbox-image/Dockerfile with the repository root as context', () => {
    const build = step('build');
    expect(build.name).toMatch(/^gcr\.io\/cloud-builders\/docker/);
    const args = build.args ?? [];
    expect(args[0]).toBe('build');
    expect(args[args.indexOf('-f') + 1]).toBe('sandbox-image/Dockerfile');
    expect(args[args.indexOf('-t') + 1]).toBe(IMAGE_TEMPLATE);
    expect(args[args.length - 1]).toBe('.');
  });

  test('push and images name the same Artifact Registry image', () => {
    expect(step('push').args).toEqual(['push', IMAGE_TEMPLATE]);
    expect(cb.images).toEqual([IMAGE_TEMPLATE]);
  });

  test('a manual build (empty $COMMIT_SHA) still gets a valid, unique tag', () => {
    const tagDefault = cb.substitutions._TAG;
    expect(tagDefault).toBeDefined();
    expect(tagDefault).not.toMatch(/^\$\{?(COMMIT_SHA|SHORT_SHA|REVISION_ID)\}?$/);
    if (/\$/.test(tagDefault)) expect(cb.options?.dynamicSubstitutions).toBe(true);
    const image = substitute(IMAGE_TEMPLATE, buildValues(cb));
    expect(image).toMatch(/^us-central1-docker\.pkg\.dev\/test-project\/[a-z0-9-]+\/[a-z0-9-]+:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/);
    const other = substitute(IMAGE_TEMPLATE, buildValues(cb, {}, { ...MANUAL_BUILTINS, BUILD_ID: 'another-build' }));
    expect(other).not.toBe(image);
  });

  test('every declared substitution is used and every used one declared (Cloud Build fails otherwise)', () => {
    const used = new Set<string>();
    const text = JSON.stringify({ steps: cb.steps, images: cb.images });
    for (const m of text.replace(/\$\$/g, '').matchAll(/\$\{?(_[A-Z0-9_]+)/g)) used.add(m[1]);
    expect([...used].sort()).toEqual(Object.keys(cb.substitutions).sort());
  });
});

describe('deploy step', () => {
  test('defaults: gen2, locked down, concurrency equal to MAX_CONCURRENT_RUNS, timeout above the script limit', () => {
    const run = runCloudBuildDeploy(cb);
    expect(run.stderr).toBe('');
    expect(run.status).toBe(0);
    const args = runDeployArgs(run);
    const f = flags(args);
    expect(args[2]).toBe('python-exec');
    expect(f.get('--execution-environment')).toBe('gen2');
    expect(f.get('--no-allow-unauthenticated')).toBe(true);
    expect(f.has('--allow-unauthenticated')).toBe(false);
    expect(f.get('--service-account')).toBe('python-exec-runtime@test-project.iam.gserviceaccount.com');
    expect(f.get('--image')).toBe(substitute(IMAGE_TEMPLATE, buildValues(cb)));

    const envVars = dictFlag(f.get('--set-env-vars'));
    expect(f.get('--concurrency')).toBe(envVars.MAX_CONCURRENT_RUNS);
    expect(envVars.MAX_CONCURRENT_RUNS).toBe(cb.substitutions._MAX_CONCURRENT_RUNS);
    expect(envVars.SANDBOX_MODE).toBe('auto');
    expect(envVars.GOOGLE_CLOUD_PROJECT).toBe('test-project');

    const timeoutS = Number(f.get('--timeout'));
    expect(timeoutS * 1000).toBeGreaterThan(Number(envVars.SCRIPT_TIMEOUT_MS) + Number(envVars.MAX_QUEUE_WAIT_MS));
    expect(timeoutS).toBeLessThanOrEqual(3600);

    expect(f.get('--cpu')).toBe(cb.substitutions._CPU);
    expect(f.get('--memory')).toBe(`${cb.substitutions._MEMORY_MIB}Mi`);
    expect(dictFlag(f.get('--startup-probe'))['httpGet.path']).toBe('/health?deep=1');
    expect(Number(envVars.MAX_CONCURRENT_RUNS) * Number(envVars.SCRIPT_MEMORY_MB)).toBeLessThan(Number(cb.substitutions._MEMORY_MIB));
  });

  test('concurrency and MAX_CONCURRENT_RUNS follow the same substitution', () => {
    const run = runCloudBuildDeploy(cb, { _MAX_CONCURRENT_RUNS: '7', _MEMORY_MIB: '8192' });
    expect(run.status).toBe(0);
    const f = flags(runDeployArgs(run));
    expect(f.get('--concurrency')).toBe('7');
    expect(dictFlag(f.get('--set-env-vars')).MAX_CONCURRENT_RUNS).toBe('7');
  });

  test('the timeout follows the script timeout', () => {
    const run = runCloudBuildDeploy(cb, { _SCRIPT_TIMEOUT_MS: '120000', _MAX_QUEUE_WAIT_MS: '0' });
    expect(run.status).toBe(0);
    expect(Number(flags(runDeployArgs(run)).get('--timeout'))).toBeGreaterThan(120);
  });

  test('_ALLOW_UNAUTHENTICATED=true is the only way to a public service', () => {
    const open = flags(runDeployArgs(runCloudBuildDeploy(cb, { _ALLOW_UNAUTHENTICATED: 'true' })));
    expect(open.get('--allow-unauthenticated')).toBe(true);
    expect(open.has('--no-allow-unauthenticated')).toBe(false);

    const typo = runCloudBuildDeploy(cb, { _ALLOW_UNAUTHENTICATED: 'yes' });
    expect(typo.status).not.toBe(0);
    expect(typo.calls).toEqual([]);
  });

  test('limits that cannot fit are refused before anything is deployed', () => {
    const tooMany = runCloudBuildDeploy(cb, { _MAX_CONCURRENT_RUNS: '8' });
    expect(tooMany.status).not.toBe(0);
    expect(tooMany.stderr).toMatch(/exceeds _MEMORY_MIB/);
    expect(tooMany.calls).toEqual([]);

    const notANumber = runCloudBuildDeploy(cb, { _CPU: '2; rm -rf /' });
    expect(notANumber.status).not.toBe(0);
    expect(notANumber.calls).toEqual([]);

    const badMode = runCloudBuildDeploy(cb, { _SANDBOX_MODE: 'none' });
    expect(badMode.status).not.toBe(0);
  });

  test('_DEPLOY=false builds and pushes without deploying', () => {
    const run = runCloudBuildDeploy(cb, { _DEPLOY: 'false' });
    expect(run.status).toBe(0);
    expect(run.calls).toEqual([]);
  });
});
