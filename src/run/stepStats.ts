import type { GradientBatch, ScoredRollout } from '../../schemas/index.ts';
import { recordStepReport, versionReport, type LearnerConfig, type StepReport } from '../learner/learner.ts';
import type { Metrics } from '../metrics/metrics.ts';
import type { GroupRelativeAdvantagesOptions } from '../operators/groupRelativeAdvantages.ts';
import { seededUniform } from '../random.ts';
import type { TaskExample } from '../tasks/task.ts';
import type { Topology } from '../topology/topology.ts';
import { validStats } from '../grpo/advantages.ts';

/**
 * Deterministic data order shared by the in-memory and the Kafka runs: epoch e is the train set shuffled by
 * (seed, e), so a position (cursor) names one prompt, and a resumed run continues the same sequence. The
 * shuffle of the current epoch is kept, not redone for every prompt.
 */
export class DataOrder {
  private epoch = -1;
  private order: number[] = [];

  constructor(
    private readonly train: readonly TaskExample[],
    private readonly seed: number,
  ) {
    if (train.length === 0) throw new Error('data order: the train set is empty');
  }

  at(cursor: number): { example: TaskExample; epoch: number } {
    const epoch = Math.floor(cursor / this.train.length);
    if (epoch !== this.epoch) {
      const rand = seededUniform(this.seed * 1000 + epoch);
      const order = this.train.map((_, i) => i);
      for (let i = order.length - 1; i > 0; i--) {
        const j = Math.floor(rand() * (i + 1));
        [order[i], order[j]] = [order[j]!, order[i]!];
      }
      this.epoch = epoch;
      this.order = order;
    }
    return { example: this.train[this.order[cursor % this.train.length]!]!, epoch };
  }
}

/** What the samples trained on in one step looked like (names as TRL logs them). */
export interface RolloutStats {
  rewardMean: number;
  /** TRL's reward_std: the mean over groups of each group's sample std (groups of two or more). */
  rewardStd: number;
  /** Mean of each reward function by name, over the samples where it applied (not null). */
  rewardsByName: Record<string, number>;
  /**
   * Sample std of each reward function by name over those samples (TRL's rewards/<name>/std: over the
   * step's samples, not per group); only for functions that scored two or more.
   */
  rewardStdsByName: Record<string, number>;
  /** Share of groups whose total rewards all agree (no learning signal: zero advantages). */
  fracRewardZeroStd: number;
  accuracy: number;
  formatRate: number;
  lengthMean: number;
  lengthMin: number;
  lengthMax: number;
  /** Share of completions cut at the token limit (finish reason `length`). */
  clippedRatio: number;
  /**
   * Lengths of the completions that ended by themselves (EOS or a stop string, not cut at the limit):
   * TRL's completions/*_terminated_length. Null when every completion was cut.
   */
  terminatedLength: { mean: number; min: number; max: number } | null;
  /**
   * Probability mass top-k/top-p cut away before each draw, mean per completion token (the size of the
   * train/inference mismatch truncation makes); null when no sample measured it.
   */
  truncatedMass: number | null;
  tokensPerSecond: number;
  samplesPerSecond: number;
}

/** Count, sum, least and most of some completion lengths. */
class Lengths {
  n = 0;
  sum = 0;
  private min = Infinity;
  private max = 0;

  add(length: number): void {
    this.n++;
    this.sum += length;
    this.min = Math.min(this.min, length);
    this.max = Math.max(this.max, length);
  }

  /** Mean, least and most; null when none was added. */
  stats(): { mean: number; min: number; max: number } | null {
    return this.n > 0 ? { mean: this.sum / this.n, min: this.min, max: this.max } : null;
  }
}

/**
 * Sums over the scored samples since the last policy version, for the version's rollout statistics. Throughput
 * is generated tokens over generation seconds where the generator reports them (`generated`), otherwise
 * completion tokens received per wall-clock second (a learner fed over Kafka).
 */
