import { z } from 'zod';
import { Numbers, SchemaVersion, TokenIds } from './common.ts';

/** What the learner needs of one sample: ragged token arrays; the learner pads and masks. */
export const BatchSample = z
  .object({
    rolloutId: z.string().min(1),
    groupId: z.string().min(1),
    promptTokenIds: TokenIds,
    completionTokenIds: TokenIds,
    behaviourLogProbs: Numbers,
    advantage: z.number(),
    policyVersion: z.int().nonnegative(),
    finishReason: z.enum(['eos', 'length', 'stop']),
  })
  .strict();
export type BatchSample = z.infer<typeof BatchSample>;

/** One policy version's samples (epochs x minibatches optimiser steps). Lengths are ragged; `completionTokens` counts mask ones. */
export const GradientBatch = z
  .object({
    schemaVersion: SchemaVersion,
    id: z.string().min(1).describe('Deterministic: derived from the rollout ids it holds.'),
    samples: z.array(BatchSample).min(1),
    completionTokens: z.int().nonnegative(),
    maxCompletionLength: z.int().nonnegative(),
    minPolicyVersion: z.int().nonnegative(),
  })
  .strict();
export type GradientBatch = z.infer<typeof GradientBatch>;
