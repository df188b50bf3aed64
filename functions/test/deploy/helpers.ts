/**
 * Shared helpers of the deployment tests (functions/test/deploy/*.test.ts). Offline only: the
 * files are parsed, and the two gcloud scripts (cloudbuild.yaml's deploy step and
 * infra/gcloud/deploy.sh) are executed with a stub `gcloud` that records its arguments.
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { parse as parseHcl } from '@cdktf/hcl2json';
import { parse as parseYaml } from 'yaml';

export const REPO = path.resolve(__dirname, '..', '..', '..');

export function repoFile(rel: string): string {
  return fs.readFileSync(path.join(REPO, rel), 'utf8');
}

// ---- Terraform --------------------------------------------------------------------------------

export type Json = any;

export interface TfConfig {
  files: Record<string, string>;
  /** Merged hcl2json output of every infra/terraform/*.tf. */
  resources: Record<string, Record<string, Json[]>>;
  variables: Record<string, Json>;
  locals: Record<string, Json>;
  outputs: Record<string, Json>;
  terraform: Json[];
}

let tfCache: Promise<TfConfig> | undefined;

export function loadTerraform(): Promise<TfConfig> {
  tfCache ??= (async () => {
    const dir = path.join(REPO, 'infra', 'terraform');
    const names = fs
      .readdirSync(dir)
      .filter((f) => f.endsWith('.tf'))
      .sort();
    const config: TfConfig = { files: {}, resources: {}, variables: {}, locals: {}, outputs: {}, terraform: [] };
    for (const name of names) {
      const text = fs.readFileSync(path.join(dir, name), 'utf8');
      config.files[name] = text;
      const json = await parseHcl(name, text);
      for (const [type, byName] of Object.entries<Record<string, Json[]>>(json.resource ?? {})) {
        config.resources[type] ??= {};
        for (const [resName, blocks] of Object.entries(byName)) config.resources[type][resName] = blocks;
      }
      for (const [varName, blocks] of Object.entries<Json[]>(json.variable ?? {})) config.variables[varName] = blocks[0];
      for (const block of json.locals ?? []) Object.assign(config.locals, block);
      for (const [outName, blocks] of Object.entries<Json[]>(json.output ?? {})) config.outputs[outName] = blocks[0];
      config.terraform.push(...(json.terraform ?? []));
    }
    return config;
  })();
  return tfCache;
}

/** The one resource of a type, failing loudly when there is not exactly one. */
export function only(config: TfConfig, type: string): { name: string; body: Json } {
  const entries = Object.entries(config.resources[type] ?? {});
  if (entries.length !== 1) throw new Error(`expected exactly one ${type}, found ${entries.length}`);
  return { name: entries[0][0], body: entries[0][1][0] };
}

/** "${var.x}" -> "x"; anything else -> undefined. */
export function varRef(value: unknown): string | undefined {
  const m = typeof value === 'string' ? /^\$\{var\.([a-z0-9_]+)\}$/.exec(value) : null;
  return m ? m[1] : undefined;
}

/**
 * Evaluates a small arithmetic/boolean Terraform expression ("${...}") with variable defaults
 * (or overrides) and locals: enough for the timeout and memory rules, nothing more. Throws on
 * anything it does not understand rather than guessing.
 */