export class RolloutWindow {
  private n = 0;
  // Per reward function, its sum and count where it scored (not null).
  private byName = new Map<string, { sum: number; sumSq: number; n: number }>();
  // Per group: its samples' total rewards (null where a reward failed or none applied).
  private groups = new Map<string, (number | null)[]>();
  private lengths = new Lengths();
  private clipped = 0;
  // The completions that ended by themselves (not cut at the token limit).
  private terminated = new Lengths();
  private truncated = 0;
  private truncatedTokens = 0;
  private tokens = 0;
  private seconds = 0;
  private started = performance.now();

  add(s: ScoredRollout): void {
    this.n++;
    for (const [name, value] of Object.entries(s.rewards)) {
      if (value === null) continue;
      const sums = this.byName.get(name) ?? { sum: 0, sumSq: 0, n: 0 };
      sums.sum += value;
      sums.sumSq += value * value;
      sums.n++;
      this.byName.set(name, sums);
    }
    const group = this.groups.get(s.groupId);
    if (group) group.push(s.reward);
    else this.groups.set(s.groupId, [s.reward]);
    const length = s.completionTokenIds.length;
    this.lengths.add(length);
    if (s.finishReason === 'length') this.clipped++;
    else this.terminated.add(length);
    if (s.truncatedMass !== undefined) {
      this.truncated += s.truncatedMass * length;
      this.truncatedTokens += length;
    }
  }

  generated(tokens: number, seconds: number): void {
    this.tokens += tokens;
    this.seconds += seconds;
  }

  /** The statistics so far; starts a new window. */
  take(): RolloutStats {
    const n = Math.max(this.n, 1);
    const all = this.lengths.stats();
    const wallSeconds = Math.max((performance.now() - this.started) / 1000, 1e-9);
    const tokensPerSecond = this.seconds > 0 ? this.tokens / this.seconds : this.lengths.sum / wallSeconds;
    const groups = [...this.groups.values()].map((totals) => validStats(totals));
    const spread = groups.filter((g) => g.n >= 2);
    const valid = groups.reduce((n, g) => n + g.n, 0);
    // Means over the samples where each reward scored (a failed one is null, not a 0).
    const rewardsByName = Object.fromEntries([...this.byName].map(([name, { sum, n }]) => [name, sum / n]));
    const rewardStdsByName = Object.fromEntries(
      [...this.byName]
        .filter(([, { n }]) => n >= 2)
        .map(([name, { sum, sumSq, n }]) => [
          name,
          Math.sqrt(Math.max(0, (sumSq - (sum * sum) / n) / (n - 1))),
        ]),
    );
    const stats: RolloutStats = {
      rewardMean: valid > 0 ? groups.reduce((sum, g) => sum + g.mean * g.n, 0) / valid : 0,
      rewardStd: spread.length > 0 ? spread.reduce((sum, g) => sum + g.std, 0) / spread.length : 0,
      rewardsByName,
      rewardStdsByName,
      fracRewardZeroStd: groups.length > 0 ? groups.filter((g) => g.std === 0).length / groups.length : 0,
      accuracy: rewardsByName['accuracy'] ?? rewardsByName['countdown'] ?? 0,
      formatRate: rewardsByName['format'] ?? 0,
      lengthMean: all?.mean ?? 0,
      lengthMin: all?.min ?? 0,
      lengthMax: all?.max ?? 0,
      clippedRatio: this.clipped / n,
      terminatedLength: this.terminated.stats(),
      truncatedMass: this.truncatedTokens > 0 ? this.truncated / this.truncatedTokens : null,
      tokensPerSecond,
      samplesPerSecond: this.seconds > 0 ? this.n / this.seconds : this.n / wallSeconds,
    };
    this.n = this.clipped = this.tokens = this.seconds = this.truncated = this.truncatedTokens = 0;
    this.lengths = new Lengths();
    this.terminated = new Lengths();
    this.byName = new Map();
    this.groups = new Map();
    this.started = performance.now();
    return stats;
  }
}

