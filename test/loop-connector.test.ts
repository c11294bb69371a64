/**
 * The loop connector attaching several volumes at once (a copy attaches its source and
 * destination together): each gets its own device, backed by its own file, with the
 * right read-only flag, also while another process grabs loop devices with
 * `losetup --find` at the same time; and a detach leaves none behind. Real loop devices.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { claimFreeDevice, listLoopDevices, LoopConnector } from '../src/connectors/loop.js';
import type { ConnectionInfo } from '../src/drivers/volume/driver.js';
import { MiB } from '../src/size.js';

let dir: string;
let connector: LoopConnector;

const volume = (name: string, readOnly: boolean): ConnectionInfo => {
  const path = join(dir, `${name}.img`);
  writeFileSync(path, '');
  truncateSync(path, 4 * MiB);
  return { protocol: 'file', path, readOnly, backend: 'test' };
};

/** Loop devices bound to files in this test's directory. */
const ours = async () => (await listLoopDevices()).filter((d) => d.backingFile.startsWith(`${dir}/`));

beforeEach(() => {
  dir = mkdtempSync('/var/tmp/gbackup-loopconn-');
  connector = new LoopConnector([dir]);
});
afterEach(async () => {
  const left = (await ours()).map((d) => d.device);
  if (left.length > 0) await execa('losetup', ['--detach', ...left], { reject: false });
  rmSync(dir, { recursive: true, force: true });
});

describe('loop connector, attaching in parallel', () => {
  it('two volumes at once: distinct devices, each backed by its file with its read-only flag; detach leaves none', async () => {
    const src = volume('source', true);
    const dst = volume('dest', false);
    const [a, b] = await Promise.all([connector.connectVolume(src), connector.connectVolume(dst)]);
    expect(a.device).not.toBe(b.device);
    const bound = new Map((await ours()).map((d) => [d.device, d]));
    expect(bound.get(a.device)).toEqual({ device: a.device, backingFile: src.path, readOnly: true });
    expect(bound.get(b.device)).toEqual({ device: b.device, backingFile: dst.path, readOnly: false });
    // Attaching again finds the same devices (idempotent), also in parallel.
    const again = await Promise.all([connector.connectVolume(src), connector.connectVolume(dst)]);
    expect(again.map((r) => r.device)).toEqual([a.device, b.device]);
    await Promise.all([connector.disconnectVolume(src), connector.disconnectVolume(dst)]);
    expect(await ours()).toEqual([]);
  });

  it('a claimed device is not handed out again until released', async () => {
    // Two free device nodes at least: bind two files and let them go again.
    const a = volume('a', false);
    const b = volume('b', false);
    await Promise.all([connector.connectVolume(a), connector.connectVolume(b)]);
    await Promise.all([connector.disconnectVolume(a), connector.disconnectVolume(b)]);
    const first = claimFreeDevice();
    const second = claimFreeDevice();
    try {
      expect(first).not.toBeNull();
      expect(second).not.toBeNull();
      expect(second!.device).not.toBe(first!.device);
      first!.release();
      const again = claimFreeDevice();
      expect(again?.device).toBe(first!.device);
      again?.release();
    } finally {
      first?.release();
      second?.release();
    }
  });

  it('six at once while another process attaches with losetup --find: every file on exactly one device of its own', async () => {
    const volumes = Array.from({ length: 6 }, (_, i) => volume(`v${i}`, i % 2 === 0));
    const others = Array.from({ length: 6 }, (_, i) => volume(`other${i}`, false));
    // The other process: plain `losetup --find`, one after another, racing ours for the lowest free devices.
    const rival = execa('sh', ['-c', 'for f in "$@"; do losetup --find -- "$f"; done', 'sh', ...others.map((o) => o.path)]);
    const attached = await Promise.all(volumes.map((v) => connector.connectVolume(v)));
    await rival;
    const bound = await ours();
    const devices = attached.map((r) => r.device);
    expect(new Set(devices).size).toBe(volumes.length);
    for (const [i, v] of volumes.entries()) {
      const on = bound.filter((d) => d.backingFile === v.path);
      expect(on, v.path).toEqual([{ device: devices[i], backingFile: v.path, readOnly: v.readOnly }]);
    }
    // The rival's files each got a device too, none of ours.
    for (const o of others) expect(bound.filter((d) => d.backingFile === o.path)).toHaveLength(1);
    await Promise.all([...volumes, ...others].map((v) => connector.disconnectVolume(v)));
    expect(await ours()).toEqual([]);
  });
});
