import { z } from 'zod';
import { SchemaVersion } from './common.ts';

/** Published by the learner after every GradientBatch (its optimiser steps); generators pick up weights by version. */
export const PolicyVersion = z
  .object({
    schemaVersion: SchemaVersion,
    version: z.int().nonnegative(),
    step: z.int().nonnegative(),
    time: z.number().describe('Milliseconds since the Unix epoch.'),
    checkpoint: z.string().optional().describe('Where the weights of this version are stored, if saved.'),
    consumedBatches: z.array(z.string()).optional().describe('Ids of the batches this step applied.'),
  })
  .strict();
export type PolicyVersion = z.infer<typeof PolicyVersion>;
