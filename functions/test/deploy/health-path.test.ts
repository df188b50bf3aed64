/**
 * Cloud Run's front end reserves some URL paths ending in "z" (/healthz among them) and answers
 * them itself with a 404: such a request never reaches the container. Every probe, printed
 * command, output and document must therefore point at /health; /healthz is only a local alias.
 * (Cloud Run "Known issues", Reserved URL paths: https://cloud.google.com/run/docs/issues)
 */
import { dictFlag, flags, loadCloudBuild, loadTerraform, only, removeStub, repoFile, runCloudBuildDeploy, runDeployArgs, runWithStub } from './helpers';

afterAll(removeStub);

/** A path ending in z as the last segment, e.g. /healthz, /readyz, /statusz (query string allowed). */
const Z_PATH = /\/[A-Za-z0-9_.-]*z(?=$|[?"'`\s),#])/g;

test('the startup probes of both deploy paths and of Terraform use /health?deep=1', async () => {
  const build = runCloudBuildDeploy(loadCloudBuild());
  expect(build.status).toBe(0);
  expect(dictFlag(flags(runDeployArgs(build)).get('--startup-probe'))['httpGet.path']).toBe('/health?deep=1');
  const script = runWithStub('bash', ['infra/gcloud/deploy.sh', 'PROJECT_ID=test-project', 'TAG=t1', 'BUILD=none'], {});
  expect(script.status).toBe(0);
  expect(dictFlag(flags(runDeployArgs(script)).get('--startup-probe'))['httpGet.path']).toBe('/health?deep=1');
  const tf = await loadTerraform();
  const container = only(tf, 'google_cloud_run_v2_service').body.template[0].containers[0];
  for (const probeKind of ['startup_probe', 'liveness_probe']) {
    for (const probe of container[probeKind] ?? []) {
      for (const get of probe.http_get ?? []) expect({ probeKind, path: get.path }).toEqual({ probeKind, path: expect.stringMatching(/^\/health(\?|$)/) });
    }
  }
});

test('what deploy.sh prints and Terraform outputs call /health', async () => {
  const script = runWithStub('bash', ['infra/gcloud/deploy.sh', 'PROJECT_ID=test-project', 'TAG=t1', 'BUILD=none'], {});
  expect(script.stdout).toMatch(/ https:\/\/python-exec-test-uc\.a\.run\.app\/health$/m);
  expect(script.stdout).not.toMatch(Z_PATH);
  const tf = await loadTerraform();
  expect(tf.outputs.health_check_command.value).toMatch(/\.uri\}\/health"?$/);
});

test('no deployment file names a path ending in z', () => {
  for (const file of ['cloudbuild.yaml', 'infra/gcloud/deploy.sh', 'infra/terraform/main.tf', 'infra/terraform/outputs.tf', 'infra/terraform/variables.tf', 'scripts/serve.sh']) {
    const hits = [...repoFile(file).matchAll(Z_PATH)].map((m) => m[0]);
    expect({ file, hits }).toEqual({ file, hits: [] });
  }
});

test('the documents call /health; /healthz appears only where it is explained as the local alias', () => {
  for (const file of ['README.md', 'infra/README.md', 'sandbox-image/Dockerfile']) {
    const text = repoFile(file);
    expect({ file, callsHealth: /\/health\b(?!z)/.test(text) }).toEqual({ file, callsHealth: true });
    // Every line naming a z path must say why it is not to be used on Cloud Run.
    const offending = text
      .split('\n')
      .filter((line) => (line.match(Z_PATH) ?? []).length > 0)
      .filter((line) => !/alias|reserve/i.test(line));
    expect({ file, offending }).toEqual({ file, offending: [] });
  }
});
