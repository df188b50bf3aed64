/**
 * A trial run: a tiny script through a real sandbox, end to end. It proves each backend at
 * start-up (the probe) and the chosen one on demand (/health?deep=1's canary).
 */
import type { RunReport, Sandbox } from './types';
import { scriptKind } from './warm/scriptKind';

const TRIAL_SCRIPT = 'def main():\n    return 42\n';
export const TRIAL_KIND = scriptKind(TRIAL_SCRIPT);

export async function trialRun(sandbox: Sandbox, slot = 0): Promise<{ ok: boolean; detail: string; report: RunReport }> {
  const report = await sandbox.run({ script: TRIAL_SCRIPT, kind: TRIAL_KIND, args: {}, slot, signal: new AbortController().signal });
  if (report.sandboxFailure) return { ok: false, detail: report.sandboxFailure, report };
  if (report.channel.kind === 'message') {
    const message = report.channel.message;
    if (message.status === 'ok' && message.result === 42) return { ok: true, detail: 'trial run returned the expected result', report };
    if (message.status === 'error') return { ok: false, detail: message.error.message, report };
  }
  const tail = report.stderr.text.trim().split('\n').slice(-3).join(' | ');
  return { ok: false, detail: `trial run failed (exit ${report.exitCode}, signal ${report.signal}): ${tail}`, report };
}
