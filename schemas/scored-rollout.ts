import { z } from 'zod';
import { RewardValue } from './common.ts';
import { Rollout } from './rollout.ts';

/** A rollout with each reward function's value kept by name, and the weighted total. */
export const ScoredRollout = Rollout.safeExtend({
  rewards: z.record(z.string(), RewardValue).describe('Each reward by name; null where it failed.'),
  reward: RewardValue.describe(
    'Weighted sum of the non-null rewards; null when all are null or one failed (threw, timed out, was not finite).',
  ),
});
export type ScoredRollout = z.infer<typeof ScoredRollout>;
