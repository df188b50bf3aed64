/**
 * infra/terraform: parsed with @cdktf/hcl2json (no terraform binary, no cloud access) and checked
 * for the properties that make the deployment locked down and consistent with the service.
 */
import { dictFlag, evalTf, flags, Json, loadCloudBuild, loadTerraform, only, removeStub, runCloudBuildDeploy, runDeployArgs, TfConfig, varRef } from './helpers';

let tf: TfConfig;
let service: Json;
let template: Json;
let container: Json;

function env(name: string): Json {
  const found = (container.env ?? []).filter((e: Json) => e.name === name);
  if (found.length !== 1) throw new Error(`expected one env ${name}, found ${found.length}`);
  return found[0].value;
}

beforeAll(async () => {
  tf = await loadTerraform();
  service = only(tf, 'google_cloud_run_v2_service').body;
  template = service.template[0];
  container = template.containers[0];
});
afterAll(removeStub);

describe('terraform files', () => {
  test('every .tf file parses and the main resources are there', () => {
    expect(Object.keys(tf.files)).toEqual(expect.arrayContaining(['main.tf', 'variables.tf', 'outputs.tf', 'versions.tf']));
    expect(only(tf, 'google_cloud_run_v2_service')).toBeDefined();
    expect(only(tf, 'google_service_account')).toBeDefined();
    expect(only(tf, 'google_artifact_registry_repository').body.format).toBe('DOCKER');
  });

  test('the google provider is pinned (pessimistic minor or exact version)', () => {
    const providers = tf.terraform.flatMap((t: Json) => t.required_providers ?? []);
    const google = providers.find((p: Json) => p.google)?.google;
    expect(google).toBeDefined();
    expect(google.source).toBe('hashicorp/google');
    // "~> 7.45" (>= 7.45, < 8) or an exact "7.45.0"; never an open ">=" range.
    expect(google.version).toMatch(/^(~>\s*\d+\.\d+(\.\d+)?|=?\s*\d+\.\d+\.\d+)$/);
    expect(tf.terraform.some((t: Json) => typeof t.required_version === 'string')).toBe(true);
  });

  test('every variable has a description and a type', () => {
    for (const [name, v] of Object.entries<Json>(tf.variables)) {
      expect({ name, description: typeof v.description }).toEqual({ name, description: 'string' });
      expect({ name, type: typeof v.type }).toEqual({ name, type: 'string' });
    }
  });
});

