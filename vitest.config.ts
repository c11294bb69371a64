import { defineConfig } from 'vitest/config';

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
  },
});
