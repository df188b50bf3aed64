#!/usr/bin/env node
/**
 * `npm run soak`: reliability under load and faults. Starts the service (its own work root, its own
 * run uids, SCRIPT_TIMEOUT_MS=3000) and, over loopback only, drives a mix of legitimate scripts
 * (hello, numpy, pandas, printing, files, async) and hostile ones (fork and thread bombs, memory
 * hogs, an infinite loop, a sleep past the limit, output floods, a segfault, sys.exit, an
 * exception, an oversized result, a client that disconnects) at a concurrency above the run slots,
 * for a bounded time. Then it checks what the service left behind.
 *
 * Every request carries a fresh nonce in its args; legitimate scripts return it (and a value the
 * soak checks), and any nonce in an answer that is not the request's own is a crossed result.
 *
 * Hard failures (exit code 1): any 5xx; a crossed result; a legitimate script not answering 200
 * with the right value; a hostile script ending in another outcome than its expected ones; a
 * request unanswered past its deadline or a transport error; the service dying; after the soak,
 * processes of the run uids (other than the warm pool's waiting children), more work-root entries
 * or per-run cgroup directories than at the start, or open descriptors above the start's plus
 * FD_SLACK; after the service stops, any of its processes, cgroups or work-root entries left. A 429
 * is counted, not failed. The service's memory is reported (start, end, series), never failed.
 *
 * Usage: node bench/soak.js [--seconds 300] [--mode auto|seccomp|nsjail|all] [--path warm|cold]
 *          [--concurrency N (default 2 x run slots)] [--json] [--report FILE.md (also FILE.json)]
 *          [--kinds hello,fork_bomb,... (only these)] [--gc] [--idle SECONDS]
 *          [--env NAME=VALUE (for the service; repeatable)]
 *        node bench/soak.js --render FILE.json (prints a saved report as markdown)
 * --gc forces a full garbage collection in the service (through its inspector, on a loopback port
 * of its own) before each measurement and reports process.memoryUsage() after it (and samples it,
 * without a collection, every 5 s of the load). --idle looks at the service once more after that
 * long without load. Memory is split into anonymous and file-backed RSS and glibc's [heap]; the
 * service's allocator (scripts/serve.sh preloads jemalloc; --env LD_PRELOAD= for glibc's malloc)
 * and its CPU time per request are reported.
 * `--mode all` soaks seccomp mode, then nsjail mode when NSJAIL_PATH or PATH has nsjail, each for
 * --seconds. Speed is reported, never judged.
 */
'use strict';
const { randomBytes, randomInt } = require('crypto');
const fs = require('fs');
const os = require('os');
const path = require('path');
const { findNsjail, freePort, startService, rssKb, descendants, round, machine } = require('./lib');

const SCRIPT_TIMEOUT_MS = 3000;
/** An answer later than this after its request was sent is a hang. */
const REQUEST_DEADLINE_MS = 30000;
/** Open descriptors of the service may end at most this many above where they started. */
const FD_SLACK = 8;
/** How long the service's processes may outlive it after SIGTERM. */
const STOP_GRACE_MS = 10000;
/** Uids a service may use: its base, then one per run slot (well below 64). */
const UID_SPAN = 64;
const NONCE = /soak-[0-9a-f]{32}/g;
/** Clock ticks per second of /proc/<pid>/stat's times (USER_HZ: 100 on Linux). */
const CLOCK_TICKS = 100;

/* ------------------------------------------------------------------ the mix */

const py = (...lines) => lines.join('\n') + '\n';

function sumOfSquares(n) {
  const b = BigInt(n);
  return Number(((b - 1n) * b * (2n * b - 1n)) / 6n);
}

/**
 * Each kind: weight in the mix; legit or hostile; script; args(nonce) -> args (and what to expect);
 * expect: the outcomes allowed ("200" or "422 <type>"); check(answer, args, nonce) -> a problem or
 * null, for answers whose outcome is allowed.
 */