describe('the Cloud Run service', () => {
  test('runs in the gen2 execution environment', () => {
    expect(template.execution_environment).toBe('EXECUTION_ENVIRONMENT_GEN2');
  });

  test('request concurrency and MAX_CONCURRENT_RUNS come from the same variable', () => {
    const concurrencyVar = varRef(template.max_instance_request_concurrency);
    expect(concurrencyVar).toBeDefined();
    expect(varRef(env('MAX_CONCURRENT_RUNS'))).toBe(concurrencyVar);
    const variable = tf.variables[concurrencyVar as string];
    expect(variable.type).toBe('${number}');
    expect(variable.default).toBeGreaterThanOrEqual(1);
    expect(variable.validation?.length).toBeGreaterThan(0);
  });

  test('the request timeout outlasts the script timeout plus the queue wait, whatever they are set to', () => {
    const m = /^\$\{local\.([a-z0-9_]+)\}s$/.exec(template.timeout);
    expect(m).not.toBeNull();
    const timeoutExpr = `\${local.${m![1]}}`;
    const scriptVar = varRef(env('SCRIPT_TIMEOUT_MS'))!;
    const waitVar = varRef(env('MAX_QUEUE_WAIT_MS'))!;
    expect(scriptVar).toBeDefined();
    expect(waitVar).toBeDefined();
    const cases: Array<Record<string, number>> = [{}, { [scriptVar]: 100, [waitVar]: 0 }, { [scriptVar]: 60000, [waitVar]: 30000 }, { [scriptVar]: 600000, [waitVar]: 0 }];
    for (const overrides of cases) {
      const seconds = evalTf(tf, timeoutExpr, overrides) as number;
      const script = overrides[scriptVar] ?? tf.variables[scriptVar].default;
      const wait = overrides[waitVar] ?? tf.variables[waitVar].default;
      expect(Number.isInteger(seconds)).toBe(true);
      expect(seconds * 1000).toBeGreaterThan(script + wait);
    }
    // With the defaults: 10 s script + 10 s queue wait + margin.
    expect(evalTf(tf, timeoutExpr)).toBeLessThanOrEqual(3600);
  });

  test('memory and timeout rules are enforced as preconditions', () => {
    const preconditions: Json[] = service.lifecycle?.[0]?.precondition ?? [];
    const memoryRule = preconditions.find((p) => /memory_needed_mib|script_memory_mb/.test(p.condition) && /memory_mib/.test(p.condition));
    expect(memoryRule).toBeDefined();
    expect(evalTf(tf, memoryRule.condition)).toBe(true);
    // Five 512 MB runs cannot share 2 GiB with the service: the plan must stop.
    expect(evalTf(tf, memoryRule.condition, { max_concurrent_runs: 5 })).toBe(false);
    expect(evalTf(tf, memoryRule.condition, { max_concurrent_runs: 5, memory_mib: 4096 })).toBe(true);

    const timeoutRule = preconditions.find((p) => /request_timeout/.test(p.condition));
    expect(timeoutRule).toBeDefined();
    expect(evalTf(tf, timeoutRule.condition)).toBe(true);
    expect(evalTf(tf, timeoutRule.condition, { script_timeout_ms: 3000000, max_queue_wait_ms: 1000000 })).toBe(false);
  });

  test('the startup probe runs the deep health check', () => {
    const probe = container.startup_probe?.[0];
    expect(probe).toBeDefined();
    expect(probe.http_get[0].path).toBe('/health?deep=1');
    // Cloud Run allows at most 240 s of startup probing.
    expect(probe.failure_threshold * probe.period_seconds).toBeLessThanOrEqual(240);
    expect(probe.timeout_seconds).toBeLessThan(probe.period_seconds);
  });

  test('CPU, memory, scaling and the service configuration come from variables', () => {
    const limits = container.resources[0].limits;
    expect(varRef(limits.cpu)).toBeDefined();
    expect(limits.memory).toMatch(/^\$\{var\.[a-z0-9_]+\}Mi$/);
    expect(varRef(template.scaling[0].min_instance_count)).toBeDefined();
    expect(varRef(template.scaling[0].max_instance_count)).toBeDefined();
    for (const name of ['SANDBOX_MODE', 'SCRIPT_TIMEOUT_MS', 'SCRIPT_MEMORY_MB', 'MAX_QUEUE', 'MAX_QUEUE_WAIT_MS', 'SHUTDOWN_GRACE_MS', 'GOOGLE_CLOUD_PROJECT']) {
      expect({ name, fromVariable: varRef(env(name)) !== undefined }).toEqual({ name, fromVariable: true });
    }
    expect(tf.variables.sandbox_mode.default).toBe('auto');
    expect(tf.variables.shutdown_grace_ms.validation[0].condition).toMatch(/10000/);
  });

  test('deletion_protection is set explicitly and explained', () => {
    const value = service.deletion_protection;
    expect(value === true || varRef(value) !== undefined).toBe(true);
    if (varRef(value)) expect(tf.variables[varRef(value)!].default).toBe(true);
    const main = tf.files['main.tf'];
    const line = main.split('\n').findIndex((l) => /^\s*deletion_protection\s*=/.test(l));
    const commentAbove = main
      .split('\n')
      .slice(Math.max(0, line - 6), line)
      .join('\n');
    expect(commentAbove).toMatch(/#.*destroy/);
  });
});

describe('identity and access', () => {
  test('the service runs as the dedicated service account', () => {
    const sa = only(tf, 'google_service_account');
    expect(template.service_account).toBe(`\${google_service_account.${sa.name}.email}`);
  });

  test('no project, folder or organization IAM bindings exist at all', () => {
    const iamTypes = Object.keys(tf.resources).filter((t) => /^google_(project|folder|organization)_iam_/.test(t));
    expect(iamTypes).toEqual([]);
  });

  test('the runtime service account is granted nothing anywhere', () => {
    const sa = only(tf, 'google_service_account');
    const ref = new RegExp(`google_service_account\\.${sa.name}\\.(email|member|name|id)`);
    const grants: string[] = [];
    for (const [type, byName] of Object.entries(tf.resources)) {
      if (!/_iam_(member|binding|policy)$/.test(type)) continue;
      for (const [name, blocks] of Object.entries(byName)) {
        if (ref.test(JSON.stringify(blocks))) grants.push(`${type}.${name}`);
      }
    }
    expect(grants).toEqual([]);
  });

  test('allUsers can invoke only when allow_unauthenticated says so (default false)', () => {
    expect(tf.variables.allow_unauthenticated.type).toBe('${bool}');
    expect(tf.variables.allow_unauthenticated.default).toBe(false);
    expect(service.invoker_iam_disabled === undefined || service.invoker_iam_disabled === false).toBe(true);
    const publicGrants: Array<{ id: string; count: unknown }> = [];
    for (const [type, byName] of Object.entries(tf.resources)) {
      if (!/_iam_(member|binding|policy)$/.test(type)) continue;
      for (const [name, blocks] of Object.entries(byName)) {
        const text = JSON.stringify(blocks);
        if (/allUsers|allAuthenticatedUsers/.test(text)) publicGrants.push({ id: `${type}.${name}`, count: blocks[0].count });
      }
    }
    expect(publicGrants.length).toBe(1);
    expect(publicGrants[0].id).toMatch(/^google_cloud_run_v2_service_iam_member\./);
    expect(publicGrants[0].count).toMatch(/^\$\{var\.allow_unauthenticated \? 1 : 0\}$/);
  });

  test('invokers come from a variable that refuses allUsers', () => {
    const members = tf.resources.google_cloud_run_v2_service_iam_member;
    const invokers = Object.values(members)
      .map((b) => b[0])
      .filter((b: Json) => /var\.invoker_members/.test(String(b.for_each)));
    expect(invokers.length).toBe(1);
    expect(invokers[0].role).toBe('roles/run.invoker');
    expect(tf.variables.invoker_members.default).toEqual([]);
    const condition: string = tf.variables.invoker_members.validation[0].condition;
    const pattern = /regex\("((?:[^"\\]|\\.)*)"/.exec(condition)?.[1];
    expect(pattern).toBeDefined();
    const re = new RegExp(JSON.parse(`"${pattern}"`));
    expect(re.test('allUsers')).toBe(false);
    expect(re.test('allAuthenticatedUsers')).toBe(false);
    expect(re.test('user:someone@example.com')).toBe(true);
    expect(re.test('serviceAccount:caller@p.iam.gserviceaccount.com')).toBe(true);
  });

  test('outputs give the URL and the service account email', () => {
    expect(tf.outputs.service_url.value).toMatch(/google_cloud_run_v2_service\.[a-z_]+\.uri/);
    expect(tf.outputs.runtime_service_account_email.value).toMatch(/google_service_account\.[a-z_]+\.email/);
  });
});

