/**
 * Determinism guard. Runs last (see vitest.config.ts): every workflow the suite ran on
 * the shared server is replayed with the current workflow code, and so are the
 * histories committed under test/fixtures/histories (recorded from earlier versions),
 * so a change that would break running workflows fails CI.
 *
 * GBACKUP_SAVE_HISTORIES=1 adds this run's histories (one per type and outcome) to the
 * fixtures.
 */
import { describe, expect, it } from 'vitest';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { inject } from 'vitest';
import { Worker } from '@temporalio/worker';
type History = Parameters<typeof Worker.runReplayHistory>[1];
import { execa } from 'execa';
import { temporalBinary } from '../src/dev/devserver.js';
import { GbackupClient } from '../src/client/client.js';
import { WORKFLOWS } from '../src/api.js';
import { quietTemporal } from './helpers/env.js';

const FIXTURES = join(import.meta.dirname, 'fixtures', 'histories');
/** The whole suite closes far more workflows than this (the fault matrix alone runs 64); run alone, this file fails on purpose. */
const MIN_HISTORIES_FROM_THIS_RUN = 100;

/** The few fields of a history this file reads. */
interface HistoryShape {
  events?: {
    workflowExecutionStartedEventAttributes?: { workflowType?: { name?: string }; originalExecutionRunId?: string };
    workflowExecutionCompletedEventAttributes?: unknown;
    workflowExecutionFailedEventAttributes?: unknown;
    workflowExecutionCanceledEventAttributes?: unknown;
  }[];
}

describe('workflow determinism', () => {
  it('replays every workflow history of this run and every committed history without a determinism error', async () => {
    quietTemporal();
    const client = await GbackupClient.connect({ temporal: { address: inject('temporalAddress'), namespace: 'default', taskQueue: 'unused' } });
    const bundle = { code: inject('workflowCode') };
    try {
      const histories: { workflowId: string; history: History; label: string }[] = [];
      for await (const h of client.client.workflow.list({ query: 'ExecutionStatus != "Running"' }).intoHistories()) {
        histories.push({ ...h, label: h.workflowId });
      }
      const fromThisRun = histories.length;
      const typesThisRun = new Set(
        (histories as unknown as { history: HistoryShape }[]).map((h) => h.history.events?.[0]?.workflowExecutionStartedEventAttributes?.workflowType?.name ?? 'unknown'),
      );
      if (process.env.GBACKUP_SAVE_HISTORIES) {
        // GBACKUP_SAVE_HISTORIES=PREFIX keeps one history per workflow type, outcome and path
        // (the sequence of activity and local-activity types it ran), named PREFIX-type-outcome-N.
        const prefix = process.env.GBACKUP_SAVE_HISTORIES === '1' ? '' : `${process.env.GBACKUP_SAVE_HISTORIES}-`;
        const seen = new Set<string>();
        const perKind = new Map<string, number>();
        for (const h of histories as unknown as { workflowId: string; history: HistoryShape }[]) {
          const first = h.history.events?.[0]?.workflowExecutionStartedEventAttributes?.workflowType?.name ?? 'unknown';
          const last = h.history.events?.[h.history.events.length - 1];
          const outcome = last?.workflowExecutionCompletedEventAttributes ? 'completed' : last?.workflowExecutionFailedEventAttributes ? 'failed' : last?.workflowExecutionCanceledEventAttributes ? 'cancelled' : 'other';
          const path = JSON.stringify(h.history.events?.map((e) => (e as { activityTaskScheduledEventAttributes?: { activityType?: { name?: string } } }).activityTaskScheduledEventAttributes?.activityType?.name ?? (e as { markerRecordedEventAttributes?: { markerName?: string } }).markerRecordedEventAttributes?.markerName ?? '').filter((n) => n !== ''));
          if (seen.has(`${first}-${outcome}-${path}`)) continue;
          seen.add(`${first}-${outcome}-${path}`);
          const n = (perKind.get(`${first}-${outcome}`) ?? 0) + 1;
          perKind.set(`${first}-${outcome}`, n);
          if (n > 6) continue;
          const key = prefix === '' ? `${first}-${outcome}` : `${prefix}${first}-${outcome}-${n}`;
          // The CLI's JSON is what the replayer reads (and what the Temporal docs suggest for replay fixtures).
          const runId = h.history.events?.[0]?.workflowExecutionStartedEventAttributes?.originalExecutionRunId ?? '';
          const { stdout } = await execa(temporalBinary(), ['workflow', 'show', '--address', inject('temporalAddress'), '-w', h.workflowId, '-r', runId, '--output', 'json']);
          writeFileSync(join(FIXTURES, `${key}.json`), stdout);
        }
      }
      for (const f of readdirSync(FIXTURES).filter((x) => x.endsWith('.json'))) {
        // The replayer takes the JSON as it is (it converts it with its own protobuf types).
        histories.push({ workflowId: `fixture-${f}`, history: JSON.parse(readFileSync(join(FIXTURES, f), 'utf8')) as History, label: `fixture ${f}` });
      }
      const failures: string[] = [];
      let replayed = 0;
      for await (const r of Worker.runReplayHistories({ workflowBundle: bundle }, histories.map(({ workflowId, history }) => ({ workflowId, history })))) {
        replayed++;
        if (r.error) failures.push(`${r.workflowId}: ${r.error.name}: ${r.error.message}`);
      }
      console.log(`replayed ${replayed} histories (${fromThisRun} from this run, ${replayed - fromThisRun} committed fixtures)`);
      expect(failures).toEqual([]);
      // The suite runs hundreds of workflows (the fault matrix alone is 64 backups and
      // restores); far fewer means the listing, not the code, was tested.
      expect(fromThisRun).toBeGreaterThanOrEqual(MIN_HISTORIES_FROM_THIS_RUN);
      // Every workflow type the worker runs was replayed from this run's code paths.
      expect([...typesThisRun].sort()).toEqual(expect.arrayContaining(Object.values(WORKFLOWS).sort()));
    } finally {
      await client.close();
    }
  });
});
