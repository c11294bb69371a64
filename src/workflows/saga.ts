/**
 * A compensation stack. Steps are pushed *before* the action they undo, because every
 * action and every undo is idempotent: if the action crashed half-way, its undo still
 * finds and removes what it made. Unwinding runs in reverse, shielded from cancellation,
 * and one failed undo does not stop the others.
 */
import { CancellationScope, log } from '@temporalio/workflow';

export class Saga {
  private readonly steps: { name: string; undo: () => Promise<unknown> }[] = [];

  add(name: string, undo: () => Promise<unknown>): void {
    this.steps.push({ name, undo });
  }

  /** Forgets every undo: the work they would undo is now final. */
  clear(): void {
    this.steps.length = 0;
  }

  /** Runs every undo, newest first; returns the names of those that failed. */
  async unwind(): Promise<string[]> {
    const failed: string[] = [];
    await CancellationScope.nonCancellable(async () => {
      while (this.steps.length > 0) {
        const step = this.steps.pop()!;
        try {
          await step.undo();
        } catch (err) {
          failed.push(step.name);
          log.error('compensation failed', { step: step.name, error: String(err) });
        }
      }
    });
    return failed;
  }
}
