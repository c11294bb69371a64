/**
 * One real Temporal dev server for the whole suite (SQLite file, search attributes
 * registered), one real PostgreSQL for the catalog tests (test/helpers/postgres.ts), and
 * the workflow bundle built once. All are stopped or removed at the end, also when tests
 * fail or a start fails.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestProject } from 'vitest/node';
import { bundleWorkflowCode } from '@temporalio/worker';
import { startDevServer } from '../src/dev/devserver.js';
import { workflowsPath } from '../src/workers/worker.js';
import { startPostgres, type ProvidedPostgres } from './helpers/postgres.js';

declare module 'vitest' {
  export interface ProvidedContext {
    temporalAddress: string;
    workflowCode: string;
    postgres: ProvidedPostgres;
  }
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const dir = mkdtempSync(join(tmpdir(), 'gbackup-temporal-'));
  // What has started so far, undone last-first: at the end, or at once when a later start fails
  // (vitest runs no teardown of a setup that threw).
  const undo: (() => Promise<void>)[] = [async () => rmSync(dir, { recursive: true, force: true })];
  const teardown = async () => {
    const failures: unknown[] = [];
    for (const step of undo.splice(0).reverse()) await step().catch((e: unknown) => failures.push(e));
    if (failures.length > 0) throw new AggregateError(failures, 'global teardown failed');
  };
  try {
    // Side by side, as each takes seconds; both are waited for, so neither is left running unseen.
    const started = await Promise.allSettled([startDevServer({ dbFile: join(dir, 'temporal.sqlite'), uiPort: null }), startPostgres()]);
    for (const s of started) if (s.status === 'fulfilled') undo.push(() => s.value.stop());
    const [server, postgres] = started;
    if (server.status === 'rejected') throw server.reason;
    if (postgres.status === 'rejected') throw postgres.reason;
    const { code } = await bundleWorkflowCode({ workflowsPath: workflowsPath(), logger: { log() {}, trace() {}, debug() {}, info() {}, warn() {}, error: console.error } });
    project.provide('temporalAddress', server.value.address);
    project.provide('workflowCode', code);
    const { url, passwordFile, adminUrl } = postgres.value;
    project.provide('postgres', { url, passwordFile, adminUrl });
  } catch (e) {
    await teardown().catch((t: unknown) => console.error('cleaning up after the failed setup:', t));
    throw e;
  }
  return teardown;
}