const KINDS = {
  hello: {
    legit: true,
    weight: 16,
    script: py('def main(nonce):', '    return {"nonce": nonce, "value": "hello"}'),
    args: (nonce) => ({ nonce }),
    value: () => 'hello',
  },
  numpy: {
    legit: true,
    weight: 8,
    script: py('import numpy as np', 'def main(nonce, n):', '    a = np.arange(n, dtype=np.int64)', '    return {"nonce": nonce, "value": int((a * a).sum())}'),
    args: (nonce) => ({ nonce, n: 1000 + randomInt(99000) }),
    value: (args) => sumOfSquares(args.n),
  },
  pandas: {
    legit: true,
    weight: 8,
    script: py('import pandas as pd', 'def main(nonce, rows):', '    df = pd.DataFrame(rows)', '    return {"nonce": nonce, "value": df.groupby("k")["v"].sum().to_dict()}'),
    args: (nonce) => ({ nonce, rows: Array.from({ length: 200 }, () => ({ k: 'abcde'[randomInt(5)], v: randomInt(1000) })) }),
    value: (args) => {
      const sums = {};
      for (const { k, v } of args.rows) sums[k] = (sums[k] ?? 0) + v;
      return Object.fromEntries(
        Object.keys(sums)
          .sort()
          .map((k) => [k, sums[k]]),
      );
    },
  },
  printing: {
    legit: true,
    weight: 8,
    script: py(
      'import sys',
      'def main(nonce, lines):',
      '    for i in range(lines):',
      '        print(f"{nonce} {i}")',
      '    print(f"{nonce} err", file=sys.stderr)',
      '    return {"nonce": nonce, "value": lines}',
    ),
    args: (nonce) => ({ nonce, lines: 1 + randomInt(500) }),
    value: (args) => args.lines,
    stdout: (args, nonce) => Array.from({ length: args.lines }, (_, i) => `${nonce} ${i}\n`).join(''),
    stderr: (args, nonce) => `${nonce} err\n`,
  },
  files: {
    // Files in the run's private working directory: it must start with nothing but an empty out/
    // (for output files), so a file of an earlier run would show here.
    legit: true,
    weight: 8,
    script: py(
      'import os, tempfile',
      'def main(nonce):',
      '    before = sorted(os.listdir(".")) + sorted("out/" + name for name in os.listdir("out"))',
      '    with open("data.txt", "w") as f:',
      '        f.write(nonce * 100)',
      '    with tempfile.NamedTemporaryFile("w+", delete=False) as t:',
      '        t.write(nonce)',
      '    with open("data.txt") as f, open(t.name) as g:',
      '        back = f.read() == nonce * 100 and g.read() == nonce',
      '    return {"nonce": nonce, "value": {"before": before, "back": back}}',
    ),
    args: (nonce) => ({ nonce }),
    value: () => ({ before: ['out'], back: true }),
  },
  async_main: {
    legit: true,
    weight: 4,
    script: py('import asyncio', 'async def main(nonce):', '    await asyncio.sleep(0.01)', '    return {"nonce": nonce, "value": "async"}'),
    args: (nonce) => ({ nonce }),
    value: () => 'async',
  },
  fork_bomb: {
    // Fills the run's task limit; the processes then wait (a CPU hog is infinite_loop's job).
    weight: 2,
    script: py('import os, time', 'def main(nonce):', '    while True:', '        try:', '            os.fork()', '        except OSError:', '            time.sleep(0.05)'),
    args: (nonce) => ({ nonce }),
    expect: ['422 timeout'],
  },
  thread_bomb: {
    weight: 2,
    script: py('import threading, time', 'def main(nonce):', '    while True:', '        threading.Thread(target=time.sleep, args=(60,), daemon=True).start()'),
    args: (nonce) => ({ nonce }),
    expect: ['422 runtime_error', '422 memory_limit'],
  },
  memory_hog: {
    weight: 2,
    script: py('def main(nonce):', '    hog = []', '    while True:', '        hog.append(b"x" * (64 * 1024 * 1024))'),
    args: (nonce) => ({ nonce }),
    // A timeout is a secure ending too: on a starved host the hog may not reach the limit in 3 s.
    expect: ['422 memory_limit', '422 timeout'],
  },
  memory_shared: {
    // Each forked child stays under its own address-space limit; together (shared memory counts)
    // they are far over the run's memory.
    weight: 2,
    script: py(
      'import mmap, os, time',
      'def main(nonce):',
      '    for _ in range(8):',
      '        if os.fork() == 0:',
      '            try:',
      '                m = mmap.mmap(-1, 128 * 1024 * 1024)',
      '                for off in range(0, len(m), 4096):',
      '                    m[off] = 1',
      '                time.sleep(30)',
      '            finally:',
      '                os._exit(0)',
      '    time.sleep(30)',
    ),
    args: (nonce) => ({ nonce }),
    expect: ['422 memory_limit', '422 timeout'],
  },
  infinite_loop: {
    weight: 2,
    script: py('def main(nonce):', '    while True:', '        pass'),
    args: (nonce) => ({ nonce }),
    expect: ['422 timeout'],
  },
  sleep: {
    weight: 2,
    script: py('import time', 'def main(nonce):', '    time.sleep(60)'),
    args: (nonce) => ({ nonce }),
    expect: ['422 timeout'],
  },
  output_flood: {
    // 10 MiB on stdout: the answer carries the first OUTPUT_MAX_BYTES, marked truncated.
    weight: 3,
    script: py(
      'import sys',
      'def main(nonce):',
      '    sys.stdout.write(nonce + "\\n")',
      '    chunk = "x" * 65536',
      '    for _ in range(160):',
      '        sys.stdout.write(chunk)',
      '    return {"nonce": nonce, "value": "flooded"}',
    ),
    args: (nonce) => ({ nonce }),
    expect: ['200'],
    check: (answer, _args, nonce) =>
      answer.body.result?.nonce !== nonce || !answer.body.truncated?.stdout || !answer.body.stdout.startsWith(nonce + '\n') ? 'flood: wrong result, stdout or truncated flag' : null,
  },
  flood_forever: {
    weight: 1,
    script: py('import os', 'def main(nonce):', '    chunk = b"y" * 65536', '    while True:', '        os.write(1, chunk)'),
    args: (nonce) => ({ nonce }),
    expect: ['422 timeout'],
  },
  segfault: {
    weight: 3,
    script: py('import ctypes', 'def main(nonce):', '    ctypes.string_at(0)'),
    args: (nonce) => ({ nonce }),
    expect: ['422 killed'],
    check: (answer) => (answer.body.error?.signal === 'SIGSEGV' ? null : `segfault: signal ${answer.body.error?.signal}`),
  },
  sys_exit: {
    weight: 3,
    script: py('import sys', 'def main(nonce):', '    sys.exit(3)'),
    args: (nonce) => ({ nonce }),
    expect: ['422 killed'],
    check: (answer) => (answer.body.error?.exit_code === 3 ? null : `sys_exit: exit_code ${answer.body.error?.exit_code}`),
  },
  exception: {
    weight: 3,
    script: py('def main(nonce):', '    raise ValueError("soak " + nonce)'),
    args: (nonce) => ({ nonce }),
    expect: ['422 runtime_error'],
    check: (answer, _args, nonce) => (answer.body.error?.message === `ValueError: soak ${nonce}` ? null : `exception: message ${JSON.stringify(answer.body.error?.message)}`),
  },
  result_too_large: {
    weight: 2,
    script: py('def main(nonce):', '    return nonce + "z" * (2 * 1024 * 1024)'),
    args: (nonce) => ({ nonce }),
    expect: ['422 result_too_large'],
  },
  disconnect: {
    // The client gives up after 300 ms: the service must kill the run and clean up after it.
    weight: 2,
    script: py('import time', 'def main(nonce):', '    time.sleep(2)', '    return {"nonce": nonce}'),
    args: (nonce) => ({ nonce }),
    abortAfterMs: 300,
    expect: ['client_abort'],
  },
};

/* ------------------------------------------------------------------ options */

