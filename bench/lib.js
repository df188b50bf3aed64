/**
 * What bench/run.js (`npm run bench`) and bench/soak.js (`npm run soak`) share: finding nsjail,
 * starting the service as users run it (scripts/serve.sh: the Functions Framework on jemalloc) on a
 * free loopback port (and the floor, bench/floor.js), reading a process's memory and descendants from /proc, and describing the
 * machine.
 */
'use strict';
const { spawn } = require('child_process');
const { randomInt } = require('crypto');
const fs = require('fs');
const net = require('net');
const os = require('os');
const path = require('path');

const REPO = path.resolve(__dirname, '..');
const MAIN = path.join(REPO, 'node_modules/@google-cloud/functions-framework/build/src/main.js');
const SERVE = path.join(REPO, 'scripts/serve.sh');

/** The nsjail binary from NSJAIL_PATH or PATH, or undefined. */
function findNsjail() {
  const candidates = process.env.NSJAIL_PATH ? [process.env.NSJAIL_PATH] : (process.env.PATH || '').split(':').map((d) => path.join(d, 'nsjail'));
  return candidates.find((c) => {
    try {
      fs.accessSync(c, fs.constants.X_OK);
      return fs.statSync(c).isFile();
    } catch {
      return false;
    }
  });
}

function freePort() {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/**
 * A block of run uids for one bench run, far from the test helpers' ranges (200000 + k*64, below
 * 3.4 M) and the soak's (4 M and up): 64 uids per service, for up to 15 services. A run's cleanup
 * kills every process of its uid, which must never be another service's.
 */
const UID_BLOCK = 3500000 + randomInt(400) * 1024;
let nextUidSlot = 0;

/** Waits until a child process has exited. */
function exited(child) {
  return new Promise((resolve) => (child.exitCode !== null || child.signalCode !== null ? resolve() : child.once('exit', () => resolve())));
}

/**
 * The paths a bench can start: the settings each takes and the path the service must report.
 * `warm-full` is the warm path as it was before the lean zygote (WARM_LEAN=off: every child a
 * full one), measured beside `warm` so lean against full is a ratio from one run.
 */
const PATHS = {
  cold: { reports: 'cold', env: { WARM_POOL: 'off' } },
  warm: { reports: 'warm', env: { WARM_POOL: 'on' } },
  'warm-full': { reports: 'warm', env: { WARM_POOL: 'on', WARM_LEAN: 'off' } },
};

/**
 * Starts the service on a free loopback port and waits for /healthz. `mode` is SANDBOX_MODE; the
 * service must report that mode (any mode for 'auto') and `pathName`'s path (PATHS).
 * `stdout`: 'ignore' (the default) or 'pipe' (the caller reads the log lines).
 * Unless `extraEnv` names them, the service gets a work root (SANDBOX_WORK_ROOT) and run uids
 * (SANDBOX_UID_BASE) of its own; stop() ends it (SIGTERM, then SIGKILL after 15 s) and removes
 * that work root.
 */
async function startService(mode, pathName, extraEnv = {}, { stdout = 'ignore' } = {}) {
  const { reports, env: pathEnv } = PATHS[pathName] ?? {};
  if (!reports) throw new Error(`bench: no path "${pathName}" (${Object.keys(PATHS).join(', ')})`);
  const port = await freePort();
  const nsjail = findNsjail();
  const ownWorkRoot = extraEnv.SANDBOX_WORK_ROOT ? undefined : fs.mkdtempSync(path.join(os.tmpdir(), 'pyexec-bench-'));
  const own = {
    ...(ownWorkRoot ? { SANDBOX_WORK_ROOT: ownWorkRoot } : {}),
    ...(extraEnv.SANDBOX_UID_BASE ? {} : { SANDBOX_UID_BASE: String(UID_BLOCK + 64 * nextUidSlot++ + 1) }),
  };
  // Through scripts/serve.sh, as `npm start` and the image run it (its allocator settings included;
  // LD_PRELOAD set, even empty, in BENCH_SERVICE_ENV or extraEnv overrides them). It execs node:
  // child.pid is the service's.
  const child = spawn('bash', [SERVE], {
    cwd: REPO,
    env: {
      PATH: process.env.PATH,
      PORT: String(port),
      SANDBOX_MODE: mode,
      ...pathEnv,
      NODE_ENV: 'production',
      MAX_QUEUE: '1000',
      MAX_QUEUE_WAIT_MS: '600000',
      ...(nsjail ? { NSJAIL_PATH: nsjail } : {}),
      ...own,
      ...(process.env.BENCH_SERVICE_ENV ? JSON.parse(process.env.BENCH_SERVICE_ENV) : {}),
      ...extraEnv,
    },
    stdio: ['ignore', stdout, 'inherit'],
  });
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    const killer = setTimeout(() => child.kill('SIGKILL'), 15000);
    await exited(child);
    clearTimeout(killer);
    if (!ownWorkRoot) return;
    // The warm pool's waiting children may outlive the service by a second or so (README, Soak).
    await new Promise((r) => setTimeout(r, 2000));
    try {
      fs.rmSync(ownWorkRoot, { recursive: true, force: true, maxRetries: 5, retryDelay: 200 });
    } catch (error) {
      console.error(`bench: could not remove the work root ${ownWorkRoot}: ${error.message}`);
    }
  };
  const url = `http://127.0.0.1:${port}`;
  for (let i = 0; i < 300; i++) {
    try {
      const health = await (await fetch(`${url}/healthz`)).json();
      if ((mode !== 'auto' && health.sandbox.mode !== mode) || health.sandbox.path !== reports) {
        throw new Error(`wanted ${mode}/${pathName}, got ${health.sandbox.mode}/${health.sandbox.path}: ${JSON.stringify(health.sandbox.capabilities.warm_pool)}`);
      }
      return { url, child, capacity: health.capacity, health, env: { ...own, ...extraEnv }, stop };
    } catch (error) {
      if (String(error.message).startsWith('wanted')) {
        child.kill('SIGKILL');
        await stop();
        throw error;
      }
      if (child.exitCode !== null) {
        await stop();
        throw new Error(`service exited during start-up (code ${child.exitCode})`, { cause: error });
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  await stop();
  throw new Error('service did not start');
}

/**
 * Starts bench/floor.js (the design's floor: no confinement) with `slots` run slots on a free
 * loopback port and waits until its children are ready. Same shape as startService's answer.
 */
async function startFloor(slots, rootfs = process.env.SANDBOX_ROOTFS || '/var/cache/pyexec-rootfs/current/root') {
  const port = await freePort();
  const child = spawn(process.execPath, [path.join(__dirname, 'floor.js'), String(port), String(slots), rootfs], { cwd: REPO, stdio: ['ignore', 'ignore', 'inherit'] });
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    await exited(child);
  };
  const url = `http://127.0.0.1:${port}`;
  for (let i = 0; i < 600; i++) {
    try {
      const health = await (await fetch(`${url}/healthz`)).json();
      if (health.status === 'ok') return { url, child, capacity: health.capacity, health, stop };
    } catch {
      // not listening yet
    }
    if (child.exitCode !== null) throw new Error(`the floor exited during start-up (code ${child.exitCode})`);
    await new Promise((r) => setTimeout(r, 100));
  }
  await stop();
  throw new Error('the floor did not start');
}

/** Resident memory of a process in KiB (/proc/<pid>/status VmRSS), 0 when it is gone. */
function rssKb(pid) {
  try {
    const m = /VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : 0;
  } catch {
    return 0;
  }
}

/** Every descendant of pid (children, their children, ...), from /proc/<n>/stat. */
function descendants(pid) {
  const parents = new Map();
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${entry}/stat`, 'utf8');
      parents.set(Number(entry), Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]));
    } catch {
      // gone
    }
  }
  const out = [];
  const frontier = [pid];
  while (frontier.length) {
    const parent = frontier.pop();
    for (const [child, ppid] of parents) {
      if (ppid === parent) {
        out.push(child);
        frontier.push(child);
      }
    }
  }
  return out;
}

function round(x) {
  return Math.round(x * 10) / 10;
}

function machine() {
  let kernel;
  try {
    kernel = fs.readFileSync('/proc/sys/kernel/osrelease', 'utf8').trim();
  } catch {
    kernel = os.release();
  }
  return { cpus: os.cpus().length, cpu_model: os.cpus()[0]?.model ?? 'unknown', memory_gib: round(os.totalmem() / 2 ** 30), kernel, node: process.version, date: new Date().toISOString() };
}

module.exports = { REPO, MAIN, PATHS, findNsjail, freePort, startService, startFloor, rssKb, descendants, round, machine };
