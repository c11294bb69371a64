/** Cleanup for the benches: every step runs, a failed one is reported and does not stop the rest. */
import { execa } from 'execa';
import { listLoopDevices } from '../src/connectors/loop.js';

export function cleanupStep(say: (m: string) => void) {
  return async (what: string, fn: () => unknown): Promise<void> => {
    try {
      await fn();
    } catch (e) {
      say(`cleanup: ${what} failed: ${(e as Error).message}`);
    }
  };
}

/** Only loop devices backed by files under `dir`: other runs (tests) may have their own. */
export async function detachLoopsUnder(dir: string): Promise<void> {
  for (const d of await listLoopDevices()) if (d.backingFile.startsWith(`${dir}/`)) await execa('losetup', ['--detach', d.device], { reject: false });
}