function parseOptions(argv) {
  const options = { seconds: 300, mode: 'auto', path: 'warm', concurrency: 0, json: false, report: null, kinds: null, gc: false, idle: 0, env: {} };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) throw new Error(`${arg} needs a value`);
      return argv[++i];
    };
    if (arg === '--seconds') options.seconds = Number(value());
    else if (arg === '--mode') options.mode = value();
    else if (arg === '--path') options.path = value();
    else if (arg === '--concurrency') options.concurrency = Number(value());
    else if (arg === '--json') options.json = true;
    else if (arg === '--report') options.report = value();
    else if (arg === '--kinds') options.kinds = value().split(',');
    else if (arg === '--gc') options.gc = true;
    else if (arg === '--idle') options.idle = Number(value());
    else if (arg === '--render') options.render = value();
    else if (arg === '--env') {
      const [key, ...rest] = value().split('=');
      if (!/^[A-Z_][A-Z0-9_]*$/.test(key) || !rest.length) throw new Error('--env needs NAME=VALUE');
      options.env[key] = rest.join('=');
    } else if (arg === '--help' || arg === '-h') {
      const header = fs.readFileSync(__filename, 'utf8').split('\n');
      process.stdout.write(header.slice(2, header.indexOf(' */')).join('\n') + '\n');
      process.exit(0);
    } else throw new Error(`unknown option ${arg}`);
  }
  if (!(options.seconds > 0 && options.seconds <= 3600)) throw new Error('--seconds must be in (0, 3600]');
  if (!(options.idle >= 0 && options.idle <= 3600)) throw new Error('--idle must be in [0, 3600]');
  if (!['auto', 'seccomp', 'nsjail', 'all'].includes(options.mode)) throw new Error('--mode must be auto, seccomp, nsjail or all');
  if (!['warm', 'cold'].includes(options.path)) throw new Error('--path must be warm or cold');
  if (!(Number.isInteger(options.concurrency) && options.concurrency >= 0 && options.concurrency <= 256)) throw new Error('--concurrency must be an integer in [1, 256]');
  for (const kind of options.kinds ?? []) if (!KINDS[kind]) throw new Error(`unknown kind ${kind} (known: ${Object.keys(KINDS).join(', ')})`);
  return options;
}

/* ------------------------------------------------------------------ what the host shows */

function loadavg() {
  return fs.readFileSync('/proc/loadavg', 'utf8').trim();
}

/**
 * Where the service's RSS is: anonymous (malloc, V8's heap) and file-backed (code paged in) pages,
 * from /proc/<pid>/status, and glibc's main arena, the [heap] mapping (brk), from smaps.
 */
function rssParts(pid) {
  const out = {};
  try {
    const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
    for (const [field, key] of [
      ['RssAnon', 'rss_anon_kib'],
      ['RssFile', 'rss_file_kib'],
    ]) {
      const m = new RegExp(`^${field}:\\s+(\\d+)`, 'm').exec(status);
      if (m) out[key] = Number(m[1]);
    }
    const smaps = fs.readFileSync(`/proc/${pid}/smaps`, 'utf8');
    const heap = /\[heap\]\n(?:[^\n]*\n)*?Rss:\s+(\d+)/.exec(smaps);
    out.brk_heap_kib = heap ? Number(heap[1]) : 0;
  } catch {
    // gone
  }
  return out;
}

/** The service's malloc: jemalloc (preloaded by scripts/serve.sh) with its MALLOC_CONF, or glibc's. */
function allocatorOf(pid) {
  try {
    if (!/\/libjemalloc\.so[^\n]*\n/.test(fs.readFileSync(`/proc/${pid}/maps`, 'utf8'))) return "glibc's malloc";
    const conf = fs
      .readFileSync(`/proc/${pid}/environ`, 'utf8')
      .split('\0')
      .find((pair) => pair.startsWith('MALLOC_CONF='));
    return `jemalloc${conf ? ` (${conf})` : ''}`;
  } catch {
    return null;
  }
}

/** CPU time (user + system) the process has used, in ms, from /proc/<pid>/stat. */
function cpuMs(pid) {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return Math.round(((Number(fields[11]) + Number(fields[12])) * 1000) / CLOCK_TICKS);
  } catch {
    return null;
  }
}

function fdCount(pid) {
  try {
    return fs.readdirSync(`/proc/${pid}/fd`).length;
  } catch {
    return null;
  }
}

/** Processes whose real or effective uid is in [from, base + UID_SPAN). */
function processesOfUids(base, from = base) {
  const found = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const uids = /^Uid:\s+(\d+)\s+(\d+)/m.exec(fs.readFileSync(`/proc/${entry}/status`, 'utf8'));
      if (uids && [Number(uids[1]), Number(uids[2])].some((uid) => uid >= from && uid < base + UID_SPAN)) found.push(Number(entry));
    } catch {
      // gone
    }
  }
  return found;
}

/** The per-run cgroup directories of the service with this pid (named pyexec-<pid>-...), in any hierarchy. */
function cgroupDirectories(servicePid) {
  const prefix = `pyexec-${servicePid}-`;
  const found = [];
  const walk = (dir, depth) => {
    let entries;
    try {
      entries = fs.readdirSync(dir, { withFileTypes: true });
    } catch {
      return;
    }
    for (const entry of entries) {
      if (!entry.isDirectory()) continue;
      const full = path.join(dir, entry.name);
      if (entry.name.startsWith(prefix)) found.push(full);
      else if (depth < 6) walk(full, depth + 1);
    }
  };
  walk('/sys/fs/cgroup', 0);
  return found.sort();
}

/** Entries of the work root, with the quarantine's contents (quarantine/<name>) counted too. */
function workRootEntries(workRoot) {
  let entries;
  try {
    entries = fs.readdirSync(workRoot);
  } catch {
    return [];
  }
  const out = [];
  for (const entry of entries) {
    out.push(entry);
    if (entry === 'quarantine') {
      try {
        for (const held of fs.readdirSync(path.join(workRoot, entry))) out.push(`quarantine/${held}`);
      } catch {
        // not a directory
      }
    }
  }
  return out.sort();
}

async function health(url) {
  try {
    return await (await fetch(`${url}/healthz`, { signal: AbortSignal.timeout(10000) })).json();
  } catch {
    return null;
  }
}

const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Waits until nothing runs or waits and the warm pool is full again (at most 30 s), then 2 s more. */
async function settle(url) {
  const deadline = Date.now() + 30000;
  let last = null;
  while (Date.now() < deadline) {
    last = await health(url);
    const poolFull = !last?.warm_pool || last.warm_pool.waiting >= last.warm_pool.size;
    if (last && last.in_flight === 0 && last.queued === 0 && poolFull) break;
    await pause(200);
  }
  await pause(2000);
  return last;
}

