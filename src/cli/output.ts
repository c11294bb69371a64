/** What the CLI prints: one JSON document on stdout with --json, tables otherwise; messages on stderr. */
import { formatBytes } from '../size.js';

export class UsageError extends Error {
  readonly exitCode = 2;
}

export interface Out {
  json: boolean;
  result(value: unknown, human: () => string): void;
  info(msg: string): void;
}

export function makeOut(json: boolean): Out {
  return {
    json,
    result(value, human) {
      process.stdout.write(json ? `${JSON.stringify(value, null, 2)}\n` : `${human()}\n`);
    },
    info(msg) {
      process.stderr.write(`${msg}\n`);
    },
  };
}

/** A plain aligned table; sizes and nulls made readable. */
export function table(rows: Record<string, unknown>[], columns: string[]): string {
  if (rows.length === 0) return '(none)';
  const cell = (c: string, v: unknown) => (v === null || v === undefined ? '-' : (c === 'size' || c === 'storedBytes' || c.endsWith('Bytes')) && typeof v === 'number' ? formatBytes(v) : String(v));
  const data = rows.map((r) => columns.map((c) => cell(c, r[c])));
  const widths = columns.map((c, i) => Math.max(c.length, ...data.map((d) => d[i]!.length)));
  const line = (cells: string[]) => cells.map((s, i) => s.padEnd(widths[i]!)).join('  ').trimEnd();
  return [line(columns), ...data.map(line)].join('\n');
}

export function record(obj: Record<string, unknown>): string {
  const w = Math.max(...Object.keys(obj).map((k) => k.length));
  return Object.entries(obj)
    .map(([k, v]) => `${k.padEnd(w)}  ${v === null || v === undefined ? '-' : typeof v === 'object' ? JSON.stringify(v) : String(v)}`)
    .join('\n');
}
