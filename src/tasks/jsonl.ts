import { readFileSync } from 'node:fs';
import { z } from 'zod';
import { describeIssues } from '../validation.ts';
import type { TaskExample } from './task.ts';

const JsonlRecord = z
  .object({
    id: z.string().min(1).optional(),
    prompt: z.string().min(1),
    answer: z.union([
      z.string(),
      // JSON.parse rounds an integer past 2^53 to the nearest double: the reference would be another number.
      z.number().refine((n) => !Number.isInteger(n) || Number.isSafeInteger(n), {
        message:
          'an integer answer past 2^53 is not exact as a JSON number (it reads back rounded): quote it as a string',
      }),
      z.record(z.string(), z.unknown()),
    ]),
    meta: z
      .record(z.string(), z.unknown())
      .optional()
      .describe(
        "The row's own fields, handed to rewards as the prompt's meta (TRL passes extra columns to reward functions).",
      ),
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
 * The JSONL reading every data set shares: one JSON object per line, checked against `schema`, blank
 * lines skipped. `check` may refuse a valid line with a reason (a duplicate id). Every bad line is
 * reported (file:line: reason), not just the first, so a data set can be fixed in one pass; an
 * AggregateError of JsonlErrors says how many and shows the first 20.
 */
export function parseJsonl<S extends z.ZodType>(
  text: string,
  file: string,
  schema: S,
  check: (value: z.infer<S>, line: number) => string | undefined = () => undefined,
): { value: z.infer<S>; line: number }[] {
  const out: { value: z.infer<S>; line: number }[] = [];
  const errors: JsonlError[] = [];
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
    const parsed = schema.safeParse(value);
    if (!parsed.success) {
      const why = describeIssues(parsed.error).map((x) => `${x.path}: ${x.message}`);
      errors.push(new JsonlError(file, i + 1, why.join('; ')));
      return;
    }
    const refused = check(parsed.data, i + 1);
    if (refused) errors.push(new JsonlError(file, i + 1, refused));
    else out.push({ value: parsed.data, line: i + 1 });
  });
  if (errors.length > 0) {
    const shown = errors.slice(0, 20).map((e) => e.message);
    const more = errors.length > 20 ? `\n... and ${errors.length - 20} more` : '';
    throw new AggregateError(errors, `${errors.length} bad line(s) in ${file}:\n${shown.join('\n')}${more}`);
  }
  return out;
}

/** Refuses a second line with an id already seen. */
export function uniqueIds(): (id: string | undefined) => string | undefined {
  const ids = new Set<string>();
  return (id) => {
    if (id === undefined) return undefined;
    if (ids.has(id)) return `duplicate id "${id}"`;
    ids.add(id);
    return undefined;
  };
}

/**
 * Reads a user's data set: one JSON object per line, `{"prompt": "...", "answer": ...}` with an
 * optional `"id"` (default file#line) and `"meta"` (an object of the row's own fields, which rewards see
 * as the prompt's meta).
 */
export function parseJsonlExamples(text: string, file = '<input>'): TaskExample[] {
  const unique = uniqueIds();
  return parseJsonl(text, file, JsonlRecord, (r, line) => unique(r.id ?? `${file}#${line}`)).map(
    ({ value, line }) => ({
      id: value.id ?? `${file}#${line}`,
      question: value.prompt,
      answer: value.answer,
      ...(value.meta ? { meta: value.meta } : {}),
    }),
  );
}

export function loadJsonlExamples(path: string): TaskExample[] {
  return parseJsonlExamples(readFileSync(path, 'utf8'), path);
}

/**
 * The test examples whose prompt is also a training prompt (compared with runs of whitespace made one
 * and the ends trimmed): a user's held-out set that repeats training questions makes held-out figures
 * count them as unseen. Undefined when there are none; else a warning that says how many and which.
 */
export function heldOutOverlap(
  train: readonly TaskExample[],
  test: readonly TaskExample[],
  files: { train: string; test: string },
): string | undefined {
  const key = (e: TaskExample) => e.question.replace(/\s+/g, ' ').trim();
  const seen = new Map(train.map((e) => [key(e), e.id]));
  const repeated = test.filter((e) => seen.has(key(e)));
  if (repeated.length === 0) return undefined;
  const shown = repeated
    .slice(0, 3)
    .map((e) => `${e.id} (as ${seen.get(key(e))})`)
    .join(', ');
  return (
    `${repeated.length} of the ${test.length} test prompts of ${files.test} are also training prompts in ` +
    `${files.train}: ${shown}${repeated.length > 3 ? ', ...' : ''}. Held-out figures count them as unseen; ` +
    `remove them from one of the files.`
  );
}
