import { defineConfig } from 'vitest/config';

// `npm run soak`: the long random-fault run; not part of `npm test`.
export default defineConfig({
  test: {
    include: ['test/**/*.soak.test.ts'],
    pool: 'forks',
    fileParallelism: false,
    globalSetup: ['test/global-setup.ts'],
    testTimeout: 3_600_000,
    hookTimeout: 120_000,
  },
});
