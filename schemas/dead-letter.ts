import { z } from 'zod';
import { SchemaVersion } from './common.ts';

export const ValidationIssue = z.object({ path: z.string(), message: z.string() }).strict();

/** A message that could not be used, kept with the reason so nothing is silently lost. */
export const DeadLetter = z
  .object({
    schemaVersion: SchemaVersion,
    time: z.number(),
    source: z.string().min(1).describe('Stream or topic the message came from.'),
    schema: z.string().optional().describe('The schema it failed, if validation failed.'),
    reason: z.string().min(1),
    issues: z.array(ValidationIssue).optional(),
    key: z.string().optional(),
    payload: z.string().describe('The original message: UTF-8 text, or base64 when `encoding` says so.'),
    encoding: z.enum(['utf8', 'base64']),
  })
  .strict();
export type DeadLetter = z.infer<typeof DeadLetter>;
