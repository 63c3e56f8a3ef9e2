import { z } from 'zod';
import { contractSchemas, messageSchemas } from '../schemas/index.ts';

/**
 * The JSON Schema text of every message and contract, keyed by file name; producers in other languages
 * use these.
 */
export function renderJsonSchemas(): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, schema] of Object.entries({ ...messageSchemas, ...contractSchemas })) {
    const json = z.toJSONSchema(schema, { target: 'draft-2020-12', io: 'input' });
    out[`${name}.schema.json`] = `${JSON.stringify({ title: name, ...json }, null, 2)}\n`;
  }
  return out;
}
