/**
 * Control side of a consistency group (workflows/group.ts): everything is checked before
 * the pre hook runs, so a group that cannot be taken changes nothing, hooks included.
 */
import type { VolumeView } from '../api.js';
import { BackupInProgress, HookNotFound, InvalidInput, InvalidStatus, NoEligibleNode } from '../errors.js';
import type { ControlDeps } from './control.js';
import type { Timeouts } from './plans.js';

export interface GroupPlan {
  /** Where the hooks run: the node the in-use volumes are attached to, else one reaching their backends. */
  node: string;
  timeouts: Timeouts;
  /** Each named hook's own time limit, for the activity's start-to-close timeout. */
  hookTimeoutMs: { pre?: number; post?: number };
}

/** Same spreading as chooseNode: a retry of the plan picks the same node. */
function spread(key: string, n: number): number {
  let h = 0;
  for (const ch of key) h = (h * 31 + ch.charCodeAt(0)) >>> 0;
  return h % n;
}

export function createGroupActivities(rt: ControlDeps) {
  const hook = (name: string, role: string) => {
    const hooks = rt.config.hooks ?? [];
    const h = hooks.find((x) => x.name === name);
    if (!h) throw new HookNotFound(`${role} hook '${name}' is not declared in the config (hooks: ${hooks.map((x) => x.name).join(', ') || 'none'})`);
    return h;
  };
  return {
    async planGroup(input: { groupId: string; volumeIds: string[]; target?: string; preHook?: string; postHook?: string }): Promise<GroupPlan> {
      const c = rt.catalog;
      const pre = input.preHook !== undefined ? hook(input.preHook, 'pre') : undefined;
      const post = input.postHook !== undefined ? hook(input.postHook, 'post') : undefined;
      rt.target(input.target);
      const volumes: VolumeView[] = [];
      for (const id of input.volumeIds) {
        const v = await c.volume(id);
        if (v.status === 'backing-up' || (await c.listBackups(v.id)).some((b) => b.status === 'creating')) {
          throw new BackupInProgress(`volume '${v.id}' of group '${input.groupId}' is already being backed up`);
        }
        if (v.status !== 'available' && v.status !== 'in-use') {
          throw new InvalidStatus(`volume '${v.id}' of group '${input.groupId}' is '${v.status}'; a group backup needs every volume 'available' or 'in-use'`);
        }
        volumes.push(v);
      }
      // A freeze hook acts on the host the instance's devices are on: all of them must be on one.
      const attached = [...new Set(volumes.map((v) => v.attachedNode).filter((n): n is string => n !== null))];
      if (attached.length > 1) {
        throw new InvalidInput(
          `the in-use volumes of group '${input.groupId}' are attached on different nodes (${volumes.filter((v) => v.attachedNode).map((v) => `${v.id} on ${v.attachedNode}`).join(', ')}); the hooks run on one node`,
        );
      }
      let node = attached[0];
      if (node === undefined) {
        const backends = [...new Set(volumes.map((v) => v.backend))];
        const all = rt.config.nodes.filter((n) => backends.every((b) => n.backends.includes(b)));
        const some = all.length > 0 ? all : rt.config.nodes.filter((n) => backends.some((b) => n.backends.includes(b)));
        if (some.length === 0) throw new NoEligibleNode(`no node reaches the backends of group '${input.groupId}' (${backends.join(', ')}) to run its hooks`);
        node = some[spread(input.groupId, some.length)]!.name;
      }
      return {
        node,
        timeouts: { scheduleToStartMs: rt.config.timeouts.scheduleToStart * 1000, heartbeatMs: rt.config.timeouts.heartbeat * 1000 },
        hookTimeoutMs: { ...(pre ? { pre: pre.timeoutSeconds * 1000 } : {}), ...(post ? { post: post.timeoutSeconds * 1000 } : {}) },
      };
    },
  };
}

export type GroupActivities = ReturnType<typeof createGroupActivities>;
