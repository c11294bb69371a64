/**
 * Chunked object backups against restic, on the same bytes and the same MinIO, in one run:
 *
 *   1 GiB of random data in a file -> backup to MinIO (loopback) -> restore, timed cold
 *   (page cache dropped before every step when running as root), versus `restic backup`
 *   and `restic restore` into the same MinIO. Both compress (zstd) and encrypt.
 *   gbackup's restore ends with the volume fdatasync-ed; restic's does not, so its restore
 *   is timed together with an fdatasync of every file it restored (opened and synced one by
 *   one, not a global `sync` that would also flush whatever else is dirty), and that
 *   synced time is the reference.
 *   Then 1% of the chunks change, and an incremental backup (no changed-block tracking: the
 *   whole volume is read and hashed) is timed against the full one, and against a plain
 *   read of the same file (4 reads of 4 MiB in flight, nothing else) in the same round.
 *   Peak RSS of a backup and a restore of 1 GiB and 4 GiB volumes, each in a child process
 *   (process.resourceUsage().maxRSS), shows whether memory stays flat as volumes grow.
 *
 * Targets: backup faster than restic; restore at least 1.1x restic's synced restore; the
 * 1%-changed incremental in at most 15% of the full backup's time.
 *
 * BENCH_CHUNK_SWEEP=1 also times full backup, restore and the 1% incremental at 1, 4, 8
 * and 16 MiB chunks (the measurement behind DEFAULT_CHUNK_SIZE). BENCH_RSS_GIB=1,4 picks
 * the RSS sizes. Writes var/bench/objects.json. Run: npm run build && node dist/bench/objects.js
 * Everything lives in a temporary directory under /var/tmp, removed at the end with MinIO.
 */
import { createCipheriv, createHash, randomBytes } from 'node:crypto';
import { createReadStream, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, open, readdir, rm, truncate } from 'node:fs/promises';
import { cpus, totalmem } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ListObjectsV2Command } from '@aws-sdk/client-s3';
import { execa } from 'execa';
import { repoRoot } from '../src/dev/devserver.js';
import { backupToStore, DEFAULT_CONCURRENCY } from '../src/drivers/backup/backup.js';
import { ChunkedTarget } from '../src/drivers/backup/target.js';
import { DEFAULT_RESTORE_CONCURRENCY, restoreFromStore } from '../src/drivers/backup/restore.js';
import { ObjectTarget } from '../src/drivers/backup/stores/registry.js';
import { DEFAULT_CHUNK_SIZE } from '../src/drivers/backup/format.js';
import { MiB } from '../src/size.js';
import { MINIO_CREDENTIALS, startMinio, type Minio } from '../test/helpers/minio.js';

const GiB = 1024 * MiB;
const say = (m: string) => process.stderr.write(`bench: ${m}\n`);
const fmt = (n: number, d = 2) => n.toFixed(d);
const mb = (bytes: number) => fmt(bytes / 1e6, 1);
const BUCKET = 'bench';
const RESTIC_PASSWORD = 'gbackup-bench-restic';

// ---------------------------------------------------------------------------------------
// Tools

/** A fresh MinIO for one measurement, so earlier rounds' objects and disk state do not weigh on it. */
async function withMinio<T>(dir: string, fn: (m: Minio) => Promise<T>): Promise<T> {
  const m = await startMinio({ bucket: BUCKET, baseDir: dir });
  try {
    return await fn(m);
  } finally {
    await m.stop();
  }
}

/** Bytes and objects under a prefix of the bench bucket. */
async function prefixUsage(m: Minio, prefix: string): Promise<{ bytes: number; objects: number }> {
  let bytes = 0;
  let objects = 0;
  let token: string | undefined;
  do {
    const r = await m.client.send(new ListObjectsV2Command({ Bucket: BUCKET, Prefix: prefix, ...(token ? { ContinuationToken: token } : {}) }));
    for (const o of r.Contents ?? []) {
      bytes += o.Size ?? 0;
      objects++;
    }
    token = r.IsTruncated ? r.NextContinuationToken : undefined;
  } while (token);
  return { bytes, objects };
}

