import { Observable, type OperatorFunction } from 'rxjs';
import type { AdvantagedSample, Group } from '../../schemas/index.ts';
import {
  defaultScale,
  isValid,
  multiRewardAdvantages,
  oneGroupAdvantages,
  validStats,
  type AdvantageOptions,
} from '../grpo/advantages.ts';
import { detachedMetrics, type Metrics } from '../metrics/metrics.ts';
import { withAdvantage } from './records.ts';
import { forwardErrors } from './forwardErrors.ts';

export interface GroupRelativeAdvantagesOptions extends AdvantageOptions {
  /** With batch scaling: how many groups share one batch std (the groups of one GradientBatch). */
  groupsPerBatch?: number;
  metrics?: Metrics;
}

/**
 * Turns each Group into its samples, each with its group-relative advantage (src/grpo/advantages.ts
 * has the estimators and the handling of null rewards).
 *
 * ```
 * source:  ---A-------B---|          (groups of 2)
 * output:  ---(aa)----(bb)|          (batch scaling, groupsPerBatch 2: ---------(aabb)|)
 * ```
 *
 * Each sample's `reward` (its weighted total) is what is normalised; with `rewardWeights` or
 * `aggregation: 'normalize_then_sum'` the totals are recomputed from the named `rewards`.
 *
 * With `scale: 'batch'` the std is taken over `groupsPerBatch` groups, so they are held until that
 * many have arrived (or the source completes). Counters: advantage.groups, advantage.samples,
 * advantage.null_rewards, advantage.zero_std_groups (the numerator of frac_reward_zero_std).
 */
export function groupRelativeAdvantages(
  options: GroupRelativeAdvantagesOptions,
): OperatorFunction<Group, AdvantagedSample> {
  const metrics = options.metrics ?? detachedMetrics();
  const groupsCounter = metrics.counter('advantage.groups');
  const samplesCounter = metrics.counter('advantage.samples');
  const nullRewards = metrics.counter('advantage.null_rewards');
  const zeroStd = metrics.counter('advantage.zero_std_groups');
  const recompute = options.rewardWeights !== undefined || options.aggregation === 'normalize_then_sum';
  const batchScale = (options.scale ?? defaultScale(options.estimator)) === 'batch';
  const hold = batchScale ? (options.groupsPerBatch ?? 1) : 1;

  return (source) =>
    new Observable<AdvantagedSample>((subscriber) => {
      let pending: Group[] = [];

      const release = () => {
        const groups = pending;
        pending = [];
        const totals = groups.map((g) => g.samples.map((s) => s.reward));
        // Recomputed from the named rewards when weights or per-reward normalisation ask for it. A sample
        // whose total is null (a reward failed) is left out of its group's statistics there too: its
        // rewards count as none (a failed one reads null, like one that does not apply).
        const recomputed = recompute
          ? multiRewardAdvantages(
              groups.map((g) => g.samples.map((s) => (isValid(s.reward) ? s.rewards : {}))),
              options,
            )
          : undefined;
        // The std of every valid total held (with one group held, that group's own).
        const batchStd = batchScale ? validStats(totals.flat()).std : 0;
        for (let g = 0; g < groups.length; g++) {
          const samples = groups[g]!.samples;
          const { advantages, stats } = oneGroupAdvantages(totals[g]!, options, batchStd);
          const final = recomputed ? recomputed[g]! : advantages;
          groupsCounter.inc();
          samplesCounter.inc(samples.length);
          nullRewards.inc(samples.length - stats.n);
          if (stats.std === 0) zeroStd.inc();
          // A null total (a reward failed, or none applied) gets no signal.
          for (let i = 0; i < samples.length; i++)
            subscriber.next(withAdvantage(samples[i]!, isValid(samples[i]!.reward) ? final[i]! : 0));
        }
      };

      const subscription = source.subscribe(
        forwardErrors(subscriber, {
          next: (group: Group) => {
            pending.push(group);
            if (pending.length >= hold) release();
          },
          complete: () => {
            if (pending.length > 0) release();
            subscriber.complete();
          },
        }),
      );
      return () => {
        subscription.unsubscribe();
        pending = [];
      };
    });
}
