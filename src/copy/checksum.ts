/** Checksums of volume images, for verifying a restore bit for bit. */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { MiB } from '../size.js';

export async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(path, { highWaterMark: 4 * MiB })) h.update(chunk as Buffer);
  return h.digest('hex');
}
