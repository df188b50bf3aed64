#!/usr/bin/env node
/**
 * `npm run bench`: starts the service as users run it (the Functions Framework, scripts/serve.sh's
 * command), drives HTTP load over loopback, and reports latency percentiles, throughput, errors and
 * peak memory per workload, sandbox mode, path and concurrency, all in one run; beside them the
 * design's floor (bench/floor.js: the same Python, root and preloaded imports, a pre-forked child per
 * request over a Unix socket, no confinement), driven by the same load generator in the same
 * rounds, and every path as a ratio to it. Then an overload scenario: clients at 4x the admission
 * capacity (slots + queue) that retry on 429, honouring Retry-After or not, against the peak.
 *
 * Output: bench/results/results.json, bench/results/results.md and bench/results/latency.svg.
 * Options: --quick (one short round); --no-overload; BENCH_ROUNDS=n; --workloads=hello,pandas,
 * --modes=seccomp,nsjail and --paths=warm,cold,warm-full to measure only those (the floor always
 * runs; warm-full, the warm path with WARM_LEAN=off, only when named: lean against full);
 * --out=DIR to write the results elsewhere (a partial run should not replace bench/results);
 * BENCH_SERVICE_ENV='{"NAME":"value"}' adds settings to every service under test.
 * Speed is never asserted in tests; this is the measure. Quote medians: machines here are noisy.
 */
'use strict';
const fs = require('fs');
const path = require('path');
const { PATHS, findNsjail, startService, startFloor, rssKb, descendants, round, machine } = require('./lib');

const RESULTS = process.argv.find((a) => a.startsWith('--out='))?.slice('--out='.length) || path.join(__dirname, 'results');
const QUICK = process.argv.includes('--quick');
const NO_OVERLOAD = process.argv.includes('--no-overload');
/** `--name=a,b`: only those (workloads, modes, paths); every one when absent. */
function only(name) {
  const arg = process.argv.find((a) => a.startsWith(`--${name}=`));
  return arg
    ? arg
        .slice(name.length + 3)
        .split(',')
        .filter(Boolean)
    : undefined;
}
const ONLY_WORKLOADS = only('workloads');
const ONLY_MODES = only('modes');
const ONLY_PATHS = only('paths');

const WORKLOADS = {
  hello: 'def main():\n    return "hello"\n',
  numpy: 'import numpy as np\ndef main():\n    a = np.arange(100000, dtype=np.float64)\n    return float(np.sqrt(a).sum())\n',
  pandas: 'import pandas as pd\ndef main():\n    df = pd.DataFrame({"k": [i % 10 for i in range(10000)], "v": range(10000)})\n' + '    return df.groupby("k")["v"].sum().to_dict()\n',
  cpu_100ms: 'import time\ndef main():\n    end = time.process_time() + 0.1\n    n = 0\n    while time.process_time() < end:\n        n += 1\n    return n > 0\n',
  print_1mib: 'import sys\ndef main():\n    sys.stdout.write("x" * 1048575 + "\\n")\n    return 1\n',
};

/** For each row of path `fast`, its p50 speed-up and throughput ratio over the same mode, workload and concurrency on path `base`. */
function speedups(rows, fast, base) {
  return rows.flatMap((row) => {
    if (row.path !== fast) return [];
    const other = rows.find((r) => r.path === base && r.mode === row.mode && r.workload === row.workload && r.concurrency === row.concurrency);
    return other
      ? [{ mode: row.mode, workload: row.workload, concurrency: row.concurrency, p50_speedup: round(other.p50_ms / row.p50_ms), throughput_ratio: round(row.throughput_rps / other.throughput_rps) }]
      : [];
  });
}

/** Peak resident memory of the service process and of all its sandboxed descendants together. */
function memorySampler(pid) {
  let servicePeak = 0;
  let sandboxPeak = 0;
  const timer = setInterval(() => {
    servicePeak = Math.max(servicePeak, rssKb(pid));
    sandboxPeak = Math.max(
      sandboxPeak,
      descendants(pid).reduce((sum, p) => sum + rssKb(p), 0),
    );
  }, 50);
  return { stop: () => (clearInterval(timer), { service_peak_mib: round(servicePeak / 1024), sandbox_peak_mib: round(sandboxPeak / 1024) }) };
}

async function one(url, script) {
  const started = process.hrtime.bigint();
  const response = await fetch(`${url}/execute`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ script }) });
  await response.arrayBuffer();
  return { ms: Number(process.hrtime.bigint() - started) / 1e6, ok: response.status === 200, status: response.status, retryAfter: response.headers.get('retry-after') };
}

