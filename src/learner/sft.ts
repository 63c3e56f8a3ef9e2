import * as tf from '@tensorflow/tfjs';
import { detachedMetrics, type Metrics } from '../metrics/metrics.ts';
import type { GPT } from '../policy/gpt.ts';
import { AdamW, type AdamWConfig } from './adamw.ts';
import { globalNormScale, lossAndGradients } from './gradients.ts';
import { learningRateAt, type LearningRateSchedule } from './schedule.ts';

/** One training sequence and the first token the loss covers (the completion, for SFT on prompts). */
export interface SftExample {
  tokens: readonly number[];
  /** Tokens before this index are context only (the prompt); 0 or 1 trains on the whole sequence. */
  lossStart: number;
  /**
   * Instead of lossStart: 1 for each token the loss covers (packed rows hold several prompts and
   * completions). The first token is never a target.
   */
  lossMask?: readonly number[];
}

export interface SftConfig {
  learningRate: LearningRateSchedule;
  optimizer?: AdamWConfig;
  maxGradNorm?: number;
}

/**
 * Next-token cross-entropy training (pretraining and supervised fine-tuning), masked to the tokens
 * from `lossStart` on: loss = -mean over those tokens of log p(token | prefix).
 */
export class SftTrainer {
  readonly optimizer: AdamW;
  private steps = 0;
  private readonly metrics: Metrics;
  private readonly prefix: string;

  constructor(
    readonly model: GPT,
    private readonly config: SftConfig,
    options: { metrics?: Metrics; metricPrefix?: string } = {},
  ) {
    this.optimizer = new AdamW(model.params, config.optimizer);
    this.metrics = options.metrics ?? detachedMetrics();
    this.prefix = options.metricPrefix ?? 'sft';
  }

  get step(): number {
    return this.steps;
  }

  /**
   * Goes on from a saved optimiser state (`optimizer.state()`): the AdamW moments and step count, so the
   * learning-rate schedule also goes on from that step.
   */
  resume(state: ReadonlyMap<string, tf.Tensor>): void {
    this.optimizer.load(state);
    this.steps = this.optimizer.steps;
  }

  /** One optimiser step on a batch; returns the mean loss per trained token. */
  train(batch: readonly SftExample[]): number {
    const { ids, mask } = this.pack(batch);
    const lr = learningRateAt(this.config.learningRate, this.steps);
    const { value, grads } = lossAndGradients(this.model, () =>
      tf.tidy(() =>
        tf.div(tf.neg(tf.sum(this.model.sequenceLogProbs(ids, mask))), tf.maximum(tf.sum(mask), 1)),
      ),
    );
    const { norm, scale } = globalNormScale(grads, this.config.maxGradNorm ?? 1);
    this.optimizer.apply(grads, lr, scale);
    this.steps++;
    const loss = value.dataSync()[0]!;
    tf.dispose([value, ids, mask, ...Object.values(grads)]);
    this.metrics.record(`${this.prefix}/loss`, loss, this.steps);
    this.metrics.record(`${this.prefix}/grad_norm`, norm, this.steps);
    this.metrics.record(`${this.prefix}/learning_rate`, lr, this.steps);
    return loss;
  }

  /** Mean loss per trained token without training (held-out evaluation). */
  evaluate(batch: readonly SftExample[]): number {
    const { ids, mask } = this.pack(batch);
    const loss = tf.tidy(() =>
      tf.div(tf.neg(tf.sum(this.model.sequenceLogProbs(ids, mask))), tf.maximum(tf.sum(mask), 1)),
    );
    const value = loss.dataSync()[0]!;
    tf.dispose([loss, ids, mask]);
    return value;
  }

  dispose(): void {
    this.optimizer.dispose();
  }

  /** Right-pads to the longest example; the mask marks the tokens the loss covers. */
  private pack(batch: readonly SftExample[]): { ids: tf.Tensor2D; mask: tf.Tensor2D } {
    const T = Math.max(...batch.map((e) => e.tokens.length));
    if (T > this.model.config.contextLength) {
      throw new Error(
        `SftTrainer: an example has ${T} tokens, more than the context of ${this.model.config.contextLength}`,
      );
    }
    const ids = new Int32Array(batch.length * T);
    const mask = new Float32Array(batch.length * T);
    batch.forEach((e, b) => {
      ids.set(e.tokens, b * T);
      if (e.lossMask) {
        for (let t = 1; t < e.tokens.length; t++) mask[b * T + t] = e.lossMask[t] ? 1 : 0;
      } else for (let t = Math.max(1, e.lossStart); t < e.tokens.length; t++) mask[b * T + t] = 1;
    });
    return { ids: tf.tensor2d(ids, [batch.length, T], 'int32'), mask: tf.tensor2d(mask, [batch.length, T]) };
  }
}
