import * as tf from '@tensorflow/tfjs';
import type { BatchSample, GradientBatch } from '../../schemas/index.ts';
import { DEFAULT_GRPO_LOSS, grpoLoss, type GrpoLossConfig } from '../grpo/loss.ts';
import { detachedMetrics, type Metrics } from '../metrics/metrics.ts';
import { GPT, pickTokenLogProbs, tokenEntropy } from '../policy/gpt.ts';
import { AdamW, type AdamWConfig } from './adamw.ts';
import { globalNormScale, lossAndGradients } from './gradients.ts';
import { learningRateAt, type LearningRateSchedule } from './schedule.ts';

export interface LearnerConfig {
  loss: GrpoLossConfig;
  learningRate: LearningRateSchedule;
  optimizer?: AdamWConfig;
  /** Clip the global gradient norm to this (0: no clipping). */
  maxGradNorm?: number;
  /** Optimisation passes over each batch (PPO epochs, "mu"). */
  epochs?: number;
  /** Each pass splits the batch into this many minibatches, one optimiser step each. */
  minibatches?: number;
  /** The temperature the samples were drawn at: log-probs are log softmax(logits / temperature). */
  temperature?: number;
  /** Refresh the frozen reference policy from the current one every this many optimiser steps (R1: 400). */
  referenceRefreshEvery?: number;
  /** DAPO overlong filtering: truncated completions (finish reason "length") get no loss. */
  maskTruncated?: boolean;
}

/** What one optimiser step did: the names users of TRL / verl look for. */
export interface StepReport {
  /** The policy version the step's batch produces (one per GradientBatch, however many steps it takes). */
  version: number;
  /** Optimiser steps taken so far, this one included (what the learning-rate schedule counts). */
  optimiserStep: number;
  loss: number;
  pgLoss: number;
  /**
   * The KL term and the policy's KL to the reference (mean per token); absent without a reference
   * policy (beta 0: none is kept, and no KL is computed or logged, as TRL logs none).
   */
  klLoss?: number;
  kl?: number;
  clipRatioLow: number;
  clipRatioHigh: number;
  clipRatioRegion: number;
  /**
   * The lowest low and the highest high clip share among the optimiser steps a report covers (TRL's
   * clip_ratio/low_min and high_max, taken there across processes): one step's own shares for one step.
   */
  clipRatioLowMin: number;
  clipRatioHighMax: number;
  /**
   * Share of tokens the dual clip bounded (negative advantages past c; verl's pg_clipfrac_lower); absent
   * without a dual clip.
   */
  clipRatioDual?: number;
  ratioMean: number;
  entropy: number;
  gradNorm: number;
  learningRate: number;
  /** Tokens through the forward and backward pass (prompt + completion) of this step. */
  tokens: number;
  seconds: number;
}

interface PreparedBatch {
  ids: tf.Tensor2D;
  /** 1 on completion tokens, [B, T]. */
  mask: tf.Tensor2D;
  /** Behaviour log-probs aligned with the next-token outputs, [B, T-1]. */
  old: tf.Tensor2D;
  advantages: tf.Tensor1D;
  tokens: number;
}

/**
 * The GRPO learner: for each GradientBatch, `epochs` passes of `minibatches` optimiser steps on the
 * GRPO loss (src/grpo/loss.ts) against the behaviour log-probs the samples carry, with AdamW,
 * global-norm clipping and a learning-rate schedule. Each step is reported on the metrics stream.
 *
 * The policy version counts the batches trained: a batch's `epochs x minibatches` optimiser steps make
 * one new version, the weights the generators are sent after it (as verl's global step, and AReaL's
 * version). Bounded staleness, `--steps`, and checkpoint and eval schedules count versions; the
 * learning-rate schedule and the reference refresh count optimiser steps (the optimiser's own count,
 * saved with its state). With one pass of one minibatch (the default) the two are the same.
 */
export class Learner {
  readonly model: GPT;
  private readonly reference: GPT | undefined;
  readonly optimizer: AdamW;
  private readonly config: Required<Omit<LearnerConfig, 'optimizer'>>;
  private readonly metrics: Metrics;
  private batches: number;