/** The service's process.memoryUsage(), in KiB (rss_kib, heapTotal_kib, heapUsed_kib, external_kib, arrayBuffers_kib). */
async function memoryUsage(inspector) {
  const usage = await inspector.send('Runtime.evaluate', { expression: 'JSON.stringify(process.memoryUsage())', returnByValue: true });
  return Object.fromEntries(Object.entries(JSON.parse(usage.result.value)).map(([k, v]) => [`${k}_kib`, Math.round(v / 1024)]));
}

/** The figures compared between the start and the end of the soak. */
async function measure(service, uidBase, workRoot, inspector) {
  const pid = service.child.pid;
  let heap;
  if (inspector) {
    const rssBeforeGc = rssKb(pid);
    await inspector.send('HeapProfiler.collectGarbage');
    await pause(500);
    heap = { rss_before_gc_kib: rssBeforeGc, ...(await memoryUsage(inspector)) };
  }
  const before = await health(service.url);
  const uidProcesses = processesOfUids(uidBase);
  const after = await health(service.url);
  const waiting = new Set([...(before?.warm_pool?.children ?? []), ...(after?.warm_pool?.children ?? [])].map((c) => c.pid));
  const entries = workRootEntries(workRoot);
  const cgroups = cgroupDirectories(pid);
  const tree = descendants(pid);
  return {
    at: new Date().toISOString(),
    loadavg: loadavg(),
    rss_kib: rssKb(pid),
    ...rssParts(pid),
    cpu_ms: cpuMs(pid),
    open_fds: fdCount(pid),
    work_root_entries: entries.length,
    work_root: entries,
    cgroup_dirs: cgroups.length,
    cgroups: cgroups.map((dir) => path.relative('/sys/fs/cgroup', dir)),
    run_uid_processes: uidProcesses.length,
    warm_pool_waiting: waiting.size,
    run_uid_processes_not_waiting: uidProcesses.filter((p) => !waiting.has(p)),
    descendants: tree.length,
    descendants_rss_kib: tree.reduce((sum, p) => sum + rssKb(p), 0),
    ...(heap ? { after_full_gc: heap } : {}),
  };
}

/**
 * --gc: the service's inspector (loopback, a port of its own), to force a full garbage collection
 * before each measurement and read process.memoryUsage(), so that growth of the JavaScript heap
 * can be told from garbage not yet collected. Needs Node's WebSocket client (Node 22+).
 */
async function connectInspector(port) {
  if (typeof WebSocket !== 'function') throw new Error('--gc needs a Node with a WebSocket client (22 or later)');
  let targets;
  for (let i = 0; i < 50 && !targets?.length; i++) {
    try {
      targets = await (await fetch(`http://127.0.0.1:${port}/json/list`)).json();
    } catch {
      await pause(100);
    }
  }
  if (!targets?.length) throw new Error(`no inspector on 127.0.0.1:${port}`);
  const socket = new WebSocket(targets[0].webSocketDebuggerUrl);
  await new Promise((resolve, reject) => {
    socket.onopen = resolve;
    socket.onerror = () => reject(new Error('cannot connect to the service inspector'));
  });
  let nextId = 0;
  const pending = new Map();
  socket.onmessage = (event) => {
    const message = JSON.parse(event.data);
    const waiter = pending.get(message.id);
    if (!waiter) return;
    pending.delete(message.id);
    if (message.error) waiter.reject(new Error(message.error.message));
    else waiter.resolve(message.result);
  };
  return {
    send: (method, params = {}) =>
      new Promise((resolve, reject) => {
        const id = ++nextId;
        pending.set(id, { resolve, reject });
        socket.send(JSON.stringify({ id, method, params }));
      }),
    /** Closes the session and waits (at most 5 s) until it is closed: a service with an inspector session still open may wait for it at exit. */
    close: () =>
      new Promise((resolve) => {
        if (socket.readyState === WebSocket.CLOSED) return resolve();
        const timer = setTimeout(resolve, 5000);
        socket.onclose = () => {
          clearTimeout(timer);
          resolve();
        };
        socket.close();
      }),
  };
}

/* ------------------------------------------------------------------ one request */

function outcomeOf(status, body) {
  if (status === 200) return '200';
  return `${status} ${body?.error?.type ?? 'unparsed'}`;
}

