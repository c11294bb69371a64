/**
 * Every activity heartbeats while it runs, so a worker that dies mid-step is noticed
 * within the heartbeat timeout instead of the (long) start-to-close timeout, and a
 * cancel reaches the step. The copies are the exception: they heartbeat their own offset,
 * which a detail-less keep-alive heartbeat would overwrite.
 */
import type { Context } from '@temporalio/activity';
import type { ActivityInterceptorsFactory } from '@temporalio/worker';

const OWN_HEARTBEATS = new Set(['copyVolume', 'backupToObjects', 'restoreFromObjects']);

export const keepAlive: ActivityInterceptorsFactory = (ctx: Context) => ({
  inbound: {
    async execute(input, next) {
      const timeout = ctx.info.heartbeatTimeoutMs;
      if (!timeout || OWN_HEARTBEATS.has(ctx.info.activityType)) return next(input);
      const t = setInterval(() => ctx.heartbeat(), Math.max(200, Math.min(1000, timeout / 3)));
      try {
        return await next(input);
      } finally {
        clearInterval(t);
      }
    },
  },
});