/** Closed-loop load: `concurrency` clients, each sending its next request when the last is answered. */
async function load(url, script, concurrency, { minRequests, seconds }) {
  const latencies = [];
  let errors = 0;
  let sent = 0;
  const started = process.hrtime.bigint();
  const elapsed = () => Number(process.hrtime.bigint() - started) / 1e9;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (sent < minRequests || elapsed() < seconds) {
        sent++;
        const { ms, ok } = await one(url, script);
        latencies.push(ms);
        if (!ok) errors++;
      }
    }),
  );
  const total = latencies.length;
  const wall = elapsed();
  latencies.sort((a, b) => a - b);
  const pct = (p) => round(latencies[Math.min(latencies.length - 1, Math.floor((p / 100) * latencies.length))]);
  return { requests: total, p50_ms: pct(50), p95_ms: pct(95), p99_ms: pct(99), throughput_rps: round(total / wall), errors };
}

/**
 * Overload: `clients` closed-loop clients for `seconds`; a 429 is retried after Retry-After seconds
 * (policy 'retry-after') or at once ('immediate'). Goodput counts the 200s.
 */
async function overloadLoad(url, script, clients, seconds, policy) {
  let ok = 0;
  let refused = 0;
  let other = 0;
  const okLatencies = [];
  const retryAfters = [];
  const started = process.hrtime.bigint();
  const elapsed = () => Number(process.hrtime.bigint() - started) / 1e9;
  await Promise.all(
    Array.from({ length: clients }, async () => {
      while (elapsed() < seconds) {
        let answer;
        try {
          answer = await one(url, script);
        } catch {
          other++;
          continue;
        }
        if (answer.ok) {
          ok++;
          okLatencies.push(answer.ms);
        } else if (answer.status === 429) {
          refused++;
          const wait = Number(answer.retryAfter);
          retryAfters.push(wait);
          if (policy === 'retry-after' && wait > 0) await new Promise((r) => setTimeout(r, Math.min(wait, Math.max(0, seconds - elapsed())) * 1000));
        } else other++;
      }
    }),
  );
  const wall = elapsed();
  return {
    goodput_rps: round(ok / wall),
    refused_per_s: round(refused / wall),
    other_errors: other,
    ok_p50_ms: round(median(okLatencies) ?? 0),
    retry_after_median_s: retryAfters.length ? median(retryAfters) : null,
    retry_after_max_s: retryAfters.length ? Math.max(...retryAfters) : null,
  };
}

const cell = {
  ms: (row) => (row ? `${row.p50_ms} ms` : 'n/a'),
  rps: (row) => (row ? `${row.throughput_rps}` : 'n/a'),
};