export function evalTf(config: TfConfig, expr: string, overrides: Record<string, number> = {}, depth = 0): number | boolean {
  if (depth > 10) throw new Error('locals nest too deep');
  const body = /^\$\{([\s\S]*)\}$/.exec(expr.trim())?.[1] ?? expr;
  const js = body
    .replace(/\bvar\.([a-z0-9_]+)/g, (_, name: string) => {
      if (name in overrides) return String(overrides[name]);
      const v = config.variables[name];
      if (!v || typeof v.default !== 'number') throw new Error(`var.${name} has no numeric default`);
      return String(v.default);
    })
    .replace(/\blocal\.([a-z0-9_]+)/g, (_, name: string) => {
      if (!(name in config.locals)) throw new Error(`local.${name} is not defined`);
      return `(${String(evalTf(config, config.locals[name], overrides, depth + 1))})`;
    })
    .replace(/\b(ceil|floor|max|min)\(/g, 'Math.$1(');
  if (!/^[\s0-9+\-*/().,<>=!&|?:]*$/.test(js.replace(/Math\.(ceil|floor|max|min)/g, ''))) {
    throw new Error(`cannot evaluate Terraform expression: ${body}`);
  }
  return new Function(`return (${js});`)() as number | boolean;
}

// ---- Cloud Build ------------------------------------------------------------------------------

export interface CloudBuild {
  substitutions: Record<string, string>;
  steps: Array<{ id?: string; name: string; entrypoint?: string; args?: string[]; env?: string[] }>;
  images?: string[];
  options?: Record<string, Json>;
}

export function loadCloudBuild(): CloudBuild {
  return parseYaml(repoFile('cloudbuild.yaml')) as CloudBuild;
}

/** Built-in substitutions of a manual `gcloud builds submit` (no trigger: COMMIT_SHA etc. empty). */
export const MANUAL_BUILTINS: Record<string, string> = {
  PROJECT_ID: 'test-project',
  PROJECT_NUMBER: '123456789012',
  BUILD_ID: '0b4a6a48-7f39-4d1c-9a44-1b6e2f3c4d5e',
  LOCATION: 'global',
  COMMIT_SHA: '',
  SHORT_SHA: '',
  REVISION_ID: '',
  BRANCH_NAME: '',
  TAG_NAME: '',
  REPO_NAME: '',
  TRIGGER_NAME: '',
};

/**
 * Cloud Build's substitution of one string: $$ is a literal $, $NAME and ${NAME} are replaced.
 * A reference to an unknown name fails, as Cloud Build fails the build ("not a valid built-in
 * substitution" / not in the substitution list), which catches a forgotten $$ in a script.
 */
export function substitute(text: string, values: Record<string, string>): string {
  return text.replace(/\$\$|\$\{([^}]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)/g, (whole, braced?: string, bare?: string) => {
    if (whole === '$$') return '$';
    const name = braced ?? bare ?? '';
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) throw new Error(`unsupported substitution expression ${whole}`);
    if (!(name in values)) throw new Error(`unknown substitution ${whole}`);
    return values[name];
  });
}

/** Substitution values of a build: built-ins, the file's defaults (dynamically resolved) and overrides. */
export function buildValues(cb: CloudBuild, overrides: Record<string, string> = {}, builtins = MANUAL_BUILTINS): Record<string, string> {
  const values: Record<string, string> = { ...builtins };
  for (const [key, value] of Object.entries(cb.substitutions ?? {})) {
    values[key] = key in overrides ? overrides[key] : cb.options?.dynamicSubstitutions ? substitute(String(value), builtins) : String(value);
  }
  for (const [key, value] of Object.entries(overrides)) {
    if (!(key in values)) throw new Error(`substitution ${key} is not declared in cloudbuild.yaml (the build would fail)`);
    values[key] = value;
  }
  return values;
}

// ---- running the gcloud scripts against a stub -------------------------------------------------

export interface StubRun {
  status: number | null;
  stdout: string;
  stderr: string;
  /** Each gcloud invocation's arguments. */
  calls: string[][];
}

const STUB = `#!/usr/bin/env bash
# Stub gcloud for the deployment tests: records its arguments and answers the few queries.
{ printf '%s\\0' "$@"; printf '\\036'; } >> "$STUB_LOG"
case "$*" in
  "config get-value project") echo "\${STUB_PROJECT:-}" ;;
  *"run services describe"*) echo "https://python-exec-test-uc.a.run.app" ;;
  *"artifacts repositories describe"*|*"iam service-accounts describe"*) [ "\${STUB_EXISTS:-1}" = 1 ] || exit 1 ;;
  *"projects get-iam-policy"*) printf '%s' "\${STUB_ROLES:-}" ;;
esac
exit 0
`;

let stubDir: string | undefined;

function stubPath(): string {
  if (!stubDir) {
    stubDir = fs.mkdtempSync(path.join(os.tmpdir(), 'deploy-test-stub-'));
    fs.writeFileSync(path.join(stubDir, 'gcloud'), STUB, { mode: 0o755 });
  }
  return stubDir;
}

export function removeStub(): void {
  if (stubDir) fs.rmSync(stubDir, { recursive: true, force: true });
  stubDir = undefined;
}