/** Sends one request of this kind and classifies its answer. */
async function fire(url, kindName) {
  const kind = KINDS[kindName];
  const nonce = `soak-${randomBytes(16).toString('hex')}`;
  const args = kind.args(nonce);
  const started = process.hrtime.bigint();
  const controller = new AbortController();
  let abortedByUs = false;
  const timers = [
    setTimeout(() => controller.abort(new Error('deadline')), REQUEST_DEADLINE_MS),
    ...(kind.abortAfterMs ? [setTimeout(() => ((abortedByUs = true), controller.abort(new Error('client abort'))), kind.abortAfterMs)] : []),
  ];
  const record = { kind: kindName, legit: Boolean(kind.legit), outcome: '', ms: 0, problems: [], crossed: false };
  try {
    const response = await fetch(`${url}/execute`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ script: kind.script, args }),
      signal: controller.signal,
    });
    const text = await response.text();
    record.ms = Number(process.hrtime.bigint() - started) / 1e6;
    let body;
    try {
      body = JSON.parse(text);
    } catch {
      body = undefined;
    }
    record.outcome = outcomeOf(response.status, body);
    record.status = response.status;
    record.requestId = body?.request_id;
    // Any nonce in the answer that is not this request's own is another request's: crossed.
    const foreign = [...new Set(text.match(NONCE) ?? [])].filter((n) => n !== nonce);
    if (foreign.length) {
      record.crossed = true;
      record.problems.push(`crossed: answer carries ${foreign.length} other nonce(s), e.g. ${foreign[0]}`);
    }
    const answer = { status: response.status, body, text };
    if (kind.legit) {
      if (response.status === 429) {
        // counted, not failed
      } else if (response.status !== 200) {
        record.problems.push(`legit ${kindName}: ${record.outcome}: ${text.slice(0, 300)}`);
      } else if (body.result?.nonce !== nonce) {
        if (typeof body.result?.nonce === 'string') record.crossed = true;
        record.problems.push(`legit ${kindName}: result nonce ${JSON.stringify(body.result?.nonce)} is not ${nonce}`);
      } else if (JSON.stringify(body.result.value) !== JSON.stringify(kind.value(args))) {
        record.problems.push(`legit ${kindName}: value ${JSON.stringify(body.result.value).slice(0, 200)}, expected ${JSON.stringify(kind.value(args)).slice(0, 200)}`);
      } else if (kind.stdout && (body.stdout !== kind.stdout(args, nonce) || body.stderr !== kind.stderr(args, nonce))) {
        record.problems.push(`legit ${kindName}: stdout/stderr differ from what the script printed`);
      }
    } else if (response.status !== 429) {
      if (!kind.expect.includes(record.outcome)) record.problems.push(`hostile ${kindName}: ${record.outcome}, expected ${kind.expect.join(' or ')}: ${text.slice(0, 300)}`);
      else if (kind.check) {
        const problem = kind.check(answer, args, nonce);
        if (problem) record.problems.push(problem);
      }
    }
  } catch (error) {
    record.ms = Number(process.hrtime.bigint() - started) / 1e6;
    const reason = controller.signal.aborted ? controller.signal.reason?.message : null;
    if (abortedByUs && reason === 'client abort') {
      record.outcome = 'client_abort';
    } else if (reason === 'deadline') {
      record.outcome = 'hang';
      record.problems.push(`${kindName}: no answer within ${REQUEST_DEADLINE_MS} ms`);
    } else {
      record.outcome = 'transport_error';
      record.problems.push(`${kindName}: ${error.message}${error.cause ? `: ${error.cause.code ?? error.cause.message}` : ''}`);
    }
  } finally {
    for (const timer of timers) clearTimeout(timer);
  }
  if (record.status >= 500) record.problems.push(`5xx: ${record.outcome} (request ${record.requestId})`);
  return record;
}

/* ------------------------------------------------------------------ statistics */

function percentile(sorted, p) {
  if (!sorted.length) return null;
  return round(sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]);
}

function summarise(records, elapsedSeconds) {
  const byKind = {};
  const outcomes = {};
  for (const r of records) {
    outcomes[r.outcome] = (outcomes[r.outcome] ?? 0) + 1;
    const k = (byKind[r.kind] ??= { legit: r.legit, requests: 0, outcomes: {}, latencies: [], failures: 0 });
    k.requests++;
    k.outcomes[r.outcome] = (k.outcomes[r.outcome] ?? 0) + 1;
    if (r.outcome !== 'client_abort') k.latencies.push(r.ms);
    if (r.problems.length) k.failures++;
  }
  const kinds = {};
  for (const [name, k] of Object.entries(byKind)) {
    k.latencies.sort((a, b) => a - b);
    kinds[name] = { legit: k.legit, requests: k.requests, outcomes: k.outcomes, failures: k.failures, p50_ms: percentile(k.latencies, 50), p95_ms: percentile(k.latencies, 95) };
  }
  const problems = records.flatMap((r) => r.problems);
  return {
    requests: records.length,
    legit_requests: records.filter((r) => r.legit).length,
    hostile_requests: records.filter((r) => !r.legit).length,
    throughput_rps: round(records.length / elapsedSeconds),
    outcomes,
    kinds,
    status_5xx: records.filter((r) => r.status >= 500).length,
    status_429: records.filter((r) => r.status === 429).length,
    crossed: records.filter((r) => r.crossed).length,
    legit_failures: records.filter((r) => r.legit && r.problems.length).length,
    hostile_unexpected: records.filter((r) => !r.legit && r.problems.length).length,
    hangs: records.filter((r) => r.outcome === 'hang').length,
    transport_errors: records.filter((r) => r.outcome === 'transport_error').length,
    problems_sample: [...new Set(problems)].slice(0, 20),
  };
}

/** Counts the service's log lines by severity and keeps the first distinct WARNING-or-worse messages. */
function logReader(stream) {
  const counts = {};
  const notable = new Map();
  let partial = '';
  stream.on('data', (chunk) => {
    partial += chunk.toString('utf8');
    const lines = partial.split('\n');
    partial = lines.pop() ?? '';
    for (const line of lines) {
      if (!line) continue;
      let entry;
      try {
        entry = JSON.parse(line);
      } catch {
        counts.UNPARSED = (counts.UNPARSED ?? 0) + 1;
        continue;
      }
      const severity = entry.severity ?? 'DEFAULT';
      counts[severity] = (counts[severity] ?? 0) + 1;
      if (['WARNING', 'ERROR', 'CRITICAL'].includes(severity) && entry.event !== 'startup') {
        const message = `${severity} ${entry.event ?? ''} ${entry.message ?? ''} ${entry.outcome ?? ''}`.replace(/\s+/g, ' ').trim().slice(0, 300);
        const key = message.replace(/[0-9a-f-]{36}|\d+/g, '#');
        if (!notable.has(key)) notable.set(key, { count: 0, example: message });
        notable.get(key).count++;
      }
    }
  });
  return () => ({ severities: counts, warnings: [...notable.values()].sort((a, b) => b.count - a.count).slice(0, 20) });
}

/* ------------------------------------------------------------------ one soak */

function pickKind(kindNames) {
  const total = kindNames.reduce((sum, k) => sum + KINDS[k].weight, 0);
  let x = Math.random() * total;
  for (const k of kindNames) {
    x -= KINDS[k].weight;
    if (x < 0) return k;
  }
  return kindNames[kindNames.length - 1];
}

function progress(message) {
  process.stderr.write(`soak: ${message}\n`);
}

