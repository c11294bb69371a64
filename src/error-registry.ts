/**
 * The one list of gbackup's error classes, and the three name lists derived from what
 * each class declares (errors.ts): which failures Temporal must not retry, which are bad
 * input (CLI exit 2), which mean a damaged backup. A new error class is added to its
 * module and, if that module is new, to MODULES here; nothing else is hand-listed.
 *
 * Pure (no Temporal, no Node I/O): the workflow sandbox imports it for retry policies.
 */
import * as core from './errors.js';
import * as chunked from './drivers/backup/errors.js';
import { GbackupError } from './errors.js';

const MODULES: Record<string, unknown>[] = [core, chunked];

type ErrorClass = typeof GbackupError;
const isErrorClass = (v: unknown): v is ErrorClass => typeof v === 'function' && (v === GbackupError || v.prototype instanceof GbackupError);

export const ERROR_CLASSES: readonly ErrorClass[] = [...new Set(MODULES.flatMap((m) => Object.values(m).filter(isErrorClass)))];

/** Error types a retry cannot cure. zod's own error (a schema refusing an activity input) is one too. */
export const NON_RETRYABLE_ERROR_TYPES: string[] = [...ERROR_CLASSES.filter((c) => c.permanent).map((c) => c.name), 'ZodError'];

/** Error types that mark bad input, for the CLI's exit code 2 when they come back from a workflow. */
export const INPUT_ERROR_TYPES: ReadonlySet<string> = new Set([...ERROR_CLASSES.filter((c) => c.badInput).map((c) => c.name), 'ZodError']);

/** Failure types that mean the stored backup itself is damaged. */
export const DAMAGED_BACKUP_TYPES: ReadonlySet<string> = new Set(ERROR_CLASSES.filter((c) => c.damaged).map((c) => c.name));
