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
