import { filter, type OperatorFunction } from 'rxjs';
import type { Group } from '../../schemas/index.ts';
import { detachedMetrics, type Metrics } from '../metrics/metrics.ts';

export interface DropZeroVarianceOptions {
  /** Rewards closer than this count as equal. */
  tolerance?: number;
  /** Called with each dropped group. */
  onDrop?: (group: Group) => void;
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
 * Null rewards are ignored; a group with fewer than two valid rewards is dropped too.
 * Counters: drops{reason=zero_variance} (groups), drops.samples{reason=zero_variance}.
 */
export function dropZeroVariance(options: DropZeroVarianceOptions = {}): OperatorFunction<Group, Group> {
  const tolerance = options.tolerance ?? 1e-9;
  const metrics = options.metrics ?? detachedMetrics();
  const dropped = metrics.counter('drops', { reason: 'zero_variance' });
  const droppedSamples = metrics.counter('drops.samples', { reason: 'zero_variance' });
  return filter((group) => {
    let min = Infinity;
    let max = -Infinity;
    for (const s of group.samples) {
      if (s.reward === null || Number.isNaN(s.reward)) continue;
      if (s.reward < min) min = s.reward;
      if (s.reward > max) max = s.reward;
    }
    if (max - min > tolerance) return true;
    dropped.inc();
    droppedSamples.inc(group.samples.length);
    options.onDrop?.(group);
    return false;
  });
}
