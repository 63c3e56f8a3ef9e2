import { readFileSync } from 'node:fs';
import { z } from 'zod';
import { describeIssues } from '../validation.ts';
import type { TaskExample } from './task.ts';

const JsonlRecord = z
  .object({
    id: z.string().min(1).optional(),
    prompt: z.string().min(1),
    answer: z.union([z.string(), z.number(), z.record(z.string(), z.unknown())]),
  })
  .strict();

/** A line of a JSONL data set that could not be read, with where and why. */
export class JsonlError extends Error {
  constructor(
    readonly file: string,
    readonly line: number,
    readonly reason: string,
  ) {
    super(`${file}:${line}: ${reason}`);
    this.name = 'JsonlError';
  }
}

/**
 * Reads a user's data set: one JSON object per line, `{"prompt": "...", "answer": ...}` with an
 * optional `"id"`. Blank lines are skipped. Every bad line is reported (file:line: reason), not just
 * the first, so a data set can be fixed in one pass.
 */
export function parseJsonlExamples(text: string, file = '<input>'): TaskExample[] {
  const out: TaskExample[] = [];
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
    const parsed = JsonlRecord.safeParse(value);
    if (!parsed.success) {
      const why = describeIssues(parsed.error).map((x) => `${x.path}: ${x.message}`);
      errors.push(new JsonlError(file, i + 1, why.join('; ')));
      return;
    }
    const id = parsed.data.id ?? `${file}#${i + 1}`;
    if (ids.has(id)) {
      errors.push(new JsonlError(file, i + 1, `duplicate id "${id}"`));
      return;
    }
    ids.add(id);
    out.push({ id, question: parsed.data.prompt, answer: parsed.data.answer });
  });
  if (errors.length > 0) {
    const shown = errors.slice(0, 20).map((e) => e.message);
    const more = errors.length > 20 ? `\n... and ${errors.length - 20} more` : '';
    throw new AggregateError(errors, `${errors.length} bad line(s) in ${file}:\n${shown.join('\n')}${more}`);
  }
  return out;
}

export function loadJsonlExamples(path: string): TaskExample[] {
  return parseJsonlExamples(readFileSync(path, 'utf8'), path);
}
