/**
 * Temporal's own log lines in a gbackup process. WARN by default (GBACKUP_LOG_LEVEL
 * changes it), and without the warnings that describe gbackup's design rather than a
 * problem: a node worker runs activities only, so "No workflows registered" is expected.
 */
import { formatWithOptions } from 'node:util';
import { DefaultLogger, Runtime as TemporalRuntime, type LogEntry, type LogLevel } from '@temporalio/worker';

/** Messages that are true by design in gbackup and would only alarm an operator. */
const BY_DESIGN = [/^No workflows registered, not polling for workflow tasks$/];

const format = formatWithOptions.bind(undefined, { colors: false });

export function logLine(entry: LogEntry): string | null {
  if (BY_DESIGN.some((re) => re.test(entry.message))) return null;
  const date = new Date(Number(entry.timestampNanos / 1_000_000n)).toISOString();
  return `${date} [${entry.level}] ${entry.message}${entry.meta === undefined ? '' : ` ${format(entry.meta)}`}\n`;
}

export function installLogger(fallback: LogLevel = 'WARN'): void {
  const level = (process.env.GBACKUP_LOG_LEVEL ?? fallback) as LogLevel;
  TemporalRuntime.install({
    logger: new DefaultLogger(level, (entry) => {
      const line = logLine(entry);
      if (line !== null) process.stderr.write(line);
    }),
  });
}
