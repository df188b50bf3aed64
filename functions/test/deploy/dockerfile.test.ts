/**
 * sandbox-image/Dockerfile, parsed with dockerfile-ast, and the .dockerignore of its build
 * context (the repository root). No Docker engine is needed.
 */
import * as fs from 'fs';
import * as path from 'path';
import { DockerfileParser, From, Instruction, JSONInstruction } from 'dockerfile-ast';
import { PREPARED_WORLD } from '../../src/sandbox/seccomp/slots';
import { dockerIgnore, REPO, repoFile } from './helpers';

interface Stage {
  from: From;
  name: string | null;
  instructions: Instruction[];
}

const text = repoFile('sandbox-image/Dockerfile');
const dockerfile = DockerfileParser.parse(text);
const stages: Stage[] = [];
for (const instruction of dockerfile.getInstructions()) {
  if (instruction.getKeyword() === 'FROM') {
    const from = instruction as From;
    stages.push({ from, name: from.getBuildStage(), instructions: [] });
  } else if (stages.length > 0) {
    stages[stages.length - 1].instructions.push(instruction);
  }
}
const runtime = stages[stages.length - 1];

function stage(name: string): Stage {
  const found = stages.find((s) => s.name === name);
  if (!found) throw new Error(`no stage ${name}`);
  return found;
}
function keyword(s: Stage, kw: string): Instruction[] {
  return s.instructions.filter((i) => i.getKeyword() === kw);
}
function runs(s: Stage): string[] {
  return keyword(s, 'RUN').map((i) => (i.getArgumentsContent() ?? '').replace(/\\\n/g, ' ').replace(/\s+/g, ' '));
}
function json(i: Instruction): string[] {
  const strings = (i as JSONInstruction).getJSONStrings();
  return strings.map((s) => s.getJSONValue());
}
function copies(s: Stage): Array<{ from: string | null; sources: string[]; dest: string }> {
  return keyword(s, 'COPY').map((i) => {
    const args = i.getArguments().map((a) => a.getValue());
    const fromFlag = (i as unknown as { getFromFlag(): { getValue(): string | null } | null }).getFromFlag();
    return { from: fromFlag ? fromFlag.getValue() : null, sources: args.slice(0, -1), dest: args[args.length - 1] };
  });
}
function envOf(s: Stage): Record<string, string> {
  const out: Record<string, string> = {};
  for (const i of keyword(s, 'ENV')) {
    for (const p of (i as unknown as { getProperties(): Array<{ getName(): string; getValue(): string | null }> }).getProperties()) {
      out[p.getName()] = p.getValue() ?? '';
    }
  }
  return out;
}

describe('stages', () => {
  test('rootfs-build, nsjail-build, service-build, then the runtime stage', () => {
    expect(stages.map((s) => s.name)).toEqual(['rootfs-build', 'nsjail-build', 'service-build', 'runtime']);
  });

  test('every stage is Debian 13 (trixie), pinned by tag; the service stages are Node 24', () => {
    for (const s of stages) expect(s.from.getImageTag()).toMatch(/trixie/);
    for (const name of ['rootfs-build', 'nsjail-build']) {
      expect(stage(name).from.getImageName()).toBe('debian');
      // A dated tag: the same base until someone moves it.
      expect(stage(name).from.getImageTag()).toMatch(/^trixie-\d{8}(-slim)?$/);
    }
    for (const name of ['service-build', 'runtime']) {
      expect(stage(name).from.getImageName()).toBe('node');
      // The official image, with the full Node version in the tag.
      expect(stage(name).from.getImageTag()).toMatch(/^24\.\d+\.\d+-trixie-slim$/);
    }
    expect(stage('service-build').from.getImageTag()).toBe(runtime.from.getImageTag());
  });
});

