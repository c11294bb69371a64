/**
 * The node side of an attach, in os-brick's shape: one connector per protocol turns a
 * driver's connection info into a local block device and back. Only the connector reads
 * what the address means (a file, an export, a socket); everything above it passes the
 * connection info along.
 */
import type { Extent } from '../copy/extents.js';
import type { ConnectionInfo } from '../drivers/volume/driver.js';

export interface Connector {
  /** The ConnectionInfo.protocol it serves. */
  readonly protocol: string;
  /** A local block device for the volume; an earlier attempt's device is reused. */
  connectVolume(info: ConnectionInfo): Promise<{ device: string }>;
  /** Idempotent: nothing attached is success. */
  disconnectVolume(info: Pick<ConnectionInfo, 'path'>): Promise<{ detached: string[] }>;
  /** Which byte ranges of the attached volume hold data, or null when it cannot tell (then everything is read). */
  dataExtents(info: Pick<ConnectionInfo, 'path'>, size: number): Promise<Extent[] | null>;
  /** Addresses (ConnectionInfo.path) of what is attached on this host now. */
  attached(): Promise<Set<string>>;
  /** Bytes free where the volume's data lands (for telling a full backend from a broken one), or null when it cannot tell. */
  freeBytes(info: Pick<ConnectionInfo, 'path'>): Promise<number | null>;
}
