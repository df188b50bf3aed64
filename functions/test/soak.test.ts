/**
 * The one-minute soak (`npm run soak` runs it for five): bench/soak.js drives legitimate and hostile
 * scripts at twice the run slots against a service of its own, then measures what the service left.
 * Asserted: no 5xx, no crossed result, every legitimate script answered correctly, no process of the
 * run uids left, no growth in work-root entries, cgroup directories or (beyond a small slack) open
 * descriptors. Never latency or elapsed time: this machine is shared.
 */
import { spawn, type ChildProcess } from 'child_process';
import * as path from 'path';
import { REPO } from './helpers/service';

const SECONDS = 60;
/** Open descriptors of the service may end at most this many above where they started. */
const FD_SLACK = 8;

interface Measure {
  open_fds: number;
  work_root_entries: number;
  work_root: string[];
  cgroup_dirs: number;
  cgroups: string[];
  run_uid_processes_not_waiting: number[];
}

interface SoakRun {
  mode: string;
  path: string;
  load: { requests: number; legit_requests: number; status_5xx: number; crossed: number; legit_failures: number; problems_sample: string[] };
  start: Measure;
  end: Measure;
  end_later: Measure;
  failures: string[];
}

let report: { runs: SoakRun[]; failures: string[] } | undefined;
let stderr = '';
let child: ChildProcess | undefined;

beforeAll(async () => {
  child = spawn(process.execPath, [path.join(REPO, 'bench/soak.js'), '--seconds', String(SECONDS), '--json'], { cwd: REPO, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  child.stdout!.on('data', (chunk: Buffer) => (stdout += chunk.toString('utf8')));
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString('utf8')));
  const code = await new Promise<number | null>((resolve) => child!.on('exit', resolve));
  // Exit code 1 means some hard failure; the tests below say which. 2 is the soak itself failing.
  if (code !== 0 && code !== 1) throw new Error(`bench/soak.js exited with ${code}:\n${stderr}`);
  report = JSON.parse(stdout);
  if (report!.failures.length) process.stderr.write(`\nsoak: hard failures reported by bench/soak.js:\n${report!.failures.join('\n')}\n`);
}, 180000);

// Should beforeAll time out, the soak is told to stop (it stops its service and removes its work root).
afterAll(() => {
  if (child && child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
});

/** The figures of the later of the two looks after the load, when lower (lingering is not leaking). */
function least(run: SoakRun, field: 'open_fds' | 'work_root_entries' | 'cgroup_dirs'): number {
  return Math.min(run.end[field], run.end_later[field]);
}

describe(`soak: ${SECONDS} s of legitimate and hostile scripts at twice the run slots`, () => {
  const runs = () => {
    expect(report).toBeDefined();
    expect(report!.runs.length).toBeGreaterThan(0);
    return report!.runs;
  };

  test('the load ran, with legitimate scripts among it', () => {
    for (const run of runs()) {
      expect(run.load.requests).toBeGreaterThan(0);
      expect(run.load.legit_requests).toBeGreaterThan(0);
    }
  });

  test('no 5xx, no crossed result, every legitimate script answered 200 with its own nonce and the right value', () => {
    for (const run of runs()) {
      expect({ mode: run.mode, status_5xx: run.load.status_5xx, crossed: run.load.crossed, legit_failures: run.load.legit_failures, problems: run.load.problems_sample }).toEqual({
        mode: run.mode,
        status_5xx: 0,
        crossed: 0,
        legit_failures: 0,
        problems: expect.any(Array),
      });
    }
  });

  test('no process of the run uids left after the soak (the warm pool waiting children aside)', () => {
    for (const run of runs()) {
      const leftover = run.end_later.run_uid_processes_not_waiting.filter((pid) => run.end.run_uid_processes_not_waiting.includes(pid));
      expect(leftover).toEqual([]);
    }
  });

  test('no growth in work-root entries or cgroup directories', () => {
    for (const run of runs()) {
      const grown = {
        work_root: least(run, 'work_root_entries') > run.start.work_root_entries ? run.end_later.work_root : [],
        cgroups: least(run, 'cgroup_dirs') > run.start.cgroup_dirs ? run.end_later.cgroups : [],
      };
      expect({ mode: run.mode, ...grown }).toEqual({ mode: run.mode, work_root: [], cgroups: [] });
    }
  });

  test(`open descriptors at the end at most ${FD_SLACK} above the start`, () => {
    for (const run of runs()) expect(least(run, 'open_fds')).toBeLessThanOrEqual(run.start.open_fds + FD_SLACK);
  });
});
