// Flat ESLint config. Type-checked rules for our TypeScript, and a fence around workflow code:
// workflows run in Temporal's deterministic sandbox, so they may not touch Node, I/O, or the
// modules that do I/O (they import those modules' *types* only).
import { existsSync, readFileSync } from 'node:fs';
import { builtinModules } from 'node:module';
import js from '@eslint/js';
import { defineConfig } from 'eslint/config';
import tseslint from 'typescript-eslint';

const tsFiles = ['src/**/*.ts', 'test/**/*.ts', 'bench/**/*.ts'];
const workflowFiles = ['src/workflows/**/*.ts'];

// tsconfig.json covers src/ and bench/. Test files not covered by any tsconfig are type-checked
// with the root compiler options through the project service's default project. Once a tsconfig
// covers test/ (test/tsconfig.json, or an include in the root one) that fallback must go, because
// typescript-eslint refuses files matched by both.
function testsHaveProject() {
  if (existsSync('test/tsconfig.json')) return true;
  try {
    return /["'](\.\/)?test[/"']/.test(readFileSync('tsconfig.json', 'utf8'));
  } catch {
    return false;
  }
}

const nodeBuiltins = [
  ...new Set(builtinModules.filter((m) => !m.startsWith('_')).map((m) => m.replace(/^node:/, ''))),
];

const workflowImportRule = {
  paths: [
    ...nodeBuiltins.map((name) => ({
      name,
      message: 'Workflows run in a deterministic sandbox: no Node built-ins (move the I/O to an activity).',
      allowTypeImports: true,
    })),
    ...['execa', 'libsql'].map((name) => ({
      name,
      message: 'Workflows do no I/O: call an activity instead.',
      allowTypeImports: true,
    })),
    ...['@temporalio/worker', '@temporalio/activity', '@temporalio/client'].map((name) => ({
      name,
      message: 'Workflow code may use @temporalio/workflow (and @temporalio/common) only.',
      allowTypeImports: true,
    })),
  ],
  patterns: [
    {
      regex: '^node:',
      message: 'Workflows run in a deterministic sandbox: no Node built-ins (move the I/O to an activity).',
      allowTypeImports: true,
    },
    {
      regex: '^(\\.\\./)+(activities|drivers|connectors|copy|catalog)(/|$)',
      message:
        'Workflows import activities, drivers, connectors, copy and catalog as types only (`import type`), and call them through proxyActivities.',
      allowTypeImports: true,
    },
  ],
};

export default defineConfig(
  {
    ignores: ['dist/**', 'node_modules/**', '.tools/**', 'var/**', 'coverage/**', 'tmp-test/**'],
  },
  {
    linterOptions: { reportUnusedDisableDirectives: 'warn' },
  },
  js.configs.recommended,
  {
    files: ['**/*.js', '**/*.mjs', '**/*.cjs'],
    languageOptions: {
      ecmaVersion: 2022,
      sourceType: 'module',
      globals: {
        console: 'readonly',
        process: 'readonly',
        Buffer: 'readonly',
        URL: 'readonly',
        setTimeout: 'readonly',
        clearTimeout: 'readonly',
        setInterval: 'readonly',
        clearInterval: 'readonly',
        setImmediate: 'readonly',
        structuredClone: 'readonly',
      },
    },
  },
  ...tseslint.configs.recommendedTypeChecked.map((config) => ({ ...config, files: tsFiles })),
  {
    files: tsFiles,
    languageOptions: {
      parserOptions: {
        projectService: testsHaveProject()
          ? true
          : {
              allowDefaultProject: ['test/*.ts', 'test/*/*.ts', 'test/*/*/*.ts'],
              maximumDefaultProjectFileMatchCount_THIS_WILL_SLOW_DOWN_LINTING: 200,
            },
        tsconfigRootDir: import.meta.dirname,
      },
    },
    rules: {
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-misused-promises': 'error',
      '@typescript-eslint/restrict-template-expressions': [
        'error',
        { allowNumber: true, allowBoolean: true, allowNullish: true },
      ],
      '@typescript-eslint/no-unused-vars': [
        'error',
        { argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrorsIgnorePattern: '^_' },
      ],
      '@typescript-eslint/no-unsafe-assignment': 'warn',
      '@typescript-eslint/no-unsafe-member-access': 'warn',
      '@typescript-eslint/no-unsafe-call': 'warn',
      '@typescript-eslint/no-unsafe-return': 'warn',
      '@typescript-eslint/no-unsafe-argument': 'warn',
      // String(x) on a value narrowed from `unknown` (database rows) is typed `{}` and trips this
      // rule although the value is a primitive at run time; keep it visible, not fatal.
      '@typescript-eslint/no-base-to-string': 'warn',
      // Activities and driver interfaces are async by contract even when one implementation
      // happens to finish synchronously.
      '@typescript-eslint/require-await': 'off',
    },
  },
  {
    files: ['test/**/*.ts'],
    rules: {
      // expect(obj.method).toHaveBeenCalled() and friends are idiomatic in tests.
      '@typescript-eslint/unbound-method': 'off',
    },
  },
  {
    files: workflowFiles,
    rules: {
      'no-restricted-imports': 'off',
      '@typescript-eslint/no-restricted-imports': ['error', workflowImportRule],
      'no-restricted-globals': [
        'error',
        { name: 'process', message: 'Workflows must be deterministic: pass values in as workflow input.' },
        { name: 'Buffer', message: 'Buffer is a Node API; use Uint8Array in workflows.' },
        { name: 'setTimeout', message: 'Use sleep() from @temporalio/workflow (a durable timer).' },
        { name: 'setInterval', message: 'Use sleep() from @temporalio/workflow in a loop (a durable timer).' },
        { name: 'setImmediate', message: 'Not available in the workflow sandbox.' },
      ],
    },
  },
);