describe('the same service as the gcloud path', () => {
  test('variable defaults equal cloudbuild.yaml substitution defaults', () => {
    const subs = loadCloudBuild().substitutions;
    const pairs: Array<[string, string]> = [
      ['region', '_REGION'],
      ['repository_id', '_REPOSITORY'],
      ['service_name', '_SERVICE'],
      ['runtime_service_account_id', '_RUNTIME_SA'],
      ['sandbox_mode', '_SANDBOX_MODE'],
      ['cpu', '_CPU'],
      ['memory_mib', '_MEMORY_MIB'],
      ['max_concurrent_runs', '_MAX_CONCURRENT_RUNS'],
      ['script_timeout_ms', '_SCRIPT_TIMEOUT_MS'],
      ['script_memory_mb', '_SCRIPT_MEMORY_MB'],
      ['max_queue', '_MAX_QUEUE'],
      ['max_queue_wait_ms', '_MAX_QUEUE_WAIT_MS'],
      ['shutdown_grace_ms', '_SHUTDOWN_GRACE_MS'],
      ['request_max_bytes', '_REQUEST_MAX_BYTES'],
      ['service_overhead_mib', '_SERVICE_OVERHEAD_MIB'],
      ['request_timeout_margin_seconds', '_TIMEOUT_MARGIN_S'],
      ['min_instances', '_MIN_INSTANCES'],
      ['max_instances', '_MAX_INSTANCES'],
    ];
    for (const [variable, substitution] of pairs) {
      expect({ variable, value: String(tf.variables[variable].default) }).toEqual({ variable, value: subs[substitution] });
    }
    expect(tf.variables.allow_unauthenticated.default).toBe(subs._ALLOW_UNAUTHENTICATED === 'true');
  });

  test('same request timeout, startup probe and environment variables as the Cloud Build deploy', () => {
    const f = flags(runDeployArgs(runCloudBuildDeploy(loadCloudBuild())));
    expect(`${f.get('--timeout')}`).toBe(String(evalTf(tf, '${local.request_timeout_seconds}')));
    const probe = container.startup_probe[0];
    const gcloudProbe = dictFlag(f.get('--startup-probe'));
    expect(gcloudProbe).toEqual({
      'httpGet.path': probe.http_get[0].path,
      'httpGet.port': String(probe.http_get[0].port),
      initialDelaySeconds: String(probe.initial_delay_seconds),
      periodSeconds: String(probe.period_seconds),
      timeoutSeconds: String(probe.timeout_seconds),
      failureThreshold: String(probe.failure_threshold),
    });
    const gcloudEnv = Object.keys(dictFlag(f.get('--set-env-vars'))).sort();
    const tfEnv = (container.env as Json[]).map((e) => e.name).sort();
    expect(tfEnv).toEqual(gcloudEnv);
  });
});
