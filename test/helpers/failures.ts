/** Assertions on failures that tests of workflows share. */
import { expect } from 'vitest';
import { WorkflowError } from '../../src/client/client.js';

/** Expects the promise to fail with a workflow or gbackup error of `type` whose message matches; returns the error. */
export async function failsWith(p: Promise<unknown>, type: string, message: RegExp): Promise<Error> {
  const err = await p.then(
    () => null,
    (e: unknown) => e as Error,
  );
  expect(err, `expected ${type}`).not.toBeNull();
  const t = err instanceof WorkflowError ? err.type : err!.name;
  expect(`${t}: ${err!.message}`).toMatch(new RegExp(`^${type}: `));
  expect(err!.message).toMatch(message);
  return err!;
}
