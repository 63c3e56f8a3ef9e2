// Writes schemas/json/<Name>.schema.json from the zod schemas; with --check, fails if any is stale.
// (test/schemas.test.ts makes the same check inside `npm test`.)
import { readFileSync, writeFileSync, mkdirSync, readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { renderJsonSchemas } from '../src/json-schemas.ts';

const outDir = join(dirname(fileURLToPath(import.meta.url)), '..', 'schemas', 'json');
const check = process.argv.includes('--check');
const rendered = renderJsonSchemas();
const stale: string[] = [];

mkdirSync(outDir, { recursive: true });
for (const [file, text] of Object.entries(rendered)) {
  const path = join(outDir, file);
  let current: string | undefined;
  try {
    current = readFileSync(path, 'utf8');
  } catch {
    current = undefined;
  }
  if (current === text) continue;
  if (check) stale.push(file);
  else writeFileSync(path, text);
}
const extra = readdirSync(outDir).filter((f) => !(f in rendered));
if (check && (stale.length > 0 || extra.length > 0)) {
  console.error(
    `JSON Schemas in schemas/json are out of date with the zod schemas: ${[...stale, ...extra].join(', ')}.\n` +
      'Run `npm run schemas:generate` and commit the result.',
  );
  process.exit(1);
}
console.log(check ? `JSON Schemas up to date (${Object.keys(rendered).length}).` : `Wrote ${outDir}`);