/** Mean versions behind `version` of the samples of a batch. */
export function meanStaleness(batch: GradientBatch, version: number): number {
  return batch.samples.reduce((a, s) => a + (version - s.policyVersion), 0) / batch.samples.length;
}

/**
 * Publishes one policy version: rollout statistics, staleness and the learner's reports (averaged over the
 * version's optimiser steps), then flushes.
 */
export function recordStep(
  metrics: Metrics,
  step: number,
  rollout: RolloutStats,
  staleness: number,
  reports: readonly StepReport[],
): void {
  metrics.record('reward/mean', rollout.rewardMean, step);
  metrics.record('reward/std', rollout.rewardStd, step);
  for (const [name, mean] of Object.entries(rollout.rewardsByName)) {
    metrics.record(`rewards/${name}/mean`, mean, step);
  }
  for (const [name, std] of Object.entries(rollout.rewardStdsByName)) {
    metrics.record(`rewards/${name}/std`, std, step);
  }
  metrics.record('frac_reward_zero_std', rollout.fracRewardZeroStd, step);
  metrics.record('reward/accuracy', rollout.accuracy, step);
  metrics.record('reward/format', rollout.formatRate, step);
  metrics.record('completions/mean_length', rollout.lengthMean, step);
  metrics.record('completions/min_length', rollout.lengthMin, step);
  metrics.record('completions/max_length', rollout.lengthMax, step);
  metrics.record('completions/clipped_ratio', rollout.clippedRatio, step);
  if (rollout.terminatedLength) {
    metrics.record('completions/mean_terminated_length', rollout.terminatedLength.mean, step);
    metrics.record('completions/min_terminated_length', rollout.terminatedLength.min, step);
    metrics.record('completions/max_terminated_length', rollout.terminatedLength.max, step);
  }
  if (rollout.truncatedMass !== null) metrics.record('rollout/truncated_mass', rollout.truncatedMass, step);
  metrics.record('rollout/tokens_per_second', rollout.tokensPerSecond, step);
  metrics.record('rollout/samples_per_second', rollout.samplesPerSecond, step);
  metrics.record('staleness/mean', staleness, step);
  if (reports.length > 0) recordStepReport(metrics, versionReport(reports));
  metrics.flush(step);
}

/** The advantage settings a topology implies (the in-memory run and the Kafka learner alike). */
export function advantageOptions(topology: Topology): GroupRelativeAdvantagesOptions {
  const g = topology.grpo;
  return {
    estimator: g.estimator,
    ...(g.scaleRewards ? { scale: g.scaleRewards } : {}),
    // With batch scaling, the std of the groups of one GradientBatch.
    groupsPerBatch: g.promptsPerStep,
  };
}

/** The learner worker's settings a topology implies (the in-memory run and the Kafka learner alike). */
export function learnerConfig(topology: Topology): LearnerConfig {
  const g = topology.grpo;
  return {
    loss: {
      lossAggregation: g.lossAggregation,
      importanceSampling: g.importanceSampling,
      epsLow: g.epsLow,
      epsHigh: g.epsHigh,
      beta: g.beta,
      klEstimator: g.klEstimator,
      ...(g.dualClip !== undefined ? { dualClip: g.dualClip } : {}),
      // dr_grpo's constant: the completion budget, not the width of a batch's prompt + completion.
      maxCompletionLength: topology.sampling.maxNewTokens,
    },
    learningRate: { peak: g.learningRate, warmupSteps: g.warmupSteps },
    maxGradNorm: g.maxGradNorm,
    epochs: g.epochs,
    minibatches: g.minibatches,
    maskTruncated: g.maskTruncated,
    temperature: topology.sampling.temperature,
    referenceRefreshEvery: g.referenceRefreshEvery,
  };
}

/** The learner's backend as runs report it: with its kernel threads when there are more than one. */
export function withThreads({ backend, threads }: { backend: string; threads: number }): string {
  return threads > 1 ? `${backend}, ${threads} kernel threads` : backend;
}
