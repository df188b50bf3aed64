/** Finds processes by an exact argv element, to prove a run left nothing behind. */
import { promises as fs } from 'fs';

export async function processesWithArgument(argument: string): Promise<number[]> {
  const found: number[] = [];
  for (const entry of await fs.readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const cmdline = await fs.readFile(`/proc/${entry}/cmdline`, 'utf8');
      if (cmdline.split('\0').includes(argument)) found.push(Number(entry));
    } catch {
      // exited meanwhile
    }
  }
  return found;
}

const parentOf = async (pid: number | string): Promise<number> => Number((await fs.readFile(`/proc/${pid}/stat`, 'utf8').catch(() => ') X 0')).split(') ')[1].split(' ')[1]);

/**
 * The warm pool's zygotes of the service whose process is `servicePid`: the zygote.py processes
 * whose parent is the service (seccomp mode: chroot execs the interpreter) or the service's nsjail
 * (nsjail mode). Their children share their command line, but their parent is the zygote. The
 * lean zygote is the one started with --lean.
 */
export async function zygotesOf(servicePid: number, mode: string): Promise<Array<{ pid: number; kind: 'full' | 'lean' }>> {
  const found: Array<{ pid: number; kind: 'full' | 'lean' }> = [];
  for (const entry of await fs.readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const argv = (await fs.readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '')).split('\0');
    if (!argv.some((arg) => arg.endsWith('zygote.py'))) continue;
    const parent = await parentOf(entry);
    const launcher = mode === 'nsjail' ? await parentOf(parent) : parent;
    if (launcher === servicePid) found.push({ pid: Number(entry), kind: argv.includes('--lean') ? 'lean' : 'full' });
  }
  return found;
}
