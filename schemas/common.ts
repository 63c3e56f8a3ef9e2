import { z } from 'zod';

/** Every message carries the version of its schema; a reader rejects versions it does not know. */
export const SCHEMA_VERSION = 1 as const;
export const SchemaVersion = z.literal(SCHEMA_VERSION).describe('Version of this message schema.');

/**
 * An array of numbers checked in one loop. `z.array(z.int())` parses (and copies) element by element: on a
 * rollout of 128 tokens that cost 6x the rest of the message's validation, and validation in and out was
 * the largest cost of the Kafka transport (bench/kafka). An error names the first bad element's path.
 * JSON Schema cannot represent a custom check, so src/json-schemas.ts writes `json` in its place.
 */
function numberArray(element: string, isValid: (x: number) => boolean, json: Record<string, unknown>) {
  const isArray = (value: unknown) => Array.isArray(value);
  numberArrayJson.set(isArray, json);
  return z
    .custom<number[]>(isArray, {
      error: (issue) => `expected an array, got ${issue.input === null ? 'null' : typeof issue.input}`,
    })
    .check((ctx) => {
      const value = ctx.value as unknown;
      if (!Array.isArray(value)) return;
      for (let i = 0; i < value.length; i++) {
        const x: unknown = value[i];
        if (typeof x === 'number' && isValid(x)) continue;
        const got = typeof x === 'string' ? JSON.stringify(x) : String(x);
        ctx.issues.push({ code: 'custom', input: x, path: [i], message: `expected ${element}, got ${got}` });
        return;
      }
    });
}

/** The JSON Schema of each number array, by its custom check function (which clones share). */
export const numberArrayJson = new Map<unknown, Record<string, unknown>>();

/** Token ids are non-negative integers. */
export const TokenIds = numberArray(
  'a non-negative integer (token id)',
  (x) => Number.isSafeInteger(x) && x >= 0,
  { type: 'array', items: { type: 'integer', minimum: 0, maximum: Number.MAX_SAFE_INTEGER } },
);

/** Finite numbers (log-probabilities). */
export const Numbers = numberArray('a finite number', Number.isFinite, {
  type: 'array',
  items: { type: 'number' },
});

/** A reward value; null when the reward function failed or does not apply (TRL's None / NaN). */
export const RewardValue = z.number().nullable();