function markdown(report) {
  const m = report.machine;
  const variants = report.variants.filter((v) => v.path !== 'floor').sort((a, b) => variantOrder(a) - variantOrder(b));
  const find = (v, workload, concurrency) => report.rows.find((r) => r.mode === v.mode && r.path === v.path && r.workload === workload && r.concurrency === concurrency);
  const floorOf = (workload, concurrency) => report.rows.find((r) => r.path === 'floor' && r.workload === workload && r.concurrency === concurrency);
  const names = variants.map((v) => `${v.mode} ${v.path}`);
  const high = 2 * report.capacity;
  const lines = [
    `# Benchmark results`,
    '',
    `${m.date} on ${m.cpus} x ${m.cpu_model}, ${m.memory_gib} GiB, Linux ${m.kernel}, Node ${m.node}; load average (1, 5, 15 min) ${m.loadavg_before.join(', ')} before, ${m.loadavg_after.join(', ')} after.`,
    `Loopback HTTP, one service per sandbox mode and path and the floor (bench/floor.js), all running during the whole bench (${report.capacity} run slots each); ` +
      `each row is the median of ${report.rounds} rounds that visit the services in turn (memory: the peak). Closed loop: each client sends its next request when the last is answered.`,
    '',
    `**Against the floor** (the same Python, root and preloaded imports; a pre-forked child per request over a Unix socket; no confinement, no run directory, no cleanup, no logging). ` +
      "In brackets: the service over the floor for latency (lower is better), the service's share of the floor's throughput (higher is better).",
    '',
    `| workload | floor p50 (c=1) | ${names.map((n) => `${n} p50`).join(' | ')} | floor runs/s (c=${high}) | ${names.map((n) => `${n} runs/s`).join(' | ')} |`,
    `|---|---:|${names.map(() => '---:').join('|')}|---:|${names.map(() => '---:').join('|')}|`,
  ];
  for (const workload of report.workloads) {
    const floor1 = floorOf(workload, 1);
    const floorHigh = floorOf(workload, high);
    const latency = variants.map((v) => {
      const row = find(v, workload, 1);
      return row && floor1 ? `${cell.ms(row)} (${round(row.p50_ms / floor1.p50_ms)}x)` : cell.ms(row);
    });
    const throughput = variants.map((v) => {
      const row = find(v, workload, high);
      return row && floorHigh ? `${cell.rps(row)} (${round(row.throughput_rps / floorHigh.throughput_rps)}x)` : cell.rps(row);
    });
    lines.push(`| ${workload} | ${cell.ms(floor1)} | ${latency.join(' | ')} | ${cell.rps(floorHigh)} | ${throughput.join(' | ')} |`);
  }
  if (report.overload?.length) {
    const o = report.overload[0];
    lines.push(
      '',
      `**Overload** (${o.mode} ${o.path}, ${o.slots} slots, queue ${o.queue}, queue wait ${o.max_queue_wait_ms} ms: admission capacity ${o.slots + o.queue}; ${o.clients} clients for ${o.seconds} s each, ` +
        'every one retrying a 429 after its Retry-After or at once; peak: the same service at c=' +
        o.peak_concurrency +
        ' just before).',
      '',
      '| workload | peak runs/s | retry policy | goodput runs/s | goodput/peak | 429s per s | Retry-After median (max) s | p50 of 200s ms | other errors |',
      '|---|---:|---|---:|---:|---:|---:|---:|---:|',
    );
    for (const r of report.overload) {
      lines.push(
        `| ${r.workload} | ${r.peak_rps} | ${r.policy} | ${r.goodput_rps} | ${round(r.goodput_rps / r.peak_rps)}x | ${r.refused_per_s} | ${r.retry_after_median_s ?? '-'} (${r.retry_after_max_s ?? '-'}) | ${r.ok_p50_ms} | ${r.other_errors} |`,
      );
    }
  }
  lines.push(
    '',
    'Every measurement:',
    '',
    '| mode | path | workload | concurrency | requests | p50 ms | p95 ms | p99 ms | runs/s | errors | service peak MiB | sandboxes peak MiB |',
    '|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
  );
  for (const r of report.rows) {
    lines.push(
      `| ${r.mode} | ${r.path} | ${r.workload} | ${r.concurrency} | ${r.requests} | ${r.p50_ms} | ${r.p95_ms} | ${r.p99_ms} | ${r.throughput_rps} | ${r.errors} | ${r.service_peak_mib} | ${r.sandbox_peak_mib} |`,
    );
  }
  if (report.ratios.length) {
    lines.push('', '| mode | workload | concurrency | warm/cold p50 speed-up | warm/cold throughput |', '|---|---|---:|---:|---:|');
    for (const r of report.ratios) lines.push(`| ${r.mode} | ${r.workload} | ${r.concurrency} | ${r.p50_speedup}x | ${r.throughput_ratio}x |`);
  }
  if (report.lean_ratios?.length) {
    lines.push('', '| mode | workload | concurrency | warm/warm-full p50 speed-up | warm/warm-full throughput (lean zygote or not) |', '|---|---|---:|---:|---:|');
    for (const r of report.lean_ratios) lines.push(`| ${r.mode} | ${r.workload} | ${r.concurrency} | ${r.p50_speedup}x | ${r.throughput_ratio}x |`);
  }
  return lines.join('\n') + '\n';
}

/** A horizontal bar chart of p50 latency (concurrency 1) per workload, mode and path, as SVG. */
function svgChart(report) {
  const rows = report.rows.filter((r) => r.concurrency === 1);
  const max = Math.max(...rows.map((r) => r.p50_ms), 1);
  const barHeight = 18;
  const left = 230;
  const width = 820;
  const height = 50 + rows.length * (barHeight + 6);
  const colors = {
    'floor/floor': '#bab0ac',
    'seccomp/cold': '#4e79a7',
    'nsjail/cold': '#f28e2b',
    'seccomp/warm': '#59a14f',
    'nsjail/warm': '#e15759',
    'seccomp/warm-full': '#8cd17d',
    'nsjail/warm-full': '#ff9d9a',
  };
  const bars = rows
    .map((r, i) => {
      const y = 40 + i * (barHeight + 6);
      const w = Math.max(1, ((width - left - 80) * r.p50_ms) / max);
      const label = r.path === 'floor' ? 'floor' : `${r.mode}, ${r.path}`;
      return (
        `<text x="${left - 8}" y="${y + 13}" text-anchor="end" font-size="12">${r.workload} (${label})</text>` +
        `<rect x="${left}" y="${y}" width="${w.toFixed(1)}" height="${barHeight}" fill="${colors[`${r.mode}/${r.path}`] ?? '#999'}"/>` +
        `<text x="${left + w + 6}" y="${y + 13}" font-size="12">${r.p50_ms} ms</text>`
      );
    })
    .join('\n');
  return (
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif">\n` +
    `<rect width="100%" height="100%" fill="white"/>\n<text x="10" y="22" font-size="15">p50 latency at concurrency 1 (${report.machine.date.slice(0, 10)}, ${report.machine.cpus} cores)</text>\n${bars}\n</svg>\n`
  );
}

