import { z } from 'zod';
import { numberArrayJson } from '../schemas/common.ts';
import { contractSchemas, messageSchemas } from '../schemas/index.ts';

/**
 * The JSON Schema text of every message and contract, keyed by file name; producers in other languages
 * use these.
 */
export function renderJsonSchemas(): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, schema] of Object.entries({ ...messageSchemas, ...contractSchemas })) {
    const json = z.toJSONSchema(schema, {
      target: 'draft-2020-12',
      io: 'input',
      // Custom checks have no JSON Schema of their own: the number arrays (schemas/common.ts) say theirs,
      // and any other custom check is an error. (This option would also write {} for other types JSON
      // Schema cannot express, such as dates or bigints; the message schemas use none.)
      unrepresentable: 'any',
      override: ({ zodSchema, jsonSchema }) => {
        const def = zodSchema._zod.def;
        if (def.type !== 'custom') return;
        const known = numberArrayJson.get((def as { fn?: unknown }).fn);
        if (!known) throw new Error(`${name}: a custom check with no JSON Schema (schemas/common.ts)`);
        Object.assign(jsonSchema, known);
      },
    });
    out[`${name}.schema.json`] = `${JSON.stringify({ title: name, ...json }, null, 2)}\n`;
  }
  return out;
}
