import { seededUniform } from '../random.ts';

/** How one checkpoint's per-question pass@1 compares with another's on the same questions. */
export interface PairedComparison {
  questions: number;
  /** Mean over questions of (candidate - baseline): the difference in pass@1. */
  difference: number;
  /** The central 95% of the bootstrap distribution of that mean. */
  low: number;
  high: number;
  /** Share of the resampled means at or below 0: how often the resamples show no gain. */
  atOrBelowZero: number;
  /** Questions whose pass@1 rose, fell, or stayed the same. */
  better: number;
  worse: number;
  same: number;
  resamples: number;
}

/**
 * A paired bootstrap over questions: resamples the questions with replacement and takes the mean of the
 * per-question differences each time. Pairing removes what the two checkpoints share (how hard each
 * question is), so a gain shows up with fewer samples than two independent intervals need.
 */
export function pairedBootstrap(
  baseline: readonly number[],
  candidate: readonly number[],
  options: { resamples?: number; seed?: number } = {},
): PairedComparison {
  const resamples = options.resamples ?? 10_000;
  if (baseline.length !== candidate.length)
    throw new RangeError(
      `pairedBootstrap: the two evaluations cover ${baseline.length} and ${candidate.length} questions; ` +
        'compare them on the same questions',
    );
  if (baseline.length === 0) throw new RangeError('pairedBootstrap: no questions');
  if (!(Number.isInteger(resamples) && resamples > 0))
    throw new RangeError(`pairedBootstrap: resamples must be an integer > 0, got ${resamples}`);
  const diffs = candidate.map((c, i) => c - baseline[i]!);
  const n = diffs.length;
  const uniform = seededUniform(options.seed ?? 0);
  const means = new Float64Array(resamples);
  for (let r = 0; r < resamples; r++) {
    let sum = 0;
    for (let i = 0; i < n; i++) sum += diffs[Math.floor(uniform() * n)]!;
    means[r] = sum / n;
  }
  means.sort();
  const at = (q: number) => means[Math.min(resamples - 1, Math.floor(q * resamples))]!;
  return {
    questions: n,
    difference: diffs.reduce((a, d) => a + d, 0) / n,
    low: at(0.025),
    high: at(0.975),
    atOrBelowZero: means.filter((m) => m <= 0).length / resamples,
    better: diffs.filter((d) => d > 0).length,
    worse: diffs.filter((d) => d < 0).length,
    same: diffs.filter((d) => d === 0).length,
    resamples,
  };
}