async function soak(mode, options) {
  const kindNames = options.kinds ?? Object.keys(KINDS);
  const workRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'pyexec-soak-'));
  // Far from the test helpers' ranges (200000 + k*64 below 3.4 M): a run's cleanup kills every
  // process of its uid, which must never be another service's.
  const uidBase = 4000000 + randomInt(50000) * UID_SPAN;
  const env = {
    SANDBOX_WORK_ROOT: workRoot,
    SANDBOX_UID_BASE: String(uidBase),
    SCRIPT_TIMEOUT_MS: String(SCRIPT_TIMEOUT_MS),
    MAX_QUEUE: '1000',
    MAX_QUEUE_WAIT_MS: '120000',
    ...options.env,
  };
  const run = {
    requested_mode: mode,
    path: options.path,
    seconds: options.seconds,
    service_env: options.env,
    script_timeout_ms: SCRIPT_TIMEOUT_MS,
    request_deadline_ms: REQUEST_DEADLINE_MS,
    uid_base: uidBase,
    work_root: workRoot,
    failures: [],
  };
  let inspectPort;
  if (options.gc) {
    inspectPort = await freePort();
    env.NODE_OPTIONS = `--inspect=127.0.0.1:${inspectPort}`;
  }
  let service;
  try {
    service = await startService(mode, options.path, env, { stdout: 'pipe' });
  } catch (error) {
    fs.rmSync(workRoot, { recursive: true, force: true });
    throw error;
  }
  current = { child: service.child, workRoot };
  const inspector = inspectPort ? await connectInspector(inspectPort) : undefined;
  const logs = logReader(service.child.stdout);
  let serviceExit = null;
  service.child.on('exit', (code, signal) => (serviceExit = { code, signal }));
  run.mode = service.health.sandbox.mode;
  run.capacity = service.capacity;
  run.cgroups = service.health.sandbox.capabilities?.cgroups?.detail ?? service.health.sandbox.capabilities?.cgroups ?? null;
  run.allocator = allocatorOf(service.child.pid);
  run.concurrency = options.concurrency || 2 * service.capacity;
  progress(`${run.mode}/${run.path}: service pid ${service.child.pid}, ${run.capacity} run slots, concurrency ${run.concurrency}, ${options.seconds} s, uids ${uidBase}+, work root ${workRoot}`);
  try {
    // Warm-up: every legitimate kind twice, so lazily built state exists before the start figures.
    const warmup = [];
    for (let i = 0; i < 2; i++) for (const k of kindNames.filter((name) => KINDS[name].legit)) warmup.push(await fire(service.url, k));
    run.warmup = summarise(warmup, 1);
    await settle(service.url);
    run.start = await measure(service, uidBase, workRoot, inspector);

    const records = [];
    const series = [];
    const started = Date.now();
    const endAt = started + options.seconds * 1000;
    const sampler = setInterval(() => {
      const pid = service.child.pid;
      const sample = { t_s: Math.round((Date.now() - started) / 1000), rss_kib: rssKb(pid), ...rssParts(pid), open_fds: fdCount(pid), descendants: descendants(pid).length, done: records.length };
      series.push(sample);
      // With --gc, the JavaScript heap as it is under load (no collection forced here).
      if (inspector)
        memoryUsage(inspector).then(
          (usage) => Object.assign(sample, usage),
          () => {},
        );
      if (series.length % 6 === 0) {
        const bad = records.filter((r) => r.problems.length).length;
        progress(
          `${run.mode}/${run.path} ${Math.round((Date.now() - started) / 1000)} s: ${records.length} answered, ${bad} failed, service rss ${Math.round(rssKb(pid) / 1024)} MiB, ${fdCount(pid)} fds`,
        );
      }
    }, 5000);
    await Promise.all(
      Array.from({ length: run.concurrency }, async () => {
        while (Date.now() < endAt && serviceExit === null) records.push(await fire(service.url, pickKind(kindNames)));
      }),
    );
    clearInterval(sampler);
    const elapsed = (Date.now() - started) / 1000;
    run.elapsed_s = round(elapsed);
    run.load = summarise(records, elapsed);
    run.series = series;
    if (serviceExit) run.failures.push(`the service exited during the soak (${JSON.stringify(serviceExit)})`);

    await settle(service.url);
    run.end = await measure(service, uidBase, workRoot, inspector);
    // A second look, later: lingering directories or processes that go away on their own are
    // not leaks; the figures compared are those of this look when it is lower.
    await pause(5000);
    run.end_later = await measure(service, uidBase, workRoot, inspector);
    if (options.idle) {
      // --idle: does the memory come back when nothing runs for a while?
      progress(`${run.mode}/${run.path}: idling ${options.idle} s`);
      await pause(options.idle * 1000);
      run.idle_s = options.idle;
      run.after_idle = await measure(service, uidBase, workRoot, inspector);
    }
  } finally {
    await inspector?.close();
    const stopped = Date.now();
    if (service.child.exitCode === null && service.child.signalCode === null) {
      service.child.kill('SIGTERM');
      const killer = setTimeout(() => service.child.kill('SIGKILL'), 15000);
      await new Promise((resolve) => (service.child.exitCode !== null || service.child.signalCode !== null ? resolve() : service.child.once('exit', resolve)));
      clearTimeout(killer);
    }
    const exitedAt = Date.now();
    // Its processes (run uids, and in nsjail mode the zygote's uid, base - 1) must be gone: give
    // them 10 s, and say how long they outlived the service.
    let left = processesOfUids(uidBase, uidBase - 1);
    const leftAtExit = left.length;
    while (left.length && Date.now() - exitedAt < STOP_GRACE_MS) {
      await pause(100);
      left = processesOfUids(uidBase, uidBase - 1);
    }
    run.stop = {
      exit_code: service.child.exitCode,
      signal: service.child.signalCode,
      ms: exitedAt - stopped,
      uid_processes_at_exit: leftAtExit,
      uid_processes_gone_after_ms: left.length ? null : Date.now() - exitedAt,
      run_uid_processes: left.length,
      cgroup_dirs: cgroupDirectories(service.child.pid).length,
      cgroups: cgroupDirectories(service.child.pid).map((dir) => path.relative('/sys/fs/cgroup', dir)),
      work_root: workRootEntries(workRoot),
    };
    run.logs = logs();
    fs.rmSync(workRoot, { recursive: true, force: true });
    current = null;
  }
  judge(run);
  return run;
}