// The SDK warns once per process that releases after January 2027 need Node 22; noise here.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
const isRoot = process.getuid?.() === 0;
/**
 * Data cold, metadata warm: drop the page cache (1), not dentries and inodes (3), so both
 * tools read their source and MinIO its objects from disk, while MinIO's directory lookups
 * behave as on a running server rather than a freshly booted one.
 */
async function dropCaches(): Promise<void> {
  if (!isRoot) return;
  await execa('sync');
  writeFileSync('/proc/sys/vm/drop_caches', '1');
}

async function timed<T>(fn: () => Promise<T>): Promise<{ seconds: number; value: T }> {
  await dropCaches();
  const t0 = performance.now();
  const value = await fn();
  return { seconds: (performance.now() - t0) / 1000, value };
}

/** Incompressible bytes, fast: AES-CTR keystream. */
async function randomFile(path: string, size: number): Promise<void> {
  const cipher = createCipheriv('aes-128-ctr', randomBytes(16), Buffer.alloc(16));
  const zeros = Buffer.alloc(16 * MiB);
  const fh = await open(path, 'w');
  try {
    for (let at = 0; at < size; at += zeros.length) {
      const n = Math.min(zeros.length, size - at);
      await fh.write(cipher.update(zeros.subarray(0, n)), 0, n, at);
    }
  } finally {
    await fh.close();
  }
}

/** Changes `fraction` of the chunks (64 KiB of new bytes in each), seeded for repeatability. */
async function changeChunks(path: string, size: number, chunkSize: number, fraction: number, seed: number): Promise<number> {
  const count = Math.ceil(size / chunkSize);
  const n = Math.max(1, Math.round(count * fraction));
  const picked = new Set<number>();
  let x = 12345 + seed;
  while (picked.size < n) {
    x = (x * 1103515245 + 12345) % 2 ** 31;
    picked.add(x % count);
  }
  const fh = await open(path, 'r+');
  try {
    for (const i of picked) await fh.write(randomBytes(64 * 1024), 0, 64 * 1024, i * chunkSize + 4096);
  } finally {
    await fh.close();
  }
  return n;
}

/** A plain read of a whole file, as the backup reads it (4 reads of 4 MiB in flight), and nothing else: the incremental's floor. */
async function readFile4(path: string, size: number): Promise<number> {
  const fh = await open(path, 'r');
  let next = 0;
  let total = 0;
  try {
    await Promise.all(
      Array.from({ length: 4 }, async () => {
        const buf = Buffer.allocUnsafe(4 * MiB);
        while (next < size) {
          const at = next;
          next += buf.length;
          const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, size - at), at);
          total += bytesRead;
        }
      }),
    );
  } finally {
    await fh.close();
  }
  return total;
}

/** fdatasync of every regular file under `dir`, each opened and synced on its own. */
async function fdatasyncTree(dir: string): Promise<number> {
  let files = 0;
  for (const e of await readdir(dir, { withFileTypes: true, recursive: true })) {
    if (!e.isFile()) continue;
    const fh = await open(join(e.parentPath, e.name), 'r+');
    try {
      await fh.datasync();
    } finally {
      await fh.close();
    }
    files++;
  }
  return files;
}

async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const c of createReadStream(path, { highWaterMark: 4 * MiB })) h.update(c as Buffer);
  return h.digest('hex');
}

function targetConfig(m: Minio, prefix: string, keyFile: string, chunkSize = DEFAULT_CHUNK_SIZE, compression: 'zstd' | 'none' = 'zstd', encrypt = true): ObjectTarget {
  return ObjectTarget.parse({
    name: 'bench',
    driver: 's3',
    endpoint: m.endpoint,
    bucket: BUCKET,
    prefix,
    forcePathStyle: true,
    chunkSize,
    compression,
    ...(encrypt ? { encryption: { keyFile } } : {}),
  });
}

