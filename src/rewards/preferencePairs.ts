import { readFileSync } from 'node:fs';
import { PreferencePair } from '../../schemas/index.ts';
import { parseJsonl, uniqueIds } from '../tasks/jsonl.ts';

/**
 * Reads a preference data set: one JSON object per line,
 * `{"prompt": "...", "chosen": "...", "rejected": "..."}` with an optional `"id"` (schemas/preference.ts,
 * schemas/json/PreferencePair.schema.json). Blank lines are skipped. Every bad line is reported
 * (file:line: reason), not just the first, so a data set can be fixed in one pass; a pair whose two
 * completions are the same teaches nothing and is reported too.
 */
export function parsePreferencePairs(text: string, file = '<input>'): PreferencePair[] {
  const unique = uniqueIds();
  return parseJsonl(text, file, PreferencePair, (pair) =>
    pair.chosen === pair.rejected ? 'chosen and rejected are the same completion' : unique(pair.id),
  ).map((r) => r.value);
}

export function loadPreferencePairs(path: string): PreferencePair[] {
  return parsePreferencePairs(readFileSync(path, 'utf8'), path);
}
