import { z } from 'zod';
import { Numbers, SchemaVersion, TokenIds } from './common.ts';
import { Prompt } from './prompt.ts';

export const FinishReason = z.enum(['eos', 'length', 'stop']);
export type FinishReason = z.infer<typeof FinishReason>;

/** One sampled completion of a prompt, with what the learner needs to compute importance ratios. */
export const Rollout = z
  .object({
    schemaVersion: SchemaVersion,
    id: z.string().min(1).describe('Unique rollout id: `${groupId}/${index}`; re-deliveries share it.'),
    groupId: z.string().min(1),
    index: z.int().nonnegative().describe('Position of this sample in its group, 0..groupSize-1.'),
    groupSize: z.int().positive().describe('G: how many samples make the group complete.'),
    prompt: Prompt,
    promptTokenIds: TokenIds,
    completionTokenIds: TokenIds,
    completion: z.string().describe('The decoded completion text.'),
    behaviourLogProbs: Numbers.describe(
      'log softmax(logits / temperature) of each sampled token under the behaviour policy.',
    ),
    policyVersion: z.int().nonnegative().describe('Version of the weights that generated this sample.'),
    finishReason: FinishReason,
    truncatedMass: z
      .number()
      .min(0)
      .max(1)
      .optional()
      .describe(
        'Mean over the completion of the probability mass top-k/top-p cut away before each draw: the tokens came from the truncated distribution, behaviourLogProbs describe the whole one (0 without truncation; absent: not measured).',
      ),
  })
  .strict()
  .refine((r) => r.behaviourLogProbs.length === r.completionTokenIds.length, {
    message: 'behaviourLogProbs must have one entry per completion token',
    path: ['behaviourLogProbs'],
  })
  .refine((r) => r.index < r.groupSize, { message: 'index must be below groupSize', path: ['index'] });
export type Rollout = z.infer<typeof Rollout>;