  constructor(
    model: GPT,
    config: LearnerConfig,
    options: { metrics?: Metrics; initialVersion?: number } = {},
  ) {
    this.model = model;
    this.config = {
      loss: { ...DEFAULT_GRPO_LOSS, ...config.loss },
      learningRate: config.learningRate,
      maxGradNorm: config.maxGradNorm ?? 1,
      epochs: config.epochs ?? 1,
      minibatches: config.minibatches ?? 1,
      temperature: config.temperature ?? 1,
      referenceRefreshEvery: config.referenceRefreshEvery ?? 0,
      maskTruncated: config.maskTruncated ?? false,
    };
    this.optimizer = new AdamW(model.params, config.optimizer);
    this.metrics = options.metrics ?? detachedMetrics();
    this.batches = options.initialVersion ?? 0;
    if (this.config.loss.beta > 0) {
      this.reference = new GPT(model.config);
      this.reference.assignWeights(model.params);
    }
  }

  /** Batches trained so far: the current policy version. */
  get version(): number {
    return this.batches;
  }

  /** Train on one batch (one new policy version); returns a report per optimiser step. */
  train(batch: GradientBatch): StepReport[] {
    const reports: StepReport[] = [];
    const { epochs, minibatches } = this.config;
    const parts = split(batch.samples, Math.min(minibatches, batch.samples.length));
    const prepared: PreparedBatch[] = [];
    const version = this.batches + 1;
    const temperature = this.config.temperature;
    const refs: (tf.Tensor2D | undefined)[] = [];
    try {
      // Inside the try: a minibatch that fails to prepare frees the ones prepared before it.
      for (const samples of parts) prepared.push(this.prepare(samples));
      // The reference's log-probs, once per batch (as TRL and verl take them), not once per pass.
      for (const p of prepared)
        refs.push(
          this.reference
            ? tf.tidy(() => this.reference!.sequenceLogProbs(p.ids, p.mask, temperature))
            : undefined,
        );
      for (let epoch = 0; epoch < epochs; epoch++) {
        prepared.forEach((part, i) => reports.push(this.optimiserStep(part, refs[i], version)));
      }
    } finally {
      for (const p of prepared) tf.dispose([p.ids, p.mask, p.old, p.advantages]);
      tf.dispose(refs.filter((r) => r !== undefined));
    }
    this.batches = version;
    recordStepReport(this.metrics, versionReport(reports));
    return reports;
  }

  /**
   * Calls `use` with what a checkpoint keeps beside the weights to resume exactly: the optimiser's state
   * (AdamW.state) and, with a KL term, the frozen reference's weights (`reference/<name>`).
   */
  withState<T>(use: (state: ReadonlyMap<string, tf.Tensor>) => Promise<T>): Promise<T> {
    return this.optimizer.withState((optimizer) => {
      const state = new Map(optimizer);
      if (this.reference) for (const [name, p] of this.reference.params) state.set(`reference/${name}`, p);
      return use(state);
    });
  }

  /**
   * Restores what `withState` gave. A checkpoint without reference weights (one saved without a KL
   * term, or before they were kept) leaves the reference as the constructor made it: the weights loaded.
   */
  loadState(state: ReadonlyMap<string, tf.Tensor>): void {
    const optimizer = new Map<string, tf.Tensor>();
    const reference = new Map<string, tf.Tensor>();
    for (const [name, t] of state) {
      if (name.startsWith('reference/')) reference.set(name.slice('reference/'.length), t);
      else optimizer.set(name, t);
    }
    this.optimizer.load(optimizer);
    if (this.reference && reference.size > 0) this.reference.assignWeights(reference);
  }

  /** Per-token log-probs of the current policy on these samples, [B, T-1], for checks and evaluation. */
  logProbs(samples: readonly BatchSample[]): number[][] {
    const p = this.prepare(samples);
    try {
      return tf
        .tidy(() => this.model.sequenceLogProbs(p.ids, p.mask, this.config.temperature))
        .arraySync() as number[][];
    } finally {
      tf.dispose([p.ids, p.mask, p.old, p.advantages]);
    }
  }

  dispose(): void {
    this.optimizer.dispose();
    this.reference?.dispose();
  }

