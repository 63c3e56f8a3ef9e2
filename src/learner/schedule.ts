export interface LearningRateSchedule {
  peak: number;
  /** Linear warmup from 0 over this many optimiser steps. */
  warmupSteps?: number;
  /** After warmup: constant, or decay to `min` by `totalSteps` (linear or cosine). */
  decay?: 'constant' | 'linear' | 'cosine';
  totalSteps?: number;
  min?: number;
}

/** Learning rate at optimiser step `step` (0-based). */
export function learningRateAt(s: LearningRateSchedule, step: number): number {
  const warmup = s.warmupSteps ?? 0;
  if (step < warmup) return (s.peak * (step + 1)) / warmup;
  const decay = s.decay ?? 'constant';
  if (decay === 'constant' || s.totalSteps === undefined) return s.peak;
  const min = s.min ?? 0;
  const progress = Math.min(1, (step - warmup) / Math.max(1, s.totalSteps - warmup));
  const factor = decay === 'linear' ? 1 - progress : 0.5 * (1 + Math.cos(Math.PI * progress));
  return min + (s.peak - min) * factor;
}
