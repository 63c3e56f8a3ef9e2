import { z } from 'zod';
import { SchemaVersion } from './common.ts';
import { ScoredRollout } from './scored-rollout.ts';

/** The complete set of G scored samples of one prompt: the unit GRPO normalises over. */
export const Group = z
  .object({
    schemaVersion: SchemaVersion,
    groupId: z.string().min(1),
    samples: z.array(ScoredRollout).min(1),
  })
  .strict()
  .refine((g) => g.samples.every((s) => s.groupId === g.groupId), {
    message: 'every sample must carry the group id',
    path: ['samples'],
  });
export type Group = z.infer<typeof Group>;
