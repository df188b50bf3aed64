#!/usr/bin/env node
/**
 * The floor of the service's design, for `npm run bench`: the least a warm run can cost on this
 * machine. A minimal Node `http` server handing each POST /execute to a pre-forked child of the
 * sandbox root's own Python (chrooted into that root, numpy and pandas preloaded by a zygote, as
 * the service's warm path does), over a Unix socket, with no confinement, no validation, no run
 * directory, no cleanup and no logging. The bench drives it with the same load generator as the
 * service and reports the service as ratios to it.
 *
 *   node bench/floor.js <port> <slots> [<rootfs>]
 *
 * `slots` children wait ready at any time (the service's WARM_POOL_SIZE defaults to its slots);
 * each request takes one and asks the zygote for a replacement. At most `slots` runs at once; the
 * rest wait in a FIFO queue. The root is never written to: the zygote runs in a mount namespace of
 * its own where a temporary directory (holding floor_worker.py and the socket) is bound over the
 * root's /tmp.
 */
'use strict';
const { spawn } = require('child_process');
const fs = require('fs');
const http = require('http');
const net = require('net');
const os = require('os');
const path = require('path');

const DEFAULT_ROOT = '/var/cache/pyexec-rootfs/current/root';

function serve(port, slots, rootfs) {
  const root = fs.realpathSync(rootfs);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pyexec-floor-'));
  fs.chmodSync(dir, 0o755);
  fs.copyFileSync(path.join(__dirname, 'floor_worker.py'), path.join(dir, 'floor_worker.py'));
  const socketPath = path.join(dir, 'floor.sock');

  const ready = []; // connected children waiting for a job
  const queue = []; // requests waiting for a slot or a child
  let running = 0;
  let started = false;

  const channel = net.createServer((sock) => {
    ready.push(sock);
    sock.on('error', () => undefined);
    dispatch();
  });
  channel.listen(socketPath);

  const zygote = spawn(
    'unshare',
    ['--mount', '--propagation', 'private', 'sh', '-c', 'mount --bind "$1" "$2/tmp" && exec chroot "$2" /usr/bin/python3 -I -B /tmp/floor_worker.py /tmp/floor.sock', 'sh', dir, root],
    { stdio: ['pipe', 'pipe', 'inherit'], env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', LANG: 'C.UTF-8' } },
  );
  zygote.stdout.on('data', (chunk) => {
    if (!started && chunk.toString().includes('started')) {
      started = true;
      zygote.stdin.write('fork\n'.repeat(slots));
    }
  });
  zygote.on('exit', (code, signal) => {
    if (!stopping) {
      console.error(`floor: zygote exited (code ${code}, signal ${signal})`);
      process.exit(1);
    }
  });

  function dispatch() {
    while (queue.length && ready.length && running < slots) {
      const job = queue.shift();
      const child = ready.shift();
      running++;
      zygote.stdin.write('fork\n'); // the replacement, ahead of demand
      job(child);
    }
  }

  function run(body, res) {
    queue.push((child) => {
      const chunks = [];
      child.on('data', (c) => chunks.push(c));
      child.on('close', () => {
        running--;
        dispatch();
        const answer = Buffer.concat(chunks);
        res.writeHead(answer.length ? 200 : 500, { 'content-type': 'application/json', 'content-length': answer.length });
        res.end(answer);
      });
      child.end(body);
    });
    dispatch();
  }

  const server = http.createServer((req, res) => {
    if (req.method === 'GET' && (req.url === '/healthz' || req.url === '/health')) {
      const body = JSON.stringify({ status: started && ready.length >= slots ? 'ok' : 'starting', capacity: slots, ready: ready.length });
      res.writeHead(200, { 'content-type': 'application/json' });
      return res.end(body);
    }
    if (req.method !== 'POST' || req.url !== '/execute') {
      res.writeHead(404);
      return res.end();
    }
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const { script, args } = JSON.parse(Buffer.concat(chunks).toString('utf8'));
      run(JSON.stringify({ script, args: args ?? {} }), res);
    });
  });
  server.listen(port, '127.0.0.1');

  let stopping = false;
  const stop = () => {
    stopping = true;
    server.close();
    channel.close();
    for (const child of ready) child.destroy();
    zygote.kill('SIGKILL');
    fs.rmSync(dir, { recursive: true, force: true });
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

if (require.main === module) {
  const [port, slots, rootfs = DEFAULT_ROOT] = process.argv.slice(2);
  serve(Number(port), Number(slots), rootfs);
}
