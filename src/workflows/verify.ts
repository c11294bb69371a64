/**
 * verifyBackup: reads back every chunk a restore of the backup would read and checks its
 * sha256 (after decryption and decompression). Nothing changes anywhere; a damaged
 * backup fails the workflow with BackupCorrupt naming every bad chunk. A workflow, so
 * operators can run it on a Temporal schedule and see the outcome in the UI.
 */
import { upsertSearchAttributes } from '@temporalio/workflow';
import { SEARCH_ATTRIBUTES, VerifyBackupInput, type VerifyResult } from '../api.js';
import { control } from './activities.js';
import { parseInput, Tracker } from './common.js';

export async function verifyBackup(raw: VerifyBackupInput): Promise<VerifyResult> {
  const input = parseInput(VerifyBackupInput, raw);
  const tracker = new Tracker({ backupId: input.backupId });
  upsertSearchAttributes([
    { key: SEARCH_ATTRIBUTES.backupId, value: input.backupId },
    { key: SEARCH_ATTRIBUTES.status, value: 'verifying' },
  ]);
  tracker.phase('validating');
  const { target } = await control.beginVerify({ backupId: input.backupId });
  upsertSearchAttributes([{ key: SEARCH_ATTRIBUTES.target, value: target }]);
  tracker.phase('reading chunks');
  try {
    const r = await control.verifyObjectBackup({ target, backupId: input.backupId });
    tracker.phase('done');
    tracker.status('verified');
    return { backupId: r.backupId, chunks: r.chunks, bytes: r.bytes };
  } catch (err) {
    tracker.status('corrupt');
    throw err;
  }
}