/** Adds the hard failures of a finished soak to run.failures. */
function judge(run) {
  const load = run.load;
  const f = run.failures;
  for (const [label, summary] of [
    ['warm-up', run.warmup],
    ['soak', load],
  ]) {
    if (!summary) continue;
    if (summary.status_5xx) f.push(`${label}: ${summary.status_5xx} answers with status 5xx`);
    if (summary.crossed) f.push(`${label}: ${summary.crossed} crossed results (another request's nonce in an answer)`);
    if (summary.legit_failures) f.push(`${label}: ${summary.legit_failures} legitimate scripts not answered 200 with the right result`);
    if (summary.hostile_unexpected) f.push(`${label}: ${summary.hostile_unexpected} hostile scripts ended otherwise than expected`);
    if (summary.hangs) f.push(`${label}: ${summary.hangs} requests unanswered after ${REQUEST_DEADLINE_MS} ms`);
    if (summary.transport_errors) f.push(`${label}: ${summary.transport_errors} transport errors`);
  }
  const { start, end, end_later: later, stop } = run;
  if (start && end && later) {
    const least = (field) => Math.min(end[field], later[field]);
    const leftover = later.run_uid_processes_not_waiting.filter((p) => end.run_uid_processes_not_waiting.includes(p));
    if (leftover.length) f.push(`after the soak: ${leftover.length} processes of the run uids that are not waiting warm children: ${leftover.join(', ')}`);
    if (least('work_root_entries') > start.work_root_entries) f.push(`work root grew from ${start.work_root_entries} to ${least('work_root_entries')} entries: ${later.work_root.join(', ')}`);
    if (least('cgroup_dirs') > start.cgroup_dirs) f.push(`cgroup directories grew from ${start.cgroup_dirs} to ${least('cgroup_dirs')}: ${later.cgroups.join(', ')}`);
    if (least('open_fds') > start.open_fds + FD_SLACK) f.push(`open descriptors grew from ${start.open_fds} to ${least('open_fds')} (slack ${FD_SLACK})`);
  }
  if (stop) {
    if (stop.run_uid_processes) f.push(`${STOP_GRACE_MS} ms after the service exited: ${stop.run_uid_processes} processes of its uids`);
    if (stop.cgroup_dirs) f.push(`after the service exited: ${stop.cgroup_dirs} of its cgroup directories left: ${stop.cgroups.join(', ')}`);
    if (stop.work_root.length) f.push(`after the service stopped: work root entries ${stop.work_root.join(', ')}`);
    if (stop.exit_code !== 0) f.push(`the service's exit on SIGTERM: code ${stop.exit_code}, signal ${stop.signal}`);
  }
  if (start && end) {
    run.rss_change_pct = round((100 * (end.rss_kib - start.rss_kib)) / start.rss_kib);
    run.fd_change = end.open_fds - start.open_fds;
  }
}

/* ------------------------------------------------------------------ report */

const mib = (kib) => round(kib / 1024);
const shorten = (text, max) => (text.length > max ? `${text.slice(0, max)}... [${text.length - max} more characters in the JSON]` : text);

/** The service's RSS (MiB) in the samples nearest to each whole minute of the load. */
function byMinute(series) {
  const out = [];
  for (let minute = 1; series.length && minute * 60 <= series[series.length - 1].t_s + 2; minute++) {
    const sample = series.reduce((best, x) => (Math.abs(x.t_s - minute * 60) < Math.abs(best.t_s - minute * 60) ? x : best));
    out.push(`${minute} min ${mib(sample.rss_kib)}`);
  }
  return out.join(', ') || 'under a minute of load';
}

