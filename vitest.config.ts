import { defineConfig } from 'vitest/config';
import { BaseSequencer, type TestSpecification } from 'vitest/node';

/** Alphabetical, with the replay of every history the suite made last. */
class ReplayLast extends BaseSequencer {
  override async sort(files: TestSpecification[]): Promise<TestSpecification[]> {
    const key = (f: TestSpecification) => (f.moduleId.endsWith('replay.test.ts') ? `~${f.moduleId}` : f.moduleId);
    return [...files].sort((a, b) => key(a).localeCompare(key(b)));
  }
}

// Integration tests share one real Temporal dev server (test/global-setup.ts) and
// real loop devices, so files run one at a time in forked processes: the Temporal
// core bridge is a native module that does not like worker threads.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    exclude: ['test/**/*.soak.test.ts'],
    pool: 'forks',
    fileParallelism: false,
    globalSetup: ['test/global-setup.ts'],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    reporters: ['default'],
    sequence: { sequencer: ReplayLast },
  },
});