describe('the sandbox root file system', () => {
  const rootfs = stage('rootfs-build');

  test('is built by sandbox-image/rootfs/build.sh from its package list, as on every test host', () => {
    const copy = copies(rootfs).find((c) => c.sources.some((s) => s.replace(/\/$/, '') === 'sandbox-image/rootfs'));
    expect(copy).toBeDefined();
    const dir = copy!.dest.replace(/\/$/, '');
    const build = runs(rootfs).find((r) => r.includes(`bash ${dir}/build.sh`));
    expect(build).toBeDefined();
    // ... and the build fails unless the packages it resolved are the committed lock.
    expect(build).toContain(`--check-manifest ${dir}/manifest.txt`);
    expect(build).toMatch(/mv "\$root" \/roots\/rootfs\b/);
    // debootstrap is the only package the stage installs itself.
    for (const r of runs(rootfs)) {
      for (const m of r.matchAll(/apt-get install ((?:-\S+\s+)*)([^&;|]+)/g)) {
        expect(
          m[2]
            .trim()
            .split(/\s+/)
            .filter((p) => !p.startsWith('-')),
        ).toEqual(['debootstrap']);
      }
    }
  });

  test('build.sh debootstraps Debian 13 minbase with exactly the listed packages', () => {
    const script = repoFile('sandbox-image/rootfs/build.sh');
    expect(script).toMatch(/^suite=trixie$/m);
    expect(script).toMatch(/debootstrap --variant=minbase [^\n]*--include="\$include" "\$suite"/);
    expect(script).toMatch(/"\$here\/packages\.txt"/);
  });

  test('lands at /opt/sandbox/rootfs, where SANDBOX_ROOTFS points, after the /opt/sandbox chmod', () => {
    // One COPY from the stage: the root and its prepared slot roots share one layer (and their hard links).
    expect(copies(runtime).filter((c) => c.from === 'rootfs-build')).toEqual([{ from: 'rootfs-build', sources: ['/roots/'], dest: '/opt/sandbox/' }]);
    const all = runtime.instructions;
    const copy = all.findIndex(
      (i) =>
        i.getKeyword() === 'COPY' &&
        i
          .getArguments()
          .map((a) => a.getValue())
          .join(' ') === '/roots/ /opt/sandbox/',
    );
    expect(copy).toBeGreaterThan(-1);
    // The recursive chmod of /opt/sandbox comes first: after it, it would copy the root into a second layer.
    const chmod = all.findIndex((i) => i.getKeyword() === 'RUN' && /chmod -R [^ ]* \/opt\/sandbox/.test(i.getArgumentsContent() ?? ''));
    expect(chmod).toBeGreaterThan(-1);
    expect(chmod).toBeLessThan(copy);
    expect(envOf(runtime).SANDBOX_ROOTFS).toBe('/opt/sandbox/rootfs');
  });

  test("seccomp mode's slot roots are prepared beside it, in its layer, where the service looks for them", () => {
    // world.sh makes <dirname ROOT>/world with slots/0..SANDBOX_SLOTS-1, hard links of the root.
    const script = repoFile('sandbox-image/rootfs/world.sh');
    expect(script).toContain(`world="$(dirname "$root")/${PREPARED_WORLD}"`);
    expect(script).toMatch(/cp -al -- "\$root" "\$world"\n/);
    expect(script).toMatch(/cp -al -- "\$root" "\$world\/slots\/\$n"/);
    const copy = copies(rootfs).find((c) => c.sources.some((s) => s.replace(/\/$/, '') === 'sandbox-image/rootfs'))!;
    const dir = copy.dest.replace(/\/$/, '');
    const all = runs(rootfs);
    const world = all.findIndex((r) => r.includes(`bash ${dir}/world.sh /roots/rootfs "\${SANDBOX_SLOTS}"`));
    expect(world).toBeGreaterThan(-1);
    // After the root's build, and the ARG between them: changing the slot count does not rebuild the root.
    const build = all.findIndex((r) => r.includes(`bash ${dir}/build.sh`));
    expect(build).toBeLessThan(world);
    const instructions = rootfs.instructions;
    const argAt = instructions.findIndex((i) => i.getKeyword() === 'ARG' && /^SANDBOX_SLOTS=\d+$/.test((i.getArgumentsContent() ?? '').trim()));
    const runAt = (n: number) => instructions.indexOf(keyword(rootfs, 'RUN')[n]);
    expect(argAt).toBeGreaterThan(runAt(build));
    expect(argAt).toBeLessThan(runAt(world));
    const slots = Number(/^SANDBOX_SLOTS=(\d+)$/.exec((instructions[argAt].getArgumentsContent() ?? '').trim())![1]);
    expect(slots).toBeGreaterThanOrEqual(1);
    // The build checks the result is made of the root's own files.
    expect(all[world]).toMatch(/stat -c %i \/roots\/rootfs\/var\/lib\/dpkg\/status\)" = "\$\(stat -c %i \/roots\/world\/slots\/0\/var\/lib\/dpkg\/status/);
    // /roots/world lands next to SANDBOX_ROOTFS, under the name slots.ts looks for.
    const rootfsDir = envOf(runtime).SANDBOX_ROOTFS;
    expect(path.posix.join(path.posix.dirname(rootfsDir), PREPARED_WORLD)).toBe(path.posix.join('/opt/sandbox', path.posix.relative('/roots', `/roots/${PREPARED_WORLD}`)));
    expect(rootfsDir).toBe(path.posix.join('/opt/sandbox', path.posix.relative('/roots', '/roots/rootfs')));
  });
});

