import type { GradientBatch, ScoredRollout } from '../../schemas/index.ts';
import { recordStepReport, type LearnerConfig, type StepReport } from '../learner/learner.ts';
import type { Metrics } from '../metrics/metrics.ts';
import { seededUniform } from '../random.ts';
import type { TaskExample } from '../tasks/task.ts';
import type { Topology } from '../topology/topology.ts';

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

/** What the samples trained on in one step looked like. */
export interface RolloutStats {
  rewardMean: number;
  accuracy: number;
  formatRate: number;
  lengthMean: number;
  tokensPerSecond: number;
}

/**
 * Sums over the scored samples since the last optimiser step, for the step's rollout statistics. Throughput
 * is generated tokens over generation seconds where the generator reports them (`generated`), otherwise
 * completion tokens received per wall-clock second (a learner fed over Kafka).
 */
export class RolloutWindow {
  private n = 0;
  private reward = 0;
  private accuracy = 0;
  private format = 0;
  private length = 0;
  private tokens = 0;
  private seconds = 0;
  private started = performance.now();

  add(s: ScoredRollout): void {
    this.n++;
    this.reward += s.reward ?? 0;
    this.accuracy += s.rewards['accuracy'] ?? s.rewards['countdown'] ?? 0;
    this.format += s.rewards['format'] ?? 0;
    this.length += s.completionTokenIds.length;
  }

  generated(tokens: number, seconds: number): void {
    this.tokens += tokens;
    this.seconds += seconds;
  }

  /** The statistics so far; starts a new window. */
  take(): RolloutStats {
    const n = Math.max(this.n, 1);
    const tokensPerSecond =
      this.seconds > 0
        ? this.tokens / this.seconds
        : this.length / Math.max((performance.now() - this.started) / 1000, 1e-9);
    const stats = {
      rewardMean: this.reward / n,
      accuracy: this.accuracy / n,
      formatRate: this.format / n,
      lengthMean: this.length / n,
      tokensPerSecond,
    };
    this.n = this.reward = this.accuracy = this.format = this.length = this.tokens = this.seconds = 0;
    this.started = performance.now();
    return stats;
  }
}

/** Mean versions behind `version` of the samples of a batch. */
export function meanStaleness(batch: GradientBatch, version: number): number {
  return batch.samples.reduce((a, s) => a + (version - s.policyVersion), 0) / batch.samples.length;
}

/** Publishes one optimiser step: rollout statistics, staleness and the learner's reports, then flushes. */
export function recordStep(
  metrics: Metrics,
  step: number,
  rollout: RolloutStats,
  staleness: number,
  reports: readonly StepReport[],
): void {
  metrics.record('reward/mean', rollout.rewardMean, step);
  metrics.record('reward/accuracy', rollout.accuracy, step);
  metrics.record('reward/format', rollout.formatRate, step);
  metrics.record('completion_length/mean', rollout.lengthMean, step);
  metrics.record('rollout/tokens_per_second', rollout.tokensPerSecond, step);
  metrics.record('staleness/mean', staleness, step);
  for (const r of reports) recordStepReport(metrics, r);
  metrics.flush(step);
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
    },
    learningRate: { peak: g.learningRate, warmupSteps: g.warmupSteps },
    maxGradNorm: g.maxGradNorm,
    epochs: g.epochs,
    temperature: topology.sampling.temperature,
    referenceRefreshEvery: g.referenceRefreshEvery,
  };
}