const s3env = { AWS_ACCESS_KEY_ID: MINIO_CREDENTIALS.accessKeyId, AWS_SECRET_ACCESS_KEY: MINIO_CREDENTIALS.secretAccessKey, AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true' };

// ---------------------------------------------------------------------------------------
// Child: one backup or restore, reporting its peak RSS

interface ChildJob {
  op: 'backup' | 'restore';
  config: ObjectTarget;
  file: string;
  size: number;
  backupId: string;
}

async function child(job: ChildJob): Promise<void> {
  const target = await ChunkedTarget.open(job.config, { ...process.env, ...s3env });
  const t0 = performance.now();
  try {
    if (job.op === 'backup') await backupToStore({ target, backupId: job.backupId, volumeId: 'bench', source: job.file, size: job.size });
    else await restoreFromStore({ target, backupId: job.backupId, dest: job.file, destIsZero: true });
  } finally {
    target.close();
  }
  const seconds = (performance.now() - t0) / 1000;
  // VmHWM, this process's own peak. Not getrusage's maxRSS: Linux carries that across
  // fork + exec, so a child would report its parent's peak if that was higher.
  const hwm = /^VmHWM:\s+(\d+) kB$/m.exec(readFileSync('/proc/self/status', 'utf8'));
  process.stdout.write(`${JSON.stringify({ seconds, maxRssBytes: Number(hwm?.[1] ?? 0) * 1024 })}\n`);
}

async function runChild(job: ChildJob): Promise<{ seconds: number; maxRssBytes: number }> {
  const script = fileURLToPath(import.meta.url);
  await dropCaches();
  const r = await execa(process.execPath, [script, '--child', JSON.stringify(job)], { env: s3env });
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as { seconds: number; maxRssBytes: number };
}

// ---------------------------------------------------------------------------------------
// restic

/** Runs restic; `maxRssBytes` is its peak RSS from GNU time when that is installed (else 0). */
async function restic(m: Minio, dir: string, repo: string, args: string[]): Promise<{ stdout: string; maxRssBytes: number }> {
  const cmd = ['restic', '-r', `s3:${m.endpoint}/${BUCKET}/${repo}`, '-q', ...args];
  const timeBin = existsSync('/usr/bin/time') ? '/usr/bin/time' : null;
  const r = await execa(timeBin ?? cmd[0]!, timeBin ? ['-f', 'gbackup-bench-maxrss-kib %M', ...cmd] : cmd.slice(1), {
    env: { ...s3env, RESTIC_PASSWORD, RESTIC_CACHE_DIR: join(dir, 'restic-cache') },
  });
  const kib = /gbackup-bench-maxrss-kib (\d+)/.exec(r.stderr);
  return { stdout: r.stdout, maxRssBytes: kib ? Number(kib[1]) * 1024 : 0 };
}

// ---------------------------------------------------------------------------------------
// Main

interface SweepRow {
  chunkMiB: number;
  backupSeconds: number;
  restoreSeconds: number;
  incrementalSeconds: number;
  incrementalStoredBytes: number;
}

/** One head-to-head round on a fresh 1 GiB file, fresh prefixes and a fresh restic repository. */
interface Round {
  gbFull: number;
  gbFullStored: number;
  gbFullObjects: number;
  gbRestore: number;
  gbRestoreFetched: number;
  resticFull: number;
  resticFullStored: number;
  resticFullObjects: number;
  resticRestore: number;
  /** restic does not fsync what it restored; gbackup's restore ends with its data synced. This is restic's restore and an fdatasync of the files it restored, timed together. */
  resticRestoreSync: number;
  resticFullMaxRss: number;
  resticRestoreMaxRss: number;
  changedChunks: number;
  gbIncr: number;
  /** A plain cold read of the same 1 GiB, right before the incremental. */
  plainRead: number;
  plainReadBytes: number;
  gbIncrStored: number;
  resticIncr: number;
  resticIncrStored: number;
  gbIncrRestore: number;
  plainFull: number;
  plainRestore: number;
}

async function round(dir: string, r: number, keyFile: string): Promise<Round> {
  return withMinio(dir, (m) => roundOn(m, dir, r, keyFile));
}

async function roundOn(m: Minio, dir: string, r: number, keyFile: string): Promise<Round> {
  const env = { ...process.env, ...s3env };
  const SIZE = 1 * GiB;
  const src = join(dir, 'volume.img');
  const dest = join(dir, 'restore.img');
  const freshDest = async () => {
    await rm(dest, { force: true });
    writeFileSync(dest, '');
    await truncate(dest, SIZE);
  };
  say(`round ${r}: writing 1 GiB of random data`);
  await randomFile(src, SIZE);
  const srcSum = await sha256File(src);

  const gbPrefix = `gb${r}/`;
  const target = await ChunkedTarget.open(targetConfig(m, `gb${r}`, keyFile), env);
  const full = await timed(() => backupToStore({ target, backupId: 'full', volumeId: 'bench', source: src, size: SIZE }));
  const fullUsage = await prefixUsage(m, gbPrefix);
  await freshDest();
  const restore = await timed(() => restoreFromStore({ target, backupId: 'full', dest, destIsZero: true }));
  if ((await sha256File(dest)) !== srcSum) throw new Error('gbackup restore is not bit-exact');
  say(`  gbackup backup ${fmt(full.seconds)} s, restore ${fmt(restore.seconds)} s`);

  const repo = `restic${r}`;
  // Format 2: compressed (zstd, restic's default `auto` level), like gbackup's target here.
  await restic(m, dir, repo, ['init', '--repository-version', '2']);
  const rb = await timed(() => restic(m, dir, repo, ['backup', src]));
  const resticUsage = await prefixUsage(m, `${repo}/`);
  const rdir = join(dir, 'restic-restore');
  await rm(rdir, { recursive: true, force: true });
  mkdirSync(rdir);
  // One timed span: the restore, then every restored file opened and fdatasync-ed.
  let rrOnly = 0;
  const rr = await timed(async () => {
    const t0 = performance.now();
    const v = await restic(m, dir, repo, ['restore', 'latest', '--target', rdir]);
    rrOnly = (performance.now() - t0) / 1000;
    await fdatasyncTree(rdir);
    return v;
  });
  const rrSync = rr.seconds;
  if ((await sha256File(join(rdir, src))) !== srcSum) throw new Error('restic restore is not bit-exact');
  await rm(rdir, { recursive: true, force: true });
  say(`  restic  backup ${fmt(rb.seconds)} s, restore ${fmt(rrOnly)} s (${fmt(rrSync)} s with fdatasync)`);

  const changed = await changeChunks(src, SIZE, DEFAULT_CHUNK_SIZE, 0.01, r);
  const changedSum = await sha256File(src);
  const read = await timed(() => readFile4(src, SIZE));
  const incr = await timed(() => backupToStore({ target, backupId: 'incr', volumeId: 'bench', source: src, size: SIZE, incremental: true }));
  const incrStored = (await prefixUsage(m, gbPrefix)).bytes - fullUsage.bytes;
  const rbi = await timed(() => restic(m, dir, repo, ['backup', src]));
  const resticIncrStored = (await prefixUsage(m, `${repo}/`)).bytes - resticUsage.bytes;
  await freshDest();
  const incrRestore = await timed(() => restoreFromStore({ target, backupId: 'incr', dest, destIsZero: true }));
  if ((await sha256File(dest)) !== changedSum) throw new Error('restore of the incremental is not bit-exact');
  target.close();
  say(`  1% changed (${changed} chunks): gbackup incremental ${fmt(incr.seconds)} s (plain read ${fmt(read.seconds)} s), restic ${fmt(rbi.seconds)} s`);

  const plainTarget = await ChunkedTarget.open(targetConfig(m, `plain${r}`, keyFile, DEFAULT_CHUNK_SIZE, 'none', false), env);
  const plainFull = await timed(() => backupToStore({ target: plainTarget, backupId: 'full', volumeId: 'bench', source: src, size: SIZE }));
  await freshDest();
  const plainRestore = await timed(() => restoreFromStore({ target: plainTarget, backupId: 'full', dest, destIsZero: true }));
  plainTarget.close();
  await rm(dest, { force: true });
  say(`  plain (no zstd, no AES) backup ${fmt(plainFull.seconds)} s, restore ${fmt(plainRestore.seconds)} s`);

  return {
    gbFull: full.seconds,
    gbFullStored: fullUsage.bytes,
    gbFullObjects: fullUsage.objects,
    gbRestore: restore.seconds,
    gbRestoreFetched: restore.value.bytesFetched,
    resticFull: rb.seconds,
    resticFullStored: resticUsage.bytes,
    resticFullObjects: resticUsage.objects,
    resticRestore: rrOnly,
    resticRestoreSync: rrSync,
    resticFullMaxRss: rb.value.maxRssBytes,
    resticRestoreMaxRss: rr.value.maxRssBytes,
    changedChunks: changed,
    gbIncr: incr.seconds,
    plainRead: read.seconds,
    plainReadBytes: read.value,
    gbIncrStored: incrStored,
    resticIncr: rbi.seconds,
    resticIncrStored,
    gbIncrRestore: incrRestore.seconds,
    plainFull: plainFull.seconds,
    plainRestore: plainRestore.seconds,
  };
}

let resticVersion = 'restic';

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
};

