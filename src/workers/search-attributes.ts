/**
 * gbackup's workflows set custom search attributes (api.ts SEARCH_ATTRIBUTES); a namespace
 * without them refuses every workflow start ("no mapping defined for search attribute"),
 * and a workflow that upserts one fails its workflow tasks. So a worker makes sure they
 * exist before it polls: it adds the missing ones through the operator service when it
 * may (`temporal.registerSearchAttributes`, default true) and the server lets it, and
 * otherwise refuses to start with the exact commands that register them. The CLI turns
 * the server's refusal into the same message.
 */
import type { ConnectionLike } from '@temporalio/client';

/** Only the operator service is used: any connection (client or a test's) will do. */
type Operator = Pick<ConnectionLike, 'operatorService'>;
import { SEARCH_ATTRIBUTES } from '../api.js';
import { MissingSearchAttributes } from '../errors.js';

/** temporal.api.enums.v1.IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD; every gbackup attribute is a Keyword. */
const INDEXED_VALUE_TYPE_KEYWORD = 2;

export const SEARCH_ATTRIBUTE_NAMES: string[] = Object.values(SEARCH_ATTRIBUTES).map((k) => k.name);

export interface Target {
  address: string;
  namespace: string;
}

/** What an operator runs to register `names` by hand, one command per attribute. */
function registerCommands(names: string[], t: Target): string[] {
  return names.map((n) => `temporal operator search-attribute create --address ${t.address} --namespace ${t.namespace} --name ${n} --type Keyword`);
}

export function missingMessage(names: string[], t: Target, why: string): string {
  return (
    `Temporal namespace '${t.namespace}' at ${t.address} lacks gbackup's search attribute${names.length > 1 ? 's' : ''} ${names.join(', ')} (${why}); ` +
    `register ${names.length > 1 ? 'them' : 'it'} once with:\n  ${registerCommands(names, t).join('\n  ')}`
  );
}

/** Attributes of ours the namespace lacks (every one of ours is a Keyword). */
export async function missingSearchAttributes(connection: Operator, namespace: string): Promise<string[]> {
  const r = await connection.operatorService.listSearchAttributes({ namespace });
  const have = r.customAttributes ?? {};
  return SEARCH_ATTRIBUTE_NAMES.filter((n) => have[n] === undefined);
}

/**
 * Adds what is missing when allowed; returns the names added. Throws
 * MissingSearchAttributes (listing the attributes and the commands) when it may not or
 * the server refuses.
 */
export async function ensureSearchAttributes(connection: Operator, t: Target & { register: boolean }): Promise<string[]> {
  const missing = await missingSearchAttributes(connection, t.namespace);
  if (missing.length === 0) return [];
  if (!t.register) throw new MissingSearchAttributes(missingMessage(missing, t, 'temporal.registerSearchAttributes is off, so the worker does not add them'));
  try {
    await connection.operatorService.addSearchAttributes({
      namespace: t.namespace,
      searchAttributes: Object.fromEntries(missing.map((n) => [n, INDEXED_VALUE_TYPE_KEYWORD])),
    });
  } catch (e) {
    throw new MissingSearchAttributes(missingMessage(missing, t, `the server refused to add them: ${(e as { details?: string }).details ?? (e as Error).message}`));
  }
  // Visible to workflow starts only once the namespace's cache has them.
  const deadline = Date.now() + 15_000;
  for (;;) {
    const still = await missingSearchAttributes(connection, t.namespace);
    if (still.length === 0) return missing;
    if (Date.now() > deadline) throw new MissingSearchAttributes(missingMessage(still, t, 'they were added but do not show up'));
    await new Promise((r) => setTimeout(r, 250));
  }
}

/** The attribute the server named when it refused a workflow start, or null when the refusal was about something else. */
export function refusedSearchAttribute(e: unknown): string | null {
  let cur: unknown = e;
  for (let depth = 0; cur && depth < 4; depth++) {
    const text = `${(cur as { details?: string }).details ?? ''} ${(cur as Error).message ?? ''}`;
    const m = /no mapping defined for search attribute (\w+)/.exec(text);
    if (m) return m[1]!;
    cur = (cur as { cause?: unknown }).cause;
  }
  return null;
}
