#!/usr/bin/env node
// The gbackup CLI. Runs the compiled code in dist/ (built by `npm run setup`).
import { main } from '../dist/src/cli/main.js';

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err) => {
    console.error(err);
    process.exit(1);
  },
);
