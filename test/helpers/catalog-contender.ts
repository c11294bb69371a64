/**
 * A second process on a SQLite catalog file, for the races of test/catalog.test.ts: within one
 * process every caller shares one connection (SqliteCatalog.open), so only another process
 * brings a second connection, as a worker and a CLI on one host have. Run through
 * test/helpers/ts-loader.mjs; one JSON command per stdin line, one JSON answer per stdout line.
 */
import { createInterface } from 'node:readline';
import { SqliteCatalog } from '../../src/catalog/sqlite.js';
import { raceVolumes, until, type ContenderCommand } from './catalog-race.js';

let catalog: SqliteCatalog | undefined;

async function handle(cmd: ContenderCommand): Promise<unknown> {
  switch (cmd.op) {
    case 'open':
      await until(cmd.at);
      catalog = await SqliteCatalog.open(cmd.file);
      return { version: await catalog.schemaVersion() };
    case 'race':
      if (!catalog) throw new Error('race before open');
      return { outcomes: await raceVolumes(catalog, cmd.ids, cmd.perId, cmd.owner, cmd.at) };
    case 'close':
      await catalog?.close();
      catalog = undefined;
      return {};
  }
}

const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  const answer = await handle(JSON.parse(line) as ContenderCommand).then(
    (r) => ({ ok: true, ...(r as object) }),
    (e: unknown) => ({ ok: false, error: String(e) }),
  );
  process.stdout.write(`${JSON.stringify(answer)}\n`);
}
