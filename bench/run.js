#!/usr/bin/env node
/**
 * `npm run bench`: starts the service as users run it (the Functions Framework, scripts/serve.sh's
 * command), drives HTTP load over loopback, and reports latency percentiles, throughput, errors and
 * peak memory per workload, sandbox mode, path and concurrency, all in one run.
 *
 * Output: bench/results/results.json, bench/results/results.md and bench/results/latency.svg.
 * Speed is never asserted in tests; this is the measure. Quote medians: machines here are noisy.
 */
'use strict';
const fs = require('fs');
const path = require('path');
const { findNsjail, startService, rssKb, descendants, round, machine } = require('./lib');

const RESULTS = path.join(__dirname, 'results');
const QUICK = process.argv.includes('--quick');

const WORKLOADS = {
  hello: 'def main():\n    return "hello"\n',
  numpy: 'import numpy as np\ndef main():\n    a = np.arange(100000, dtype=np.float64)\n    return float(np.sqrt(a).sum())\n',
  pandas: 'import pandas as pd\ndef main():\n    df = pd.DataFrame({"k": [i % 10 for i in range(10000)], "v": range(10000)})\n' + '    return df.groupby("k")["v"].sum().to_dict()\n',
  cpu_100ms: 'import time\ndef main():\n    end = time.process_time() + 0.1\n    n = 0\n    while time.process_time() < end:\n        n += 1\n    return n > 0\n',
  print_1mib: 'import sys\ndef main():\n    sys.stdout.write("x" * 1048575 + "\\n")\n    return 1\n',
};

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
  return { ms: Number(process.hrtime.bigint() - started) / 1e6, ok: response.status === 200 };
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

function markdown(report) {
  const lines = [
    `# Benchmark results`,
    '',
    `${report.machine.date} on ${report.machine.cpus} x ${report.machine.cpu_model}, ${report.machine.memory_gib} GiB, Linux ${report.machine.kernel}, Node ${report.machine.node}.`,
    `Loopback HTTP, one service per sandbox mode and path, all running during the whole bench (MAX_CONCURRENT_RUNS=${report.capacity} each); ` +
      `each row is the median of ${report.rounds} rounds that visit the services in turn (memory: the peak). Closed loop: each client sends its next request when the last is answered.`,
    '',
    '| mode | path | workload | concurrency | requests | p50 ms | p95 ms | p99 ms | runs/s | errors | service peak MiB | sandboxes peak MiB |',
    '|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
  ];
  for (const r of report.rows) {
    lines.push(
      `| ${r.mode} | ${r.path} | ${r.workload} | ${r.concurrency} | ${r.requests} | ${r.p50_ms} | ${r.p95_ms} | ${r.p99_ms} | ${r.throughput_rps} | ${r.errors} | ${r.service_peak_mib} | ${r.sandbox_peak_mib} |`,
    );
  }
  if (report.ratios.length) {
    lines.push('', '| mode | workload | concurrency | warm/cold p50 speed-up | warm/cold throughput |', '|---|---|---:|---:|---:|');
    for (const r of report.ratios) lines.push(`| ${r.mode} | ${r.workload} | ${r.concurrency} | ${r.p50_speedup}x | ${r.throughput_ratio}x |`);
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
  const colors = { 'seccomp/cold': '#4e79a7', 'nsjail/cold': '#f28e2b', 'seccomp/warm': '#59a14f', 'nsjail/warm': '#e15759' };
  const bars = rows
    .map((r, i) => {
      const y = 40 + i * (barHeight + 6);
      const w = Math.max(1, ((width - left - 80) * r.p50_ms) / max);
      return (
        `<text x="${left - 8}" y="${y + 13}" text-anchor="end" font-size="12">${r.workload} (${r.mode}, ${r.path})</text>` +
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
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

/**
 * Every service (mode x path) runs for the whole bench, and each measurement is repeated in
 * rounds that visit the services in turn, so a noisy minute of the host hurts all paths alike.
 * Each row reports the median over the rounds (memory: the peak over them).
 */
async function main() {
  const rounds = QUICK ? 1 : Number(process.env.BENCH_ROUNDS || 3);
  const modes = ['seccomp'];
  if (findNsjail()) modes.push('nsjail');
  else console.error('bench: no nsjail binary (NSJAIL_PATH or PATH): nsjail mode not measured');
  const variants = modes.flatMap((mode) => ['cold', 'warm'].map((pathName) => ({ mode, path: pathName })));
  const budget = QUICK ? { minRequests: 5, seconds: 1 } : { minRequests: 8, seconds: 2.5 };
  const report = { machine: machine(), rounds, paths: ['cold', 'warm'], capacity: 0, rows: [], ratios: [] };
  const services = [];
  try {
    // Each service has run uids of its own: a run's cleanup kills every process of its uid, which
    // must never be another service's (waiting) child.
    for (const [i, variant] of variants.entries()) {
      services.push({ ...variant, service: await startService(variant.mode, variant.path, { SANDBOX_UID_BASE: String(60000 + 1000 * i) }) });
    }
    report.capacity = services[0].service.capacity;
    // Twice the run slots in flight keeps every slot busy while finished runs are cleaned up.
    const levels = [1, 2 * report.capacity];
    const samples = new Map();
    for (let round = 0; round < rounds; round++) {
      for (const [workload, script] of Object.entries(WORKLOADS)) {
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
    for (const { service } of services) {
      service.child.kill('SIGTERM');
      await new Promise((r) => (service.child.exitCode !== null ? r() : service.child.on('exit', r)));
    }
  }
  report.rows.sort((a, b) => variantOrder(a) - variantOrder(b) || Object.keys(WORKLOADS).indexOf(a.workload) - Object.keys(WORKLOADS).indexOf(b.workload) || a.concurrency - b.concurrency);
  for (const warm of report.rows.filter((r) => r.path === 'warm')) {
    const cold = report.rows.find((r) => r.path === 'cold' && r.mode === warm.mode && r.workload === warm.workload && r.concurrency === warm.concurrency);
    if (cold)
      report.ratios.push({
        mode: warm.mode,
        workload: warm.workload,
        concurrency: warm.concurrency,
        p50_speedup: round(cold.p50_ms / warm.p50_ms),
        throughput_ratio: round(warm.throughput_rps / cold.throughput_rps),
      });
  }
  fs.mkdirSync(RESULTS, { recursive: true });
  fs.writeFileSync(path.join(RESULTS, 'results.json'), JSON.stringify(report, null, 2) + '\n');
  fs.writeFileSync(path.join(RESULTS, 'results.md'), markdown(report));
  fs.writeFileSync(path.join(RESULTS, 'latency.svg'), svgChart(report));
  process.stdout.write(markdown(report));
}

function variantOrder(row) {
  return ['seccomp|cold', 'seccomp|warm', 'nsjail|cold', 'nsjail|warm'].indexOf(`${row.mode}|${row.path}`);
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