  private optimiserStep(batch: PreparedBatch, ref: tf.Tensor2D | undefined, version: number): StepReport {
    const started = performance.now();
    const temperature = this.config.temperature;
    const nextMask = tf.tidy(() =>
      tf.slice(batch.mask, [0, 1], [batch.mask.shape[0], batch.mask.shape[1] - 1]),
    );

    let diagnostics: tf.Scalar[] = [];
    const { value, grads } = lossAndGradients(this.model, () => {
      const all = this.model.nextTokenLogProbs(batch.ids, temperature);
      const logProbs = pickTokenLogProbs(all, batch.ids, batch.mask);
      const r = grpoLoss(
        { logProbs, oldLogProbs: batch.old, refLogProbs: ref, advantages: batch.advantages, mask: nextMask },
        // dapo's token mean is over this step's tokens: a minibatch here is an optimiser step of its own,
        // not a gradient-accumulation slice of one (as verl's token-mean is per mini-batch).
        this.config.loss,
      );
      const entropy = tf.div(tf.sum(tokenEntropy(all, batch.mask)), tf.maximum(tf.sum(nextMask), 1));
      diagnostics = [
        r.pgLoss,
        r.klLoss,
        r.kl,
        r.clipRatioLow,
        r.clipRatioHigh,
        r.clipRatioRegion,
        r.dualClipRatio,
        r.ratioMean,
        entropy as tf.Scalar,
      ].map((t) => tf.keep(t));
      return r.loss;
    });

    // Clipping's factor goes into the optimiser's pass over each gradient.
    const { norm: gradNorm, scale } = globalNormScale(grads, this.config.maxGradNorm);
    const learningRate = learningRateAt(this.config.learningRate, this.optimizer.steps);
    this.optimizer.apply(grads, learningRate, scale);
    const optimiserStep = this.optimizer.steps;
    if (
      this.reference &&
      this.config.referenceRefreshEvery > 0 &&
      optimiserStep % this.config.referenceRefreshEvery === 0
    ) {
      this.reference.assignWeights(this.model.params);
    }

    const [pgLoss, klLoss, kl, low, high, region, dual, ratioMean, entropy] = diagnostics.map(
      (d) => d.dataSync()[0]!,
    );
    const loss = value.dataSync()[0]!;
    tf.dispose([value, ...Object.values(grads), ...diagnostics, nextMask]);
    const seconds = (performance.now() - started) / 1000;
    const report: StepReport = {
      version,
      optimiserStep,
      loss,
      pgLoss: pgLoss!,
      ...(this.reference ? { klLoss: klLoss!, kl: kl! } : {}),
      clipRatioLow: low!,
      clipRatioHigh: high!,
      clipRatioRegion: region!,
      clipRatioLowMin: low!,
      clipRatioHighMax: high!,
      ...(this.config.loss.dualClip !== undefined ? { clipRatioDual: dual! } : {}),
      ratioMean: ratioMean!,
      entropy: entropy!,
      gradNorm,
      learningRate,
      tokens: batch.tokens,
      seconds,
    };
    return report;
  }

  /** Right-pads prompt + completion to the longest row; masks completion tokens. */
  private prepare(samples: readonly BatchSample[]): PreparedBatch {
    const B = samples.length;
    const T = Math.max(...samples.map((s) => s.promptTokenIds.length + s.completionTokenIds.length));
    if (T > this.model.config.contextLength) {
      throw new Error(
        `Learner: a sample has ${T} tokens, more than the model's context of ${this.model.config.contextLength}`,
      );
    }
    const ids = new Int32Array(B * T);
    const mask = new Float32Array(B * T);
    const old = new Float32Array(B * (T - 1));
    let tokens = 0;
    samples.forEach((s, b) => {
      const P = s.promptTokenIds.length;
      const C = s.completionTokenIds.length;
      if (s.behaviourLogProbs.length !== C) {
        throw new Error(
          `Learner: rollout ${s.rolloutId} has ${C} tokens but ${s.behaviourLogProbs.length} log-probs`,
        );
      }
      // The first completion token is scored by the logits after the prompt's last: there must be one.
      if (P === 0) throw new Error(`Learner: rollout ${s.rolloutId} has an empty prompt`);
      ids.set(s.promptTokenIds, b * T);
      ids.set(s.completionTokenIds, b * T + P);
      tokens += P + C;
      const trained = !(this.config.maskTruncated && s.finishReason === 'length');
      // Masked rows keep old = 0: their ratio is computed before the mask, and exp(-old) of a very
      // unlikely token (old < -88.7) would overflow to Infinity, which the mask's 0 turns into NaN.
      if (trained) {
        for (let j = 0; j < C; j++) {
          mask[b * T + P + j] = 1;
          // Completion token j sits at position P + j; its log-prob is next-token output P + j - 1.
          old[b * (T - 1) + P + j - 1] = s.behaviourLogProbs[j]!;
        }
      }
    });
    return {
      ids: tf.tensor2d(ids, [B, T], 'int32'),
      mask: tf.tensor2d(mask, [B, T]),
      old: tf.tensor2d(old, [B, T - 1]),
      advantages: tf.tensor1d(samples.map((s) => s.advantage)),
      tokens,
    };
  }
}