describe('nsjail', () => {
  const nsjail = stage('nsjail-build');

  test('is built from a pinned release tag', () => {
    const args = keyword(nsjail, 'ARG').map((i) => (i.getArgumentsContent() ?? '').trim());
    const version = args.map((a) => /^NSJAIL_VERSION=(\S+)$/.exec(a)?.[1]).find(Boolean);
    expect(version).toMatch(/^\d+\.\d+(\.\d+)?$/);
    const clones = runs(nsjail).filter((r) => /git clone/.test(r));
    expect(clones.length).toBe(1);
    const clone = clones[0];
    expect(clone).toMatch(/https:\/\/github\.com\/google\/nsjail(\.git)?\b/);
    const branch = /--branch[ =]"?([^"\s]+)"?/.exec(clone)?.[1];
    expect(['${NSJAIL_VERSION}', '$NSJAIL_VERSION', version]).toContain(branch);
    expect(clone).toMatch(/--recurse-submodules/);
    // The tag is checked against the commit it named when pinned.
    expect(args.some((a) => /^NSJAIL_COMMIT=[0-9a-f]{40}$/.test(a))).toBe(true);
    expect(clone).toMatch(/rev-parse HEAD\)" = "\$\{NSJAIL_COMMIT\}"/);
  });

  test("installs nsjail's documented build requirements and runs make", () => {
    const all = runs(nsjail).join(' ');
    for (const pkg of ['git', 'make', 'g++', 'gcc', 'pkg-config', 'protobuf-compiler', 'libprotobuf-dev', 'libnl-route-3-dev', 'bison', 'flex', 'libtool', 'autoconf', 'ca-certificates']) {
      expect({ pkg, listed: new RegExp(`(^|\\s)${pkg.replace(/\+/g, '\\+')}(\\s|$)`).test(all) }).toEqual({ pkg, listed: true });
    }
    expect(all).toMatch(/make -C \/nsjail|cd \/nsjail && make/);
  });

  test('the binary lands in /usr/local/bin/nsjail, where NSJAIL_PATH points', () => {
    expect(copies(runtime)).toContainEqual({ from: 'nsjail-build', sources: ['/nsjail/nsjail'], dest: '/usr/local/bin/nsjail' });
    expect(envOf(runtime).NSJAIL_PATH).toBe('/usr/local/bin/nsjail');
  });
});

