import { Observable, type OperatorFunction } from 'rxjs';
import type { AdvantagedSample, Group } from '../../schemas/index.ts';
import {
  defaultScale,
  multiRewardAdvantages,
  validStats,
  type AdvantageOptions,
} from '../grpo/advantages.ts';
import { detachedMetrics, type Metrics } from '../metrics/metrics.ts';

export interface GroupRelativeAdvantagesOptions extends AdvantageOptions {
  /** With batch scaling: how many groups share one batch std (the groups of one optimiser step). */
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
  const hold =
    (options.scale ?? defaultScale(options.estimator)) === 'batch' ? (options.groupsPerBatch ?? 1) : 1;

  return (source) =>
    new Observable<AdvantagedSample>((subscriber) => {
      let pending: Group[] = [];

      const release = () => {
        const groups = pending;
        pending = [];
        const advantages = multiRewardAdvantages(
          groups.map((g) => g.samples.map((s) => s.rewards)),
          options,
        );
        for (let g = 0; g < groups.length; g++) {
          const samples = groups[g]!.samples;
          const totals = samples.map((s) => s.reward);
          const stats = validStats(totals);
          groupsCounter.inc();
          samplesCounter.inc(samples.length);
          nullRewards.inc(samples.length - stats.n);
          if (stats.std === 0) zeroStd.inc();
          for (let i = 0; i < samples.length; i++) {
            subscriber.next({ ...samples[i]!, advantage: advantages[g]![i]! });
          }
        }
      };

      const subscription = source.subscribe({
        next: (group) => {
          pending.push(group);
          if (pending.length >= hold) release();
        },
        error: (err) => subscriber.error(err),
        complete: () => {
          if (pending.length > 0) release();
          subscriber.complete();
        },
      });
      return () => {
        subscription.unsubscribe();
        pending = [];
      };
    });
}
