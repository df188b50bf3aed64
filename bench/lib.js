/**
 * What bench/run.js (`npm run bench`) and bench/soak.js (`npm run soak`) share: finding nsjail,
 * starting the service as users run it (the Functions Framework, scripts/serve.sh's command) on a
 * free loopback port, reading a process's memory and descendants from /proc, and describing the
 * machine.
 */
'use strict';
const { spawn } = require('child_process');
const fs = require('fs');
const net = require('net');
const os = require('os');
const path = require('path');

const REPO = path.resolve(__dirname, '..');
const MAIN = path.join(REPO, 'node_modules/@google-cloud/functions-framework/build/src/main.js');

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
 * Starts the service on a free loopback port and waits for /healthz. `mode` is SANDBOX_MODE; the
 * service must report that mode (any mode for 'auto') and `pathName` ('warm' or 'cold').
 * `stdout`: 'ignore' (the default) or 'pipe' (the caller reads the log lines).
 */
async function startService(mode, pathName, extraEnv, { stdout = 'ignore' } = {}) {
  const port = await freePort();
  const nsjail = findNsjail();
  const child = spawn(process.execPath, [MAIN, '--target=service', '--signature-type=http'], {
    cwd: REPO,
    env: {
      PATH: process.env.PATH,
      PORT: String(port),
      SANDBOX_MODE: mode,
      WARM_POOL: pathName === 'warm' ? 'on' : 'off',
      NODE_ENV: 'production',
      MAX_QUEUE: '1000',
      MAX_QUEUE_WAIT_MS: '600000',
      ...(nsjail ? { NSJAIL_PATH: nsjail } : {}),
      ...extraEnv,
    },
    stdio: ['ignore', stdout, 'inherit'],
  });
  const url = `http://127.0.0.1:${port}`;
  for (let i = 0; i < 300; i++) {
    try {
      const health = await (await fetch(`${url}/healthz`)).json();
      if ((mode !== 'auto' && health.sandbox.mode !== mode) || health.sandbox.path !== pathName) {
        throw new Error(`wanted ${mode}/${pathName}, got ${health.sandbox.mode}/${health.sandbox.path}: ${JSON.stringify(health.sandbox.capabilities.warm_pool)}`);
      }
      return { url, child, capacity: health.capacity, health };
    } catch (error) {
      if (String(error.message).startsWith('wanted')) {
        child.kill('SIGKILL');
        throw error;
      }
      if (child.exitCode !== null) throw new Error(`service exited during start-up (code ${child.exitCode})`, { cause: error });
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  throw new Error('service did not start');
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

module.exports = { REPO, MAIN, findNsjail, freePort, startService, rssKb, descendants, round, machine };