/**
 * One report for a policy version's optimiser steps: the losses, ratios, entropy and norms averaged over
 * them (as TRL averages over accumulation steps), the extreme clip shares, the last version, step and learning rate, and tokens/s
 * over all of them.
 */
export function versionReport(reports: readonly StepReport[]): StepReport {
  if (reports.length === 0) throw new Error('versionReport: no optimiser steps');
  const last = reports[reports.length - 1]!;
  const sum = (key: keyof StepReport) => reports.reduce((total, r) => total + (r[key] ?? 0), 0);
  const mean = (key: keyof StepReport) => sum(key) / reports.length;
  return {
    version: last.version,
    optimiserStep: last.optimiserStep,
    loss: mean('loss'),
    pgLoss: mean('pgLoss'),
    ...(last.kl !== undefined ? { klLoss: mean('klLoss'), kl: mean('kl') } : {}),
    clipRatioLow: mean('clipRatioLow'),
    clipRatioHigh: mean('clipRatioHigh'),
    clipRatioRegion: mean('clipRatioRegion'),
    clipRatioLowMin: Math.min(...reports.map((r) => r.clipRatioLowMin)),
    clipRatioHighMax: Math.max(...reports.map((r) => r.clipRatioHighMax)),
    ...(last.clipRatioDual !== undefined ? { clipRatioDual: mean('clipRatioDual') } : {}),
    ratioMean: mean('ratioMean'),
    entropy: mean('entropy'),
    gradNorm: mean('gradNorm'),
    learningRate: last.learningRate,
    tokens: sum('tokens'),
    seconds: sum('seconds'),
  };
}

/** Publish a step report under the names users of TRL / verl look for. */
export function recordStepReport(m: Metrics, r: StepReport): void {
  const step = r.version;
  m.record('train/loss', r.loss, step);
  m.record('train/pg_loss', r.pgLoss, step);
  if (r.kl !== undefined) {
    m.record('train/kl_loss', r.klLoss!, step);
    m.record('train/kl', r.kl, step);
  }
  m.record('train/clip_ratio/low_mean', r.clipRatioLow, step);
  m.record('train/clip_ratio/high_mean', r.clipRatioHigh, step);
  m.record('train/clip_ratio/region_mean', r.clipRatioRegion, step);
  m.record('train/clip_ratio/low_min', r.clipRatioLowMin, step);
  m.record('train/clip_ratio/high_max', r.clipRatioHighMax, step);
  if (r.clipRatioDual !== undefined) m.record('train/clip_ratio/dual_mean', r.clipRatioDual, step);
  m.record('train/ratio_mean', r.ratioMean, step);
  m.record('train/entropy', r.entropy, step);
  m.record('train/grad_norm', r.gradNorm, step);
  m.record('train/learning_rate', r.learningRate, step);
  m.record('train/tokens_per_second', r.tokens / r.seconds, step);
}

/**
 * `parts` runs of items, their sizes apart by one at most (a short batch, after stale samples left it,
 * still makes `parts` optimiser steps of even size: not 3, 3, 3 and 1 for 10 items in 4).
 */
function split<T>(items: readonly T[], parts: number): T[][] {
  const n = Math.min(parts, items.length);
  const out: T[][] = [];
  let start = 0;
  for (let i = 0; i < n; i++) {
    const size = Math.floor(items.length / n) + (i < items.length % n ? 1 : 0);
    out.push(items.slice(start, start + size));
    start += size;
  }
  return out;
}
