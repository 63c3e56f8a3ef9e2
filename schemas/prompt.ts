import { z } from 'zod';
import { SchemaVersion } from './common.ts';

/** A task instance to sample a group of completions for. `id` is the group id of its rollouts. */
export const Prompt = z
  .object({
    schemaVersion: SchemaVersion,
    id: z.string().min(1).describe('Unique per emission (dataset index and epoch); becomes the group id.'),
    task: z.string().min(1).describe('Task name, selects the verifier (e.g. "arithmetic", "countdown").'),
    text: z.string().describe('The prompt as the policy sees it, template applied.'),
    answer: z
      .unknown()
      .optional()
      .describe('Ground truth for rule-based rewards; never shown to the policy.'),
    meta: z.record(z.string(), z.unknown()).optional(),
  })
  .strict();
export type Prompt = z.infer<typeof Prompt>;