function median(values) {
  if (!values.length) return undefined;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

function loadavg() {
  return fs.readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).map(Number);
}

/**
 * The overload scenario, on a service of its own with the default queue (2 x slots) and queue
 * wait: for each workload, the peak (closed loop at 2 x slots, below the admission capacity), then
 * 4 x the admission capacity of clients retrying on 429, honouring Retry-After, then retrying at once.
 */
async function overload(report, mode, slots) {
  const queue = 2 * slots;
  const maxQueueWaitMs = 10000;
  const seconds = QUICK ? 4 : 12;
  const clients = 4 * (slots + queue);
  const service = await startService(mode, 'warm', { MAX_CONCURRENT_RUNS: String(slots), MAX_QUEUE: String(queue), MAX_QUEUE_WAIT_MS: String(maxQueueWaitMs) });
  try {
    for (const workload of ['hello', 'pandas']) {
      const script = WORKLOADS[workload];
      for (let i = 0; i < 3; i++) await one(service.url, script);
      const peak = await load(service.url, script, 2 * slots, { minRequests: 8, seconds: QUICK ? 2 : 6 });
      for (const policy of ['retry-after', 'immediate']) {
        const stats = await overloadLoad(service.url, script, clients, seconds, policy);
        const row = { mode, path: 'warm', slots, queue, max_queue_wait_ms: maxQueueWaitMs, clients, seconds, workload, policy, peak_concurrency: 2 * slots, peak_rps: peak.throughput_rps, ...stats };
        report.overload.push(row);
        console.error(
          `overload ${workload} ${policy}: ${stats.goodput_rps} runs/s against a peak of ${peak.throughput_rps}, ${stats.refused_per_s} 429/s, Retry-After median ${stats.retry_after_median_s}`,
        );
        await new Promise((r) => setTimeout(r, 2000)); // let the queue drain
      }
    }
  } finally {
    await service.stop();
  }
}

/**
 * Every service (mode x path, and the floor) runs for the whole bench, and each measurement is
 * repeated in rounds that visit the services in turn, so a noisy minute of the host hurts all paths
 * alike. Each row reports the median over the rounds (memory: the peak over them).
 */
