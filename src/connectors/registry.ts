/**
 * The connector factory, keyed on ConnectionInfo.protocol (os-brick's
 * `InitiatorConnector.factory`). Adding a protocol (an NBD or FUSE attachment, say) is a
 * connector module and one line in CONNECTORS.
 */
import type { ConnectionInfo } from '../drivers/volume/driver.js';
import { InvalidInput } from '../errors.js';
import type { Connector } from './connector.js';
import { LoopConnector } from './loop.js';

/** Each connector gets the directories it may attach from: connection info arrives through history and is not trusted. */
const CONNECTORS: Record<string, (allowedRoots: readonly string[]) => Connector> = {
  file: (roots) => new LoopConnector(roots),
};

/** All connectors of a node, dispatching on the protocol of what they are handed. */
export class Connectors {
  private readonly byProtocol: Map<string, Connector>;

  constructor(allowedRoots: readonly string[]) {
    this.byProtocol = new Map(Object.entries(CONNECTORS).map(([p, make]) => [p, make(allowedRoots)]));
  }

  for(info: { protocol: string }): Connector {
    const c = this.byProtocol.get(info.protocol);
    if (!c) throw new InvalidInput(`no connector for protocol '${info.protocol}' on this node (known: ${[...this.byProtocol.keys()].join(', ')})`);
    return c;
  }

  connectVolume(info: ConnectionInfo): Promise<{ device: string }> {
    return this.for(info).connectVolume(info);
  }

  disconnectVolume(info: Pick<ConnectionInfo, 'path' | 'protocol'>): Promise<{ detached: string[] }> {
    return this.for(info).disconnectVolume(info);
  }

  dataExtents(info: Pick<ConnectionInfo, 'path' | 'protocol'>, size: number) {
    return this.for(info).dataExtents(info, size);
  }

  freeBytes(info: Pick<ConnectionInfo, 'path' | 'protocol'>) {
    return this.for(info).freeBytes(info);
  }

  /** What every connector has attached on this host. */
  async attached(): Promise<Set<string>> {
    const all = new Set<string>();
    for (const c of this.byProtocol.values()) for (const a of await c.attached()) all.add(a);
    return all;
  }
}