describe('the service', () => {
  test('is compiled with tsc and shipped with production dependencies only', () => {
    const build = runs(stage('service-build')).join(' ');
    expect(build).toMatch(/npm ci\b/);
    expect(build).toMatch(/(npx )?tsc -p tsconfig\.json/);
    expect(build).toMatch(/npm prune --omit=dev|npm ci [^&]*--omit=dev/);
  });

  test('/app is root-owned and closed to group/other (the per-run uids cannot read it)', () => {
    const fromBuild = copies(runtime).filter((c) => c.dest === '/app' || c.dest === '/app/');
    expect(fromBuild.length).toBe(1);
    const source = fromBuild[0].from ? stage(fromBuild[0].from) : runtime;
    const preparing = fromBuild[0].from ? runs(source) : runs(runtime);
    expect(preparing.some((r) => /chmod -R go-rwx \/app\b/.test(r))).toBe(true);
    expect(preparing.some((r) => /chown -R root:root \/app\b/.test(r))).toBe(true);
    // The runtime stage checks the result and closes /app itself.
    const check = runs(runtime).find((r) => /find \/app/.test(r));
    expect(check).toMatch(/chmod 0?700 \/app/);
    expect(check).toMatch(/-perm \/0?77/);
  });

  test('the sandbox files are copied to /opt/sandbox, root-owned and read-only', () => {
    const dests = copies(runtime).filter((c) => c.from === null && c.dest.startsWith('/opt/sandbox'));
    const sources = dests.flatMap((c) => c.sources).map((s) => s.replace(/\/$/, ''));
    expect(sources.sort()).toEqual(['sandbox-image/nsjail', 'sandbox-image/runner', 'sandbox-image/seccomp-policy.json']);
    expect(runs(runtime).some((r) => /chown -R root:root \/opt\/sandbox/.test(r) && /chmod -R [^ ]*a-w[^ ]* \/opt\/sandbox/.test(r))).toBe(true);
  });

  test("the host's Debian packages come from packages.txt through install-packages.sh (plus tini and nsjail's libraries)", () => {
    const copy = copies(runtime).find((c) => c.sources.includes('sandbox-image/install-packages.sh'));
    expect(copy).toBeDefined();
    expect(copy!.sources).toContain('sandbox-image/packages.txt');
    const dir = copy!.dest.replace(/\/$/, '');
    const install = runs(runtime).find((r) => r.includes(`sh ${dir}/install-packages.sh`));
    expect(install).toBeDefined();
    // No package is installed around the list except tini and the shared libraries nsjail links
    // (Debian 13's names: nsjail exists only in the image, so they are not in packages.txt).
    for (const r of runs(runtime)) {
      for (const m of r.matchAll(/apt-get install ((?:-\S+\s+)*)([^&;|]+)/g)) {
        const pkgs = m[2]
          .trim()
          .split(/\s+/)
          .filter((p) => !p.startsWith('-'));
        expect(pkgs).toEqual(['tini', 'libprotobuf32t64', 'libnl-route-3-200']);
      }
    }
    // What a script imports comes from the sandbox root: no Python package besides those of
    // packages.txt reaches the runtime stage.
    expect(runs(runtime).join(' ')).not.toMatch(/\bpip3? install\b/);
    // ... and the host's list has none of the sandbox's: the host's python3 runs only the cold
    // path's launcher (standard library only); numpy, pandas and seccomp live in the sandbox root.
    const hostPackages = repoFile('sandbox-image/packages.txt').replace(/#.*/g, '').split(/\s+/).filter(Boolean);
    expect(hostPackages.sort()).toEqual(['libjemalloc2', 'procps', 'python3']);
  });

  test('environment: production, sandbox paths and port', () => {
    expect(envOf(runtime)).toEqual(
      expect.objectContaining({
        NODE_ENV: 'production',
        SANDBOX_DIR: '/opt/sandbox',
        NSJAIL_PATH: '/usr/local/bin/nsjail',
        SANDBOX_PYTHON: '/usr/bin/python3',
        SANDBOX_ROOTFS: '/opt/sandbox/rootfs',
        PORT: '8080',
      }),
    );
  });

  test("the service's allocator: jemalloc with scripts/serve.sh's settings, set after every RUN", () => {
    // serve.sh names them ALLOCATOR_PRELOAD and ALLOCATOR_CONF and exports them as LD_PRELOAD and MALLOC_CONF.
    const serve = repoFile('scripts/serve.sh');
    const setting = (name: string) => new RegExp(`^${name}=(\\S+)$`, 'm').exec(serve)?.[1];
    expect(setting('ALLOCATOR_PRELOAD')).toBe('libjemalloc.so.2');
    expect(setting('ALLOCATOR_CONF')).toMatch(/^background_thread:true,/);
    expect(serve).toMatch(/export LD_PRELOAD="\$ALLOCATOR_PRELOAD" MALLOC_CONF="\$\{MALLOC_CONF-\$ALLOCATOR_CONF\}"/);
    expect(envOf(runtime)).toEqual(expect.objectContaining({ LD_PRELOAD: setting('ALLOCATOR_PRELOAD'), MALLOC_CONF: setting('ALLOCATOR_CONF') }));
    // The library comes from the host's package list (installed by install-packages.sh, above).
    expect(repoFile('sandbox-image/packages.txt').replace(/#.*/g, '').split(/\s+/)).toContain('libjemalloc2');
    // No RUN of the image's build runs under it.
    const all = runtime.instructions;
    const preload = all.findIndex((i) => i.getKeyword() === 'ENV' && /\bLD_PRELOAD=/.test(i.getArgumentsContent() ?? ''));
    expect(preload).toBeGreaterThan(0);
    expect(all.slice(preload).some((i) => i.getKeyword() === 'RUN')).toBe(false);
  });

  test('no secrets in ENV or ARG', () => {
    const secretName = /(SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|API_?KEY|PRIVATE_?KEY|ACCESS_?KEY)/i;
    const secretValue = /(-----BEGIN|AKIA[0-9A-Z]{16}|ya29\.|AIza[0-9A-Za-z_-]{20,}|ghp_[0-9A-Za-z]{20,})/;
    for (const s of stages) {
      for (const i of [...keyword(s, 'ENV'), ...keyword(s, 'ARG')]) {
        const content = i.getArgumentsContent() ?? '';
        for (const m of content.matchAll(/([A-Za-z_][A-Za-z0-9_]*)=/g)) expect(m[1]).not.toMatch(secretName);
        if (i.getKeyword() === 'ARG') expect(content.trim().split('=')[0]).not.toMatch(secretName);
        expect(content).not.toMatch(secretValue);
      }
    }
    for (const c of stages.flatMap(copies)) {
      for (const src of c.sources) expect(src).not.toMatch(/(^|\/)(\.env|.*credentials.*\.json|.*\.pem|.*\.key)$/);
    }
  });
});

describe('start-up', () => {
  test('tini is PID 1', () => {
    const entrypoints = keyword(runtime, 'ENTRYPOINT');
    expect(entrypoints.length).toBe(1);
    expect(json(entrypoints[0])).toEqual(['/usr/bin/tini', '--']);
  });

  test('CMD starts the Functions Framework exactly as scripts/serve.sh does, in /app, not via npm', () => {
    const cmds = keyword(runtime, 'CMD');
    expect(cmds.length).toBe(1);
    const cmd = json(cmds[0]);
    expect(cmd.length).toBeGreaterThan(0);

    const serve = repoFile('scripts/serve.sh');
    const execLine = serve.split('\n').find((l) => /^\s*exec\s+node\s/.test(l));
    expect(execLine).toBeDefined();
    const serveCommand = execLine!.trim().split(/\s+/).slice(1);
    expect(cmd).toEqual(serveCommand);
    expect(cmd).toEqual(['node', 'node_modules/@google-cloud/functions-framework/build/src/main.js', '--target=service', '--signature-type=http']);

    for (const i of [...keyword(runtime, 'CMD'), ...keyword(runtime, 'ENTRYPOINT')]) {
      expect(json(i).join(' ')).not.toMatch(/\bnpm\b|\bnpx\b/);
    }
    const workdirs = keyword(runtime, 'WORKDIR');
    expect(workdirs[workdirs.length - 1].getArgumentsContent()).toBe('/app');
  });

  test('runs as root (needed to switch to per-run uids and to start nsjail)', () => {
    for (const u of keyword(runtime, 'USER')) expect(u.getArgumentsContent()).toMatch(/^(root|0)(:(root|0))?$/);
  });
});

describe('build context', () => {
  const ignored = dockerIgnore(repoFile('.dockerignore'));

  test('the .dockerignore matcher follows Docker: last match wins, parents count, ! re-includes', () => {
    const m = dockerIgnore('*\n!src\n**/node_modules\n');
    expect(m('README.md')).toBe(true);
    expect(m('src/a.ts')).toBe(false);
    expect(m('src/node_modules/x/index.js')).toBe(true);
    expect(m('.git/HEAD')).toBe(true);
    expect(dockerIgnore('.git\n')('.github/x')).toBe(false);
  });

  test('.dockerignore keeps out dependencies, build output, tests, VCS and infrastructure', () => {
    for (const p of [
      'node_modules',
      'node_modules/yaml/package.json',
      'functions/build/index.js',
      'functions/test/deploy/dockerfile.test.ts',
      '.git/HEAD',
      '.ci/run',
      'coverage/lcov.info',
      'infra/terraform/main.tf',
      'docs/design.md',
      'README.md',
      '.env',
      'bench/results.json',
      'npm-debug.log',
      'sandbox-image/runner/__pycache__/runner.cpython-311.pyc',
    ]) {
      expect({ path: p, ignored: ignored(p) }).toEqual({ path: p, ignored: true });
    }
  });

  test('everything the Dockerfile copies from the context exists and is let in', () => {
    const sources = stages
      .flatMap(copies)
      .filter((c) => c.from === null)
      .flatMap((c) => c.sources);
    expect(sources.length).toBeGreaterThan(0);
    for (const src of sources) {
      const rel = src.replace(/\/$/, '');
      expect({ src, exists: fs.existsSync(path.join(REPO, rel)) }).toEqual({ src, exists: true });
      expect({ src, ignored: ignored(rel) }).toEqual({ src, ignored: false });
    }
    expect(ignored('functions/src/index.ts')).toBe(false);
    expect(ignored('sandbox-image/runner/runner.py')).toBe(false);
  });

  test('the Cloud Build upload (infra/gcloud/gcloudignore) keeps what the image build needs', () => {
    const dropped = dockerIgnore(repoFile('infra/gcloud/gcloudignore'));
    const sources = stages
      .flatMap(copies)
      .filter((c) => c.from === null)
      .flatMap((c) => c.sources);
    for (const p of [...sources, 'sandbox-image/Dockerfile', '.dockerignore']) {
      expect({ path: p, dropped: dropped(p.replace(/\/$/, '')) }).toEqual({ path: p, dropped: false });
    }
    for (const p of ['infra/terraform/terraform.tfstate', 'infra/terraform/.terraform/providers/x', 'node_modules/yaml/package.json', '.git/HEAD']) {
      expect({ path: p, dropped: dropped(p) }).toEqual({ path: p, dropped: true });
    }
  });
});