async function main() {
  const rounds = QUICK ? 1 : Number(process.env.BENCH_ROUNDS || 3);
  const modes = ['seccomp'];
  if (findNsjail()) modes.push('nsjail');
  else console.error('bench: no nsjail binary (NSJAIL_PATH or PATH): nsjail mode not measured');
  const measured = modes.filter((mode) => !ONLY_MODES || ONLY_MODES.includes(mode));
  const unknown = (ONLY_PATHS ?? []).filter((pathName) => !PATHS[pathName]);
  if (unknown.length) throw new Error(`bench: no path ${unknown.join(', ')} (${Object.keys(PATHS).join(', ')})`);
  const pathNames = ONLY_PATHS ?? ['cold', 'warm'];
  const variants = [...measured.flatMap((mode) => pathNames.map((pathName) => ({ mode, path: pathName }))), { mode: 'floor', path: 'floor' }];
  const workloads = Object.fromEntries(Object.entries(WORKLOADS).filter(([name]) => !ONLY_WORKLOADS || ONLY_WORKLOADS.includes(name)));
  if (variants.length < 2 || Object.keys(workloads).length === 0) throw new Error('bench: --modes, --paths and --workloads leave nothing to measure');
  const budget = QUICK ? { minRequests: 5, seconds: 1 } : { minRequests: 8, seconds: 2.5 };
  const report = {
    machine: { ...machine(), loadavg_before: loadavg() },
    rounds,
    variants,
    workloads: Object.keys(workloads),
    paths: [...pathNames, 'floor'],
    capacity: 0,
    rows: [],
    ratios: [],
    lean_ratios: [],
    floor_ratios: [],
    overload: [],
  };
  const services = [];
  try {
    // Each service has a work root and run uids of its own (lib.js): a run's cleanup kills every
    // process of its uid, which must never be another service's (waiting) child.
    for (const variant of variants.filter((v) => v.path !== 'floor')) {
      services.push({ ...variant, service: await startService(variant.mode, variant.path) });
    }
    report.capacity = services[0].service.capacity;
    services.push({ mode: 'floor', path: 'floor', service: await startFloor(report.capacity) });
    // Twice the run slots in flight keeps every slot busy while finished runs are cleaned up.
    const levels = [1, 2 * report.capacity];
    const samples = new Map();
    for (let round = 0; round < rounds; round++) {
      for (const [workload, script] of Object.entries(workloads)) {
        for (const concurrency of levels) {
          for (const { mode, path: pathName, service } of services) {
            if (round === 0 && concurrency === 1) for (let i = 0; i < 3; i++) await one(service.url, script); // page cache, JIT
            const sampler = memorySampler(service.child.pid);
            const stats = await load(service.url, script, concurrency, budget);
            const key = `${mode}|${pathName}|${workload}|${concurrency}`;
            if (!samples.has(key)) samples.set(key, []);
            samples.get(key).push({ ...stats, ...sampler.stop() });
            console.error(`round ${round + 1}/${rounds} ${mode}/${pathName} ${workload} c=${concurrency}: p50 ${stats.p50_ms} ms, ${stats.throughput_rps} runs/s, ${stats.errors} errors`);
          }
        }
      }
    }
    for (const [key, list] of samples) {
      const [mode, pathName, workload, concurrency] = key.split('|');
      const pick = (field) => round(median(list.map((x) => x[field])));
      report.rows.push({
        mode,
        path: pathName,
        workload,
        concurrency: Number(concurrency),
        requests: list.reduce((sum, x) => sum + x.requests, 0),
        p50_ms: pick('p50_ms'),
        p95_ms: pick('p95_ms'),
        p99_ms: pick('p99_ms'),
        throughput_rps: pick('throughput_rps'),
        errors: list.reduce((sum, x) => sum + x.errors, 0),
        service_peak_mib: Math.max(...list.map((x) => x.service_peak_mib)),
        sandbox_peak_mib: Math.max(...list.map((x) => x.sandbox_peak_mib)),
      });
    }
  } finally {
    for (const { service } of services) await service.stop();
  }
  // The overload scenario runs alone, after the services above are gone.
  if (!NO_OVERLOAD) await overload(report, measured[0] ?? modes[0], report.capacity);
  report.machine.loadavg_after = loadavg();
  report.rows.sort((a, b) => variantOrder(a) - variantOrder(b) || Object.keys(WORKLOADS).indexOf(a.workload) - Object.keys(WORKLOADS).indexOf(b.workload) || a.concurrency - b.concurrency);
  // The warm path against the cold one, and against itself without lean children (warm-full), when both ran.
  report.ratios.push(...speedups(report.rows, 'warm', 'cold'));
  report.lean_ratios.push(...speedups(report.rows, 'warm', 'warm-full'));
  for (const row of report.rows.filter((r) => r.path !== 'floor')) {
    const floor = report.rows.find((r) => r.path === 'floor' && r.workload === row.workload && r.concurrency === row.concurrency);
    if (floor)
      report.floor_ratios.push({
        mode: row.mode,
        path: row.path,
        workload: row.workload,
        concurrency: row.concurrency,
        p50_over_floor: round(row.p50_ms / floor.p50_ms),
        throughput_share_of_floor: round(row.throughput_rps / floor.throughput_rps),
      });
  }
  fs.mkdirSync(RESULTS, { recursive: true });
  const text = markdown(report);
  const day = report.machine.date.slice(0, 10);
  fs.writeFileSync(path.join(RESULTS, 'results.json'), JSON.stringify(report, null, 2) + '\n');
  fs.writeFileSync(path.join(RESULTS, 'results.md'), text);
  fs.writeFileSync(path.join(RESULTS, 'latency.svg'), svgChart(report));
  // A dated copy of the raw results, kept next to the latest.
  fs.writeFileSync(path.join(RESULTS, `${day}.json`), JSON.stringify(report, null, 2) + '\n');
  fs.writeFileSync(path.join(RESULTS, `${day}.md`), text);
  process.stdout.write(text);
}

function variantOrder(row) {
  return ['floor|floor', 'seccomp|warm', 'seccomp|warm-full', 'seccomp|cold', 'nsjail|warm', 'nsjail|warm-full', 'nsjail|cold'].indexOf(`${row.mode}|${row.path}`);
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