function markdown(report) {
  const lines = [
    '# Soak results',
    '',
    `${report.machine.date} on ${report.machine.cpus} x ${report.machine.cpu_model}, ${report.machine.memory_gib} GiB, Linux ${report.machine.kernel}, Node ${report.machine.node}. ` +
      `Loopback only. \`node bench/soak.js ${report.argv.join(' ')}\`.`,
    '',
    `Verdict: **${report.failures.length ? `${report.failures.length} hard failure(s)` : 'no hard failure'}**.`,
  ];
  for (const failure of report.failures) lines.push(`- ${shorten(failure, 200)}`);
  for (const run of report.runs) {
    const load = run.load ?? {};
    lines.push(
      '',
      `## ${run.mode} mode, ${run.path} path`,
      '',
      `${run.capacity} run slots, ${run.concurrency} closed-loop clients, ${run.elapsed_s} s of load, SCRIPT_TIMEOUT_MS=${run.script_timeout_ms}, per-request deadline ${run.request_deadline_ms} ms; cgroups: ${typeof run.cgroups === 'string' ? run.cgroups : JSON.stringify(run.cgroups)}.` +
        (run.allocator ? ` The service's allocator: ${run.allocator}.` : ''),
      `Host load (/proc/loadavg) at the start: \`${run.start?.loadavg}\`; at the end: \`${run.end?.loadavg}\` (other developers' tests share this machine).`,
      '',
      `${load.requests} requests (${load.legit_requests} legitimate, ${load.hostile_requests} hostile), ${load.throughput_rps} answered/s. ` +
        `5xx: **${load.status_5xx}**; crossed results: **${load.crossed}**; legitimate failures: **${load.legit_failures}**; hostile scripts ending otherwise than expected: **${load.hostile_unexpected}**; ` +
        `hangs: ${load.hangs}; transport errors: ${load.transport_errors}; 429: ${load.status_429}.`,
      '',
      '| script | kind | expected | requests | outcomes | failures | p50 ms | p95 ms |',
      '|---|---|---|---:|---|---:|---:|---:|',
    );
    for (const [name, k] of Object.entries(load.kinds ?? {}).sort(([a], [b]) => Object.keys(KINDS).indexOf(a) - Object.keys(KINDS).indexOf(b))) {
      const outcomes = Object.entries(k.outcomes)
        .map(([o, n]) => `${o}: ${n}`)
        .join(', ');
      const expected = KINDS[name]?.legit ? '200, own nonce, right value' : (KINDS[name]?.expect ?? []).join(' or ');
      lines.push(`| ${name} | ${k.legit ? 'legit' : 'hostile'} | ${expected} | ${k.requests} | ${outcomes} | ${k.failures} | ${k.p50_ms ?? '-'} | ${k.p95_ms ?? '-'} |`);
    }
    if (run.start && run.end) {
      const { start, end, end_later: later, after_idle: idle } = run;
      // The looks at the service: start, end, 5 s later and (--idle) after the idle time.
      const looks = [start, end, later, ...(idle ? [idle] : [])];
      const row = (label, cell, stopped = '') =>
        `| ${label} | ${looks.map((m, i) => (i === 1 && label === 'RSS MiB' ? `${cell(m)} (${run.rss_change_pct >= 0 ? '+' : ''}${run.rss_change_pct}%)` : cell(m))).join(' | ')} | ${stopped} |`;
      const gc = (field) => (m) => mib(m.after_full_gc[field]);
      lines.push(
        '',
        `| the service | start (after warm-up, settled) | end (settled) | 5 s later |${idle ? ` after ${run.idle_s} s idle |` : ''} after SIGTERM |`,
        `|---|${looks.map(() => '---:|').join('')}---:|`,
        row('RSS MiB', (m) => mib(m.rss_kib)),
        ...(start.rss_anon_kib !== undefined ? [row("RSS: anonymous / file-backed / glibc's [heap] MiB", (m) => `${mib(m.rss_anon_kib)} / ${mib(m.rss_file_kib)} / ${mib(m.brk_heap_kib)}`)] : []),
        row('open descriptors', (m) => m.open_fds),
        row('work-root entries', (m) => m.work_root_entries, run.stop?.work_root.length),
        row('its pyexec-* cgroup directories', (m) => m.cgroup_dirs, run.stop?.cgroup_dirs),
        row(
          'processes of its run uids (warm children waiting)',
          (m) => `${m.run_uid_processes} (${m.warm_pool_waiting})`,
          `${run.stop?.uid_processes_at_exit} at exit, ${run.stop?.run_uid_processes} after ${run.stop?.uid_processes_gone_after_ms ?? STOP_GRACE_MS} ms`,
        ),
        ...(start.after_full_gc
          ? [
              row('RSS MiB after a full GC', gc('rss_kib')),
              row('JS heap used / total MiB after a full GC', (m) => `${gc('heapUsed_kib')(m)} / ${gc('heapTotal_kib')(m)}`),
              row('external (array buffers) MiB after a full GC', (m) => `${gc('external_kib')(m)} (${gc('arrayBuffers_kib')(m)})`),
            ]
          : []),
        row('its descendants (their RSS MiB)', (m) => `${m.descendants} (${mib(m.descendants_rss_kib)})`),
      );
      if (start.cpu_ms != null && end.cpu_ms != null && run.load?.requests)
        lines.push('', `The service's own CPU time during the load: ${round((end.cpu_ms - start.cpu_ms) / 1000)} s, ${round((end.cpu_ms - start.cpu_ms) / run.load.requests)} ms per request.`);
      const rss = (run.series ?? []).map((s) => s.rss_kib).filter(Boolean);
      const fds = (run.series ?? []).map((s) => s.open_fds).filter((x) => x !== null);
      if (rss.length)
        lines.push(
          '',
          `During the load (every 5 s): service RSS ${mib(Math.min(...rss))} to ${mib(Math.max(...rss))} MiB, open descriptors ${Math.min(...fds)} to ${Math.max(...fds)}. ` +
            `RSS MiB at each minute: ${byMinute(run.series)}. ` +
            `The service exited ${run.stop?.exit_code === 0 ? 'with code 0' : `with code ${run.stop?.exit_code}, signal ${run.stop?.signal}`} ${run.stop?.ms} ms after SIGTERM.`,
        );
    }
    const sev = run.logs?.severities ?? {};
    lines.push(
      '',
      `Service log lines by severity: ${
        Object.entries(sev)
          .map(([s, n]) => `${s} ${n}`)
          .join(', ') || 'none'
      }.`,
    );
    for (const w of run.logs?.warnings ?? []) lines.push(`- ${w.count} x \`${w.example}\``);
    if (load.problems_sample?.length) {
      lines.push('', 'Failed requests (first distinct ones):');
      for (const problem of load.problems_sample) lines.push(`- ${shorten(problem.replace(/\n/g, ' '), 400)}`);
    }
  }
  return lines.join('\n') + '\n';
}

async function main() {
  const argv = process.argv.slice(2);
  const options = parseOptions(argv);
  if (options.render) {
    // Re-renders a saved JSON report as markdown (after a change to the markdown's layout).
    process.stdout.write(markdown(JSON.parse(fs.readFileSync(options.render, 'utf8'))));
    return;
  }
  let modes = [options.mode];
  if (options.mode === 'all') {
    modes = ['seccomp'];
    if (findNsjail()) modes.push('nsjail');
    else progress('no nsjail binary (NSJAIL_PATH or PATH): nsjail mode not soaked');
  } else if (options.mode === 'nsjail' && !findNsjail()) {
    throw new Error('--mode nsjail: no nsjail binary (set NSJAIL_PATH or put nsjail on PATH)');
  }
  const report = { machine: machine(), argv, loadavg_start: loadavg(), runs: [], failures: [] };
  for (const mode of modes) {
    const run = await soak(mode, options);
    report.runs.push(run);
    report.failures.push(...run.failures.map((failure) => `${run.mode}/${run.path}: ${failure}`));
  }
  report.loadavg_end = loadavg();
  const md = markdown(report);
  if (options.report) {
    const base = options.report.replace(/\.(md|json)$/, '');
    fs.mkdirSync(path.dirname(path.resolve(base)), { recursive: true });
    fs.writeFileSync(`${base}.md`, md);
    fs.writeFileSync(`${base}.json`, JSON.stringify(report, null, 2) + '\n');
  }
  process.stdout.write(options.json ? JSON.stringify(report, null, 2) + '\n' : md);
  process.exitCode = report.failures.length ? 1 : 0;
}

/** The service being soaked, so that an interrupted soak (SIGINT, SIGTERM) still stops it and removes its work root. */
let current = null;

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.once(signal, () => {
    progress(`${signal}: stopping the service`);
    const exit = () => {
      if (current) fs.rmSync(current.workRoot, { recursive: true, force: true });
      process.exit(signal === 'SIGINT' ? 130 : 143);
    };
    const child = current?.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return exit();
    child.once('exit', exit);
    child.kill('SIGTERM');
    setTimeout(() => child.kill('SIGKILL'), 10000).unref();
  });
}

main().catch((error) => {
  console.error(error);
  process.exit(2);
});
