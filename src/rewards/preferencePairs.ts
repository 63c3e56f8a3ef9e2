import { readFileSync } from 'node:fs';
import { PreferencePair } from '../../schemas/index.ts';
import { JsonlError } from '../tasks/jsonl.ts';
import { describeIssues } from '../validation.ts';

/**
 * Reads a preference data set: one JSON object per line,
 * `{"prompt": "...", "chosen": "...", "rejected": "..."}` with an optional `"id"` (schemas/preference.ts,
 * schemas/json/PreferencePair.schema.json). Blank lines are skipped. Every bad line is reported
 * (file:line: reason), not just the first, so a data set can be fixed in one pass; a pair whose two
 * completions are the same teaches nothing and is reported too.
 */
export function parsePreferencePairs(text: string, file = '<input>'): PreferencePair[] {
  const out: PreferencePair[] = [];
  const errors: JsonlError[] = [];
  const ids = new Set<string>();
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim();
    if (line === '') return;
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch (err) {
      errors.push(new JsonlError(file, i + 1, `not valid JSON (${(err as Error).message})`));
      return;
    }
    const parsed = PreferencePair.safeParse(value);
    if (!parsed.success) {
      const why = describeIssues(parsed.error).map((x) => `${x.path}: ${x.message}`);
      errors.push(new JsonlError(file, i + 1, why.join('; ')));
      return;
    }
    const pair = parsed.data;
    if (pair.chosen === pair.rejected) {
      errors.push(new JsonlError(file, i + 1, 'chosen and rejected are the same completion'));
      return;
    }
    if (pair.id !== undefined) {
      if (ids.has(pair.id)) {
        errors.push(new JsonlError(file, i + 1, `duplicate id "${pair.id}"`));
        return;
      }
      ids.add(pair.id);
    }
    out.push(pair);
  });
  if (errors.length > 0) {
    const shown = errors.slice(0, 20).map((e) => e.message);
    const more = errors.length > 20 ? `\n... and ${errors.length - 20} more` : '';
    throw new AggregateError(errors, `${errors.length} bad line(s) in ${file}:\n${shown.join('\n')}${more}`);
  }
  return out;
}

export function loadPreferencePairs(path: string): PreferencePair[] {
  return parsePreferencePairs(readFileSync(path, 'utf8'), path);
}
