/**
 * Group-relative advantages (GRPO and the variants TRL and verl offer): the pure math, independent of streams.
 *
 *   grpo                   A_i = (r_i - mean(r)) / (std(r) + eps)
 *   dr_grpo                A_i =  r_i - mean(r)                      (Dr. GRPO: no std division)
 *   rloo                   A_i =  r_i - mean_{j != i}(r_j)           (leave-one-out baseline)
 *   reinforce_pp_baseline  A_i = (r_i - mean(r)) / (std(batch) + eps) (REINFORCE++ with group baseline)
 *
 * std is the sample standard deviation (Bessel's correction) with eps = 1e-4, as TRL computes it.
 * A total reward that is null or NaN (no reward function applied, or one failed: scoreRollouts) is
 * excluded from the group's statistics and its sample gets advantage 0. A group with fewer than two valid rewards carries no
 * relative signal: all its advantages are 0 (TRL yields NaN there, verl uses mean 0 / std 1).
 */

export type AdvantageEstimator = 'grpo' | 'dr_grpo' | 'rloo' | 'reinforce_pp_baseline';
export type RewardScaling = 'group' | 'batch' | 'none';
export type MultiRewardAggregation = 'sum_then_normalize' | 'normalize_then_sum';

export interface AdvantageOptions {
  estimator: AdvantageEstimator;
  /** Which std divides. Defaults: grpo -> group, reinforce_pp_baseline -> batch, dr_grpo/rloo -> none. */
  scale?: RewardScaling;
  /** Added to the std before dividing. */
  epsilon?: number;
  /** Weight of each reward function by name; a name missing here has weight 1. */
  rewardWeights?: Record<string, number>;
  /** sum_then_normalize (TRL): weight and sum, then normalise the total. normalize_then_sum: normalise
   * each reward function's values on its own, then take the weighted sum of the advantages. */
  aggregation?: MultiRewardAggregation;
}

export const DEFAULT_EPSILON = 1e-4;

export function defaultScale(estimator: AdvantageEstimator): RewardScaling {
  switch (estimator) {
    case 'grpo':
      return 'group';
    case 'reinforce_pp_baseline':
      return 'batch';
    case 'dr_grpo':
    case 'rloo':
      return 'none';
  }
}

/** A reward that counts: a finite number (null, NaN and an infinite total are left out like a failure). */
export const isValid = (r: number | null | undefined): r is number =>
  r !== null && r !== undefined && Number.isFinite(r);

/**
 * Mean and sample std of the valid values; n is how many were valid. Equal values have std exactly 0
 * (a float mean of equal values can differ from them by rounding, which would leak a tiny signal).
 */
export function validStats(values: readonly (number | null)[]): { n: number; mean: number; std: number } {
  let n = 0;
  let sum = 0;
  let min = Infinity;
  let max = -Infinity;
  for (const v of values) {
    if (isValid(v)) {
      n++;
      sum += v;
      if (v < min) min = v;
      if (v > max) max = v;
    }
  }
  if (n === 0) return { n, mean: 0, std: 0 };
  if (min === max) return { n, mean: min, std: 0 };
  const mean = sum / n;
  let ss = 0;
  for (const v of values) if (isValid(v)) ss += (v - mean) * (v - mean);
  return { n, mean, std: n > 1 ? Math.sqrt(ss / (n - 1)) : 0 };
}

/**
 * Weighted total of one sample's rewards: the sum over non-null rewards (TRL's nansum), or null when
 * every reward is null.
 */
export function weightedReward(
  rewards: Record<string, number | null>,
  weights: Record<string, number> = {},
): number | null {
  let total = 0;
  let any = false;
  for (const name in rewards) {
    const r = rewards[name];
    if (!isValid(r)) continue;
    total += (weights[name] ?? 1) * r;
    any = true;
  }
  // A weighted sum past the float range is no score (it would make its whole group's advantages NaN).
  return any && Number.isFinite(total) ? total : null;
}

/** Statistics of a group's valid rewards, returned beside its advantages. */
export type GroupStats = ReturnType<typeof validStats>;

/**
 * Advantages of one group of scalar rewards, and the group's statistics. `batchStd` is the std that
 * batch scaling divides by (ignored otherwise).
 */
export function oneGroupAdvantages(
  rewards: readonly (number | null)[],
  options: AdvantageOptions,
  batchStd = 0,
): { advantages: number[]; stats: GroupStats } {
  const scale = options.scale ?? defaultScale(options.estimator);
  const eps = options.epsilon ?? DEFAULT_EPSILON;
  const stats = validStats(rewards);
  const { n, mean, std } = stats;
  const advantages = new Array<number>(rewards.length);
  if (n < 2 || std === 0) {
    advantages.fill(0);
    return { advantages, stats };
  }
  const divisor = scale === 'group' ? std + eps : scale === 'batch' ? batchStd + eps : 1;
  // Leave-one-out: r_i - (n*mean - r_i)/(n-1) = n/(n-1) * (r_i - mean).
  const factor = (options.estimator === 'rloo' ? n / (n - 1) : 1) / divisor;
  for (let i = 0; i < rewards.length; i++) {
    const r = rewards[i];
    advantages[i] = isValid(r) ? (r - mean) * factor : 0;
  }
  return { advantages, stats };
}

/**
 * Advantages of groups of scalar rewards. `groups[g][i]` is the reward of sample i of group g; the
 * result has the same shape. Batch scaling uses every valid reward of all the groups passed together.
 */
export function groupAdvantages(
  groups: readonly (readonly (number | null)[])[],
  options: AdvantageOptions,
): number[][] {
  const batchStd =
    (options.scale ?? defaultScale(options.estimator)) === 'batch' ? validStats(groups.flat()).std : 0;
  return groups.map((rewards) => oneGroupAdvantages(rewards, options, batchStd).advantages);
}

/**
 * Advantages of groups whose samples carry several named rewards, with the weights and the
 * multi-reward aggregation of the options.
 */
export function multiRewardAdvantages(
  groups: readonly (readonly Record<string, number | null>[])[],
  options: AdvantageOptions,
): number[][] {
  const weights = options.rewardWeights ?? {};
  if ((options.aggregation ?? 'sum_then_normalize') === 'sum_then_normalize') {
    return groupAdvantages(
      groups.map((g) => g.map((s) => weightedReward(s, weights))),
      options,
    );
  }
  const names = new Set<string>();
  for (const g of groups) for (const s of g) for (const name in s) names.add(name);
  const out = groups.map((g) => g.map(() => 0));
  for (const name of names) {
    const w = weights[name] ?? 1;
    const perName = groupAdvantages(
      groups.map((g) => g.map((s) => s[name] ?? null)),
      options,
    );
    perName.forEach((g, gi) => g.forEach((a, i) => (out[gi]![i]! += w * a)));
  }
  return out;
}
