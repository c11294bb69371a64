/**
 * One real Temporal dev server for the whole suite (SQLite file, search attributes
 * registered), and the workflow bundle built once. Both are stopped or removed at the
 * end, also when tests fail.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestProject } from 'vitest/node';
import { bundleWorkflowCode } from '@temporalio/worker';
import { startDevServer } from '../src/dev/devserver.js';
import { workflowsPath } from '../src/workers/worker.js';

declare module 'vitest' {
  export interface ProvidedContext {
    temporalAddress: string;
    workflowCode: string;
  }
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const dir = mkdtempSync(join(tmpdir(), 'gbackup-temporal-'));
  const server = await startDevServer({ dbFile: join(dir, 'temporal.sqlite'), uiPort: null });
  const { code } = await bundleWorkflowCode({ workflowsPath: workflowsPath(), logger: { log() {}, trace() {}, debug() {}, info() {}, warn() {}, error: console.error } });
  project.provide('temporalAddress', server.address);
  project.provide('workflowCode', code);
  return async () => {
    await server.stop();
    rmSync(dir, { recursive: true, force: true });
  };
}