/** Runs a command with only the given environment (plus PATH with the stub first). */
export function runWithStub(command: string, args: string[], env: Record<string, string>): StubRun {
  const dir = stubPath();
  const log = path.join(dir, `calls-${process.pid}-${Date.now()}-${Math.random().toString(36).slice(2)}`);
  fs.writeFileSync(log, '');
  const result = spawnSync(command, args, {
    cwd: REPO,
    env: { PATH: `${dir}:/usr/local/bin:/usr/bin:/bin`, HOME: dir, LANG: 'C.UTF-8', ...env, STUB_LOG: log },
    encoding: 'utf8',
    timeout: 20000,
  });
  if (result.error) throw result.error;
  const raw = fs.readFileSync(log, 'utf8');
  fs.rmSync(log, { force: true });
  const calls = raw
    .split('\x1e')
    .filter((record) => record.length > 0)
    .map((record) => record.split('\0').slice(0, -1));
  return { status: result.status, stdout: result.stdout, stderr: result.stderr, calls };
}

/** Runs cloudbuild.yaml's deploy step as Cloud Build would (substituted env and script). */
export function runCloudBuildDeploy(cb: CloudBuild, overrides: Record<string, string> = {}): StubRun {
  const step = cb.steps.find((s) => s.id === 'deploy');
  if (!step || !step.args) throw new Error('cloudbuild.yaml has no deploy step with args');
  const values = buildValues(cb, overrides);
  const env: Record<string, string> = {};
  for (const entry of step.env ?? []) {
    const resolved = substitute(entry, values);
    const eq = resolved.indexOf('=');
    env[resolved.slice(0, eq)] = resolved.slice(eq + 1);
  }
  const args = step.args.map((a) => substitute(a, values));
  const command = step.entrypoint ?? 'gcloud';
  return runWithStub(command, args, env);
}

/** The arguments of the one `gcloud run deploy` call of a run. */
export function runDeployArgs(run: StubRun): string[] {
  const deploys = run.calls.filter((c) => c[0] === 'run' && c[1] === 'deploy');
  if (deploys.length !== 1) {
    throw new Error(`expected one gcloud run deploy, got ${deploys.length}\nstderr: ${run.stderr}`);
  }
  return deploys[0];
}

/** --name=value flags of an argument list (a repeated flag keeps its last value). */
export function flags(args: string[]): Map<string, string | true> {
  const out = new Map<string, string | true>();
  for (const a of args) {
    if (!a.startsWith('--')) continue;
    const eq = a.indexOf('=');
    if (eq < 0) out.set(a, true);
    else out.set(a.slice(0, eq), a.slice(eq + 1));
  }
  return out;
}

/** gcloud's KEY=VALUE,KEY=VALUE dictionary flags (first '=' splits key from value). */
export function dictFlag(value: string | true | undefined): Record<string, string> {
  if (typeof value !== 'string') throw new Error('flag has no value');
  const out: Record<string, string> = {};
  for (const item of value.split(',')) {
    const eq = item.indexOf('=');
    out[item.slice(0, eq)] = item.slice(eq + 1);
  }
  return out;
}

// ---- .dockerignore -----------------------------------------------------------------------------

interface IgnoreRule {
  negate: boolean;
  regex: RegExp;
}

function patternRegex(pattern: string): RegExp {
  let re = '';
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i];
    if (c === '*') {
      if (pattern[i + 1] === '*') {
        i++;
        if (pattern[i + 1] === '/') {
          i++;
          re += '(?:.*/)?';
        } else re += '.*';
      } else re += '[^/]*';
    } else if (c === '?') re += '[^/]';
    else if (c === '\\' && i + 1 < pattern.length) re += '\\' + pattern[++i];
    else re += c.replace(/[.+^${}()|[\]]/g, '\\$&');
  }
  return new RegExp(`^${re}$`);
}

/**
 * Docker's .dockerignore semantics (moby/patternmatcher): patterns in order, the last one that
 * matches a path or one of its parent directories decides, `!` re-includes.
 */
export function dockerIgnore(text: string): (rel: string) => boolean {
  const rules: IgnoreRule[] = [];
  for (const rawLine of text.split('\n')) {
    let line = rawLine.trim();
    if (!line || line.startsWith('#')) continue;
    const negate = line.startsWith('!');
    if (negate) line = line.slice(1).trim();
    line = path.posix.normalize(line).replace(/^\/+/, '').replace(/\/+$/, '');
    rules.push({ negate, regex: patternRegex(line) });
  }
  return (rel: string) => {
    const clean = path.posix.normalize(rel).replace(/^\.\//, '').replace(/\/+$/, '');
    const parts = clean.split('/');
    const candidates = parts.map((_, i) => parts.slice(0, i + 1).join('/'));
    let excluded = false;
    for (const rule of rules) {
      if (candidates.some((c) => rule.regex.test(c))) excluded = !rule.negate;
    }
    return excluded;
  };
}
