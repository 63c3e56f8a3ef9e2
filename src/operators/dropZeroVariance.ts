import { filter, type OperatorFunction } from 'rxjs';
import type { Group } from '../../schemas/index.ts';
import { isValid } from '../grpo/advantages.ts';
import { detachedMetrics, type Metrics } from '../metrics/metrics.ts';

export interface DropZeroVarianceOptions {
  /** Rewards closer than this count as equal. */
  tolerance?: number;
  /** Called with each dropped group. */
  onDrop?: (group: Group) => void;
  /**
   * As groupRelativeAdvantages' option of the same name: with `normalize_then_sum` each named reward is
   * normalised on its own, so a group carries signal when any one of them varies, even if the totals agree.
   */
  aggregation?: 'sum_then_normalize' | 'normalize_then_sum';
  metrics?: Metrics;
}

/**
 * Dynamic sampling (DAPO, verl filter_groups): drops groups whose valid total rewards all agree, since
 * their advantages are all zero and they carry no gradient, only cost.
 *
 * ```
 * source:  --A--B--C--|     (B: every sample scored 1)
 * output:  --A-----C--|
 * ```
 *
 * Null (and non-finite) rewards are ignored; a group with fewer than two valid rewards is dropped too.
 * Counters: drops{reason=zero_variance} (groups), drops.samples{reason=zero_variance}.
 */
export function dropZeroVariance(options: DropZeroVarianceOptions = {}): OperatorFunction<Group, Group> {
  const tolerance = options.tolerance ?? 1e-9;
  const metrics = options.metrics ?? detachedMetrics();
  const dropped = metrics.counter('drops', { reason: 'zero_variance' });
  const droppedSamples = metrics.counter('drops.samples', { reason: 'zero_variance' });
  const varies = (values: (number | null | undefined)[]): boolean => {
    let min = Infinity;
    let max = -Infinity;
    for (const v of values) {
      if (!isValid(v)) continue;
      if (v < min) min = v;
      if (v > max) max = v;
    }
    return max - min > tolerance;
  };
  return filter((group) => {
    const scored = group.samples.filter((s) => isValid(s.reward));
    const names = new Set(scored.flatMap((s) => Object.keys(s.rewards)));
    const signal =
      options.aggregation === 'normalize_then_sum'
        ? [...names].some((name) => varies(scored.map((s) => s.rewards[name])))
        : varies(scored.map((s) => s.reward));
    if (signal) return true;
    dropped.inc();
    droppedSamples.inc(group.samples.length);
    options.onDrop?.(group);
    return false;
  });
}