async function main(): Promise<void> {
  const dir = await mkdtemp('/var/tmp/gbackup-bench-objects-');
  const repeat = Math.max(1, Number.parseInt(process.env.BENCH_REPEAT ?? '3', 10) || 1);
  try {
    say(`work dir ${dir}; ${cpus().length} cores, ${fmt(totalmem() / GiB, 1)} GiB RAM; cold caches: ${isRoot ? 'yes' : 'no (not root)'}; ${repeat} rounds, medians`);
    resticVersion = (await execa('restic', ['version'])).stdout.trim();
    const keyFile = join(dir, 'key');
    writeFileSync(keyFile, randomBytes(32));
    const env = { ...process.env, ...s3env };
    const SIZE = 1 * GiB;

    const rounds: Round[] = [];
    // BENCH_ONLY=sweep: the chunk size sweep alone (no restic rounds, no RSS).
    const onlySweep = process.env.BENCH_ONLY === 'sweep';
    if (!onlySweep) for (let r = 0; r < repeat; r++) rounds.push(await round(dir, r, keyFile));
    const med = (k: keyof Round) => median(rounds.map((x) => x[k]));

    // --- peak RSS in a child process
    const rss: { gib: number; backupSeconds: number; backupMaxRss: number; restoreSeconds: number; restoreMaxRss: number }[] = [];
    const rssSizes = onlySweep ? [] : (process.env.BENCH_RSS_GIB ?? '1,4').split(',').map((s) => Number(s)).filter((n) => n > 0);
    for (const gib of rssSizes) {
      const file = join(dir, `rss-${gib}.img`);
      say(`peak RSS: ${gib} GiB`);
      await randomFile(file, gib * GiB);
      const [b, r] = await withMinio(dir, async (minio) => {
        const cfg = targetConfig(minio, `rss${gib}`, keyFile);
        const b = await runChild({ op: 'backup', config: cfg, file, size: gib * GiB, backupId: 'rss' });
        await rm(file);
        writeFileSync(file, '');
        await truncate(file, gib * GiB);
        const r = await runChild({ op: 'restore', config: cfg, file, size: gib * GiB, backupId: 'rss' });
        await rm(file);
        return [b, r] as const;
      });
      rss.push({ gib, backupSeconds: b.seconds, backupMaxRss: b.maxRssBytes, restoreSeconds: r.seconds, restoreMaxRss: r.maxRssBytes });
      say(`  backup ${fmt(b.seconds)} s, ${mb(b.maxRssBytes)} MB; restore ${fmt(r.seconds)} s, ${mb(r.maxRssBytes)} MB`);
    }

    // --- chunk size sweep
    const sweep: SweepRow[] = [];
    if (process.env.BENCH_CHUNK_SWEEP === '1' || onlySweep) {
      const src = join(dir, 'sweep.img');
      const dest = join(dir, 'sweep-restore.img');
      const sizes = [1, 4, 8, 16];
      const runs: SweepRow[] = [];
      // Sizes interleaved within each round, so a drift in the machine's load weighs on all alike.
      for (let r = 0; r < repeat; r++) {
        for (const chunkMiB of sizes) {
          const cs = chunkMiB * MiB;
          say(`chunk sweep: round ${r}, ${chunkMiB} MiB`);
          await randomFile(src, SIZE);
          const [b, rs, i] = await withMinio(dir, async (minio) => {
            const t = await ChunkedTarget.open(targetConfig(minio, 'sweep', keyFile, cs), env);
            const b = await timed(() => backupToStore({ target: t, backupId: 'full', volumeId: 'bench', source: src, size: SIZE }));
            writeFileSync(dest, '');
            await truncate(dest, SIZE);
            const rs = await timed(() => restoreFromStore({ target: t, backupId: 'full', dest, destIsZero: true }));
            await rm(dest);
            // The same 1% of 4 MiB regions change whatever the chunk size, so small chunks store less.
            await changeChunks(src, SIZE, DEFAULT_CHUNK_SIZE, 0.01, r);
            const i = await timed(() => backupToStore({ target: t, backupId: 'incr', volumeId: 'bench', source: src, size: SIZE, incremental: true }));
            t.close();
            return [b, rs, i] as const;
          });
          runs.push({ chunkMiB, backupSeconds: b.seconds, restoreSeconds: rs.seconds, incrementalSeconds: i.seconds, incrementalStoredBytes: i.value.bytesStored });
          say(`  backup ${fmt(b.seconds)} s, restore ${fmt(rs.seconds)} s, 1% incremental ${fmt(i.seconds)} s (${mb(i.value.bytesStored)} MB)`);
        }
      }
      for (const chunkMiB of sizes) {
        const mine = runs.filter((x) => x.chunkMiB === chunkMiB);
        sweep.push({
          chunkMiB,
          backupSeconds: median(mine.map((x) => x.backupSeconds)),
          restoreSeconds: median(mine.map((x) => x.restoreSeconds)),
          incrementalSeconds: median(mine.map((x) => x.incrementalSeconds)),
          incrementalStoredBytes: median(mine.map((x) => x.incrementalStoredBytes)),
        });
      }
      await rm(src, { force: true });
    }

    // --- report
    const out: string[] = [];
    let ratios: { backupVsRestic: number; restoreVsRestic: number; restoreVsResticSynced: number; incrementalOverFull: number; incrementalOverRead: number } | null = null;
    if (rounds.length) {
      const rows: [string, number, string][] = [
        ['gbackup full backup (zstd + AES-256-GCM)', med('gbFull'), `stored ${mb(med('gbFullStored'))} MB in ${med('gbFullObjects')} objects`],
        ['restic  full backup (zstd + AES-256)', med('resticFull'), `stored ${mb(med('resticFullStored'))} MB in ${med('resticFullObjects')} objects`],
        ['gbackup restore (ends fdatasync-ed)', med('gbRestore'), `fetched ${mb(med('gbRestoreFetched'))} MB`],
        ['restic  restore (no fsync)', med('resticRestore'), ''],
        ['restic  restore + fdatasync of its files', med('resticRestoreSync'), ''],
        [`gbackup incremental, 1% changed (${med('changedChunks')} chunks)`, med('gbIncr'), `stored ${mb(med('gbIncrStored'))} MB, read ${SIZE} bytes`],
        ['plain read of the volume (4 x 4 MiB in flight)', med('plainRead'), `read ${med('plainReadBytes')} bytes`],
        ['restic  incremental, same change', med('resticIncr'), `stored ${mb(med('resticIncrStored'))} MB`],
        ['gbackup restore of the incremental', med('gbIncrRestore'), ''],
        ['gbackup full backup, no zstd, no AES', med('plainFull'), ''],
        ['gbackup restore, no zstd, no AES', med('plainRestore'), ''],
      ];
      out.push('');
      out.push(
        `1 GiB random data (${SIZE} bytes), MinIO on loopback, ${cpus().length} cores, chunk ${DEFAULT_CHUNK_SIZE / MiB} MiB, concurrency ${DEFAULT_CONCURRENCY} up / ${DEFAULT_RESTORE_CONCURRENCY} down, page cache dropped before each step: ${isRoot}, fresh MinIO per round, median of ${repeat}; ${resticVersion}`,
      );
      out.push('');
      out.push(`${'step'.padEnd(46)} ${'seconds'.padStart(8)} ${'MB/s'.padStart(7)}  notes`);
      for (const [name, s, note] of rows) out.push(`${name.padEnd(46)} ${fmt(s).padStart(8)} ${fmt(SIZE / 1e6 / s, 0).padStart(7)}  ${note}`);
      out.push('');
      const r = {
        backupVsRestic: med('resticFull') / med('gbFull'),
        restoreVsRestic: med('resticRestore') / med('gbRestore'),
        restoreVsResticSynced: med('resticRestoreSync') / med('gbRestore'),
        incrementalOverFull: med('gbIncr') / med('gbFull'),
        incrementalOverRead: med('gbIncr') / med('plainRead'),
      };
      ratios = r;
      const verdict = (ok: boolean) => (ok ? 'MET' : 'MISSED');
      out.push(`backup:  gbackup is ${fmt(r.backupVsRestic)}x restic's speed (target > 1): ${verdict(r.backupVsRestic > 1)}`);
      out.push(
        `restore: gbackup (fdatasync-ed) is ${fmt(r.restoreVsResticSynced)}x restic + fdatasync (target >= 1.1): ${verdict(r.restoreVsResticSynced >= 1.1)}; ${fmt(r.restoreVsRestic)}x restic without any sync`,
      );
      out.push(
        `1% incremental takes ${fmt(r.incrementalOverFull * 100, 1)}% of the full backup's time (target <= 15%): ${verdict(r.incrementalOverFull <= 0.15)}; ${fmt(r.incrementalOverRead, 2)}x a plain read of the volume`,
      );
      out.push(
        `bytes stored: full ${med('gbFullStored')} (gbackup) vs ${med('resticFullStored')} (restic), ${fmt(med('gbFullStored') / med('resticFullStored'), 3)}x; ` +
          `incremental ${med('gbIncrStored')} vs ${med('resticIncrStored')}, ${fmt(med('gbIncrStored') / med('resticIncrStored'), 2)}x`,
      );
      out.push('');
    }
    if (rss.length) {
      out.push(`${'peak RSS, child process'.padEnd(26)} ${'backup s'.padStart(9)} ${'backup RSS'.padStart(11)} ${'restore s'.padStart(10)} ${'restore RSS'.padStart(12)}`);
      for (const r of rss) out.push(`${`${r.gib} GiB`.padEnd(26)} ${fmt(r.backupSeconds).padStart(9)} ${`${mb(r.backupMaxRss)} MB`.padStart(11)} ${fmt(r.restoreSeconds).padStart(10)} ${`${mb(r.restoreMaxRss)} MB`.padStart(12)}`);
      if (rounds.length && med('resticFullMaxRss') > 0) {
        out.push(`${'restic, 1 GiB (GNU time)'.padEnd(26)} ${fmt(med('resticFull')).padStart(9)} ${`${mb(med('resticFullMaxRss'))} MB`.padStart(11)} ${fmt(med('resticRestore')).padStart(10)} ${`${mb(med('resticRestoreMaxRss'))} MB`.padStart(12)}`);
      }
      out.push('');
    }
    if (sweep.length) {
      out.push(`${'chunk size'.padEnd(12)} ${'backup s'.padStart(9)} ${'MB/s'.padStart(6)} ${'restore s'.padStart(10)} ${'MB/s'.padStart(6)} ${'1% incr s'.padStart(10)} ${'incr stored'.padStart(12)}`);
      for (const r of sweep) {
        out.push(
          `${`${r.chunkMiB} MiB`.padEnd(12)} ${fmt(r.backupSeconds).padStart(9)} ${fmt(SIZE / 1e6 / r.backupSeconds, 0).padStart(6)} ${fmt(r.restoreSeconds).padStart(10)} ${fmt(SIZE / 1e6 / r.restoreSeconds, 0).padStart(6)} ${fmt(r.incrementalSeconds).padStart(10)} ${`${mb(r.incrementalStoredBytes)} MB`.padStart(12)}`,
        );
      }
      out.push('');
    }
    process.stdout.write(out.join('\n') + '\n');

    const json = { when: new Date().toISOString(), cores: cpus().length, cold: isRoot, volumeBytes: SIZE, chunkSize: DEFAULT_CHUNK_SIZE, repeat, rounds, ratios, peakRss: rss, chunkSweep: sweep };
    mkdirSync(join(repoRoot, 'var', 'bench'), { recursive: true });
    writeFileSync(join(repoRoot, 'var', 'bench', 'objects.json'), JSON.stringify(json, null, 2));
    say(`wrote ${join(repoRoot, 'var', 'bench', 'objects.json')}`);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

if (process.argv[2] === '--child') {
  child(JSON.parse(process.argv[3]!) as ChildJob).catch((err) => {
    console.error(err);
    process.exit(1);
  });
} else {
  main().catch((err) => {
    console.error(err);
    process.exit(1);
  });
}
