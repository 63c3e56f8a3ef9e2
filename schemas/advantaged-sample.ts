import { z } from 'zod';
import { ScoredRollout } from './scored-rollout.ts';

/** A scored rollout with its group-relative advantage, the same on every completion token. */
export const AdvantagedSample = ScoredRollout.safeExtend({
  advantage: z.number(),
});
export type AdvantagedSample = z.infer<typeof AdvantagedSample>;
