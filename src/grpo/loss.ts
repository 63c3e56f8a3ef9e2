import * as tf from '@tensorflow/tfjs';

/**
 * The GRPO family's policy loss (DeepSeekMath's GRPO and the variants TRL and verl offer), on tfjs ops so it runs and differentiates on any
 * backend. Per token t of completion i, with A_i the sample's advantage:
 *
 *   rho_it = exp(logp_theta - logp_old)                          (token level)
 *          = exp(mean_t (logp_theta - logp_old))                  (sequence level: GSPO)
 *   l_it   = -min(rho_it * A_i, clip(rho_it, 1 - eps_low, 1 + eps_high) * A_i)
 *   l_it   = min(l_it, -c * A_i)        where A_i < 0             (dual clip, if c is set)
 *   l_it  += beta * KL_it,  KL_it = k1: logp_theta - logp_ref
 *                                   k2: (logp_theta - logp_ref)^2 / 2
 *                                   k3: exp(logp_ref - logp_theta) - (logp_ref - logp_theta) - 1
 *
 * and the token losses are aggregated by `lossAggregation`:
 *   grpo     mean over sequences of each sequence's token mean
 *   bnpo     sum over all tokens / active tokens in this batch
 *   dr_grpo  sum over all tokens / (sequences * maxCompletionLength)
 *   dapo     sum over all tokens / active tokens of the whole global batch (`activeTokens`)
 */

export type LossAggregation = 'grpo' | 'bnpo' | 'dr_grpo' | 'dapo';
export type ImportanceSamplingLevel = 'token' | 'sequence';
export type KlEstimator = 'k1' | 'k2' | 'k3';

export interface GrpoLossConfig {
  lossAggregation: LossAggregation;
  importanceSampling: ImportanceSamplingLevel;
  epsLow: number;
  epsHigh: number;
  /** Dual-clip constant c (> 1, typically 3) bounding the loss of negative-advantage tokens. */
  dualClip?: number;
  /** KL coefficient; 0 disables the KL term (and the need for reference log-probs). */
  beta: number;
  klEstimator: KlEstimator;
  /**
   * dr_grpo's constant normaliser: the completion budget (runs set the topology's
   * sampling.maxNewTokens). Without it, the width T of this batch's tensors, which changes from batch
   * to batch (and the learner's include the prompt).
   */
  maxCompletionLength?: number;
  /** dapo's normaliser: active tokens in the global batch (all minibatches); defaults to this batch's. */
  activeTokens?: number;
}

/**
 * DeepSeekMath's GRPO loss (each sequence's token mean, averaged) with TRL's clip range and beta 0, and
 * R1-Zero's k3 estimator for when beta is set. (TRL's default loss_type has since become 'dapo'.)
 */
export const DEFAULT_GRPO_LOSS: GrpoLossConfig = {
  lossAggregation: 'grpo',
  importanceSampling: 'token',
  epsLow: 0.2,
  epsHigh: 0.2,
  beta: 0,
  klEstimator: 'k3',
};

export interface GrpoLossInputs {
  /** log pi_theta of each completion token, [B, T]: the only input that carries gradient. */
  logProbs: tf.Tensor2D;
  /** log-probs of the policy that sampled the tokens (or the old policy of this update), [B, T]. */
  oldLogProbs: tf.Tensor2D;
  /** log-probs under the frozen reference policy, [B, T]; required when beta > 0. */
  refLogProbs?: tf.Tensor2D;
  /** One advantage per sequence, [B]. */
  advantages: tf.Tensor1D;
  /** 1 on completion tokens, 0 on padding, [B, T]. */
  mask: tf.Tensor2D;
}

export interface GrpoLossResult {
  /** What to differentiate: pgLoss + klLoss. */
  loss: tf.Scalar;
  /** The clipped surrogate part (≈ 0 in value with one pass per batch; its gradient is not). */
  pgLoss: tf.Scalar;
  /** beta * aggregated KL. */
  klLoss: tf.Scalar;
  /** Mean KL per completion token (0 without reference log-probs). */
  kl: tf.Scalar;
  /** Share of tokens clipped at 1 - eps_low with A < 0, at 1 + eps_high with A > 0, and either. */
  clipRatioLow: tf.Scalar;
  clipRatioHigh: tf.Scalar;
  clipRatioRegion: tf.Scalar;
  /** Share of tokens bounded by the dual clip. */
  dualClipRatio: tf.Scalar;
  /** Mean importance ratio over completion tokens. */
  ratioMean: tf.Scalar;
}

export type GrpoLossValues = { [K in keyof GrpoLossResult]: number };

function validate(config: GrpoLossConfig, inputs: GrpoLossInputs): void {
  const [b, t] = inputs.logProbs.shape;
  for (const name of ['oldLogProbs', 'refLogProbs', 'mask'] as const) {
    const x = inputs[name];
    if (x && (x.shape[0] !== b || x.shape[1] !== t)) {
      throw new Error(`grpoLoss: ${name} has shape [${x.shape}] but logProbs has [${b},${t}]`);
    }
  }
  if (inputs.advantages.shape[0] !== b) {
    throw new Error(`grpoLoss: advantages has ${inputs.advantages.shape[0]} entries for ${b} sequences`);
  }
  if (config.beta > 0 && !inputs.refLogProbs) {
    throw new Error('grpoLoss: beta > 0 needs refLogProbs (the reference policy), or set beta to 0');
  }
  if (config.dualClip !== undefined && !(config.dualClip > 1)) {
    throw new Error(`grpoLoss: dualClip must be > 1, got ${config.dualClip}`);
  }
  if (!(config.epsLow >= 0 && config.epsHigh >= 0))
    throw new Error(
      `grpoLoss: epsLow and epsHigh must be >= 0, got epsLow ${config.epsLow}, epsHigh ${config.epsHigh}`,
    );
}

/** sum(x * mask) / max(sum(mask), 1) */
function maskedMean(x: tf.Tensor, mask: tf.Tensor2D): tf.Scalar {
  return tf.div<tf.Scalar>(tf.sum(tf.mul(x, mask)), tf.maximum(tf.sum(mask), 1));
}

function klPerToken(estimator: KlEstimator, logProbs: tf.Tensor2D, refLogProbs: tf.Tensor2D): tf.Tensor2D {
  const delta: tf.Tensor2D = tf.sub(refLogProbs, logProbs); // log pi_ref - log pi_theta
  switch (estimator) {
    case 'k1':
      return tf.neg(delta);
    case 'k2':
      return tf.mul(tf.mul(delta, delta), 0.5);
    case 'k3':
      return tf.sub(tf.sub(tf.exp(delta), delta), 1);
  }
}

function aggregate(perToken: tf.Tensor2D, mask: tf.Tensor2D, config: GrpoLossConfig): tf.Scalar {
  const [b, t] = perToken.shape;
  const masked = tf.mul(perToken, mask);
  switch (config.lossAggregation) {
    case 'grpo':
      return tf.mean(tf.div(tf.sum(masked, 1), tf.maximum(tf.sum(mask, 1), 1)));
    case 'bnpo':
      return tf.div(tf.sum(masked), tf.maximum(tf.sum(mask), 1));
    case 'dr_grpo':
      return tf.div(tf.sum(masked), b * (config.maxCompletionLength ?? t));
    case 'dapo':
      return config.activeTokens !== undefined
        ? tf.div(tf.sum(masked), Math.max(config.activeTokens, 1))
        : tf.div(tf.sum(masked), tf.maximum(tf.sum(mask), 1));
  }
}

/** The loss and its diagnostics as tensors; call inside tf.variableGrads / tf.tidy. */
export function grpoLoss(inputs: GrpoLossInputs, config: GrpoLossConfig = DEFAULT_GRPO_LOSS): GrpoLossResult {
  validate(config, inputs);
  const { logProbs, oldLogProbs, mask } = inputs;
  const advantages = tf.expandDims(inputs.advantages, 1) as tf.Tensor2D; // [B, 1]

  const logRatio: tf.Tensor2D = tf.sub(logProbs, oldLogProbs);
  // GSPO: one ratio per sequence, the geometric mean of its token ratios; broadcast over tokens.
  const ratio: tf.Tensor2D =
    config.importanceSampling === 'token'
      ? tf.exp(logRatio)
      : tf.exp(
          tf.div<tf.Tensor2D>(tf.sum(tf.mul(logRatio, mask), 1, true), tf.maximum(tf.sum(mask, 1, true), 1)),
        );
  const clipped = tf.clipByValue(ratio, 1 - config.epsLow, 1 + config.epsHigh);
  let pgPerToken = tf.neg(tf.minimum(tf.mul(ratio, advantages), tf.mul(clipped, advantages))) as tf.Tensor2D;
  const negative = tf.less(advantages, 0);
  let dualClipped: tf.Tensor = tf.zerosLike(pgPerToken);
  if (config.dualClip !== undefined) {
    const bound = tf.mul(advantages, -config.dualClip);
    dualClipped = tf.logicalAnd(negative, tf.greater(pgPerToken, bound));
    pgPerToken = tf.where(negative, tf.minimum(pgPerToken, bound), pgPerToken) as tf.Tensor2D;
  }
  // Broadcast the sequence-level ratio to tokens for the diagnostics.
  const tokenRatio = tf.mul(ratio, tf.onesLike(mask));
  const low = tf.logicalAnd(tf.less(tokenRatio, 1 - config.epsLow), negative);
  const high = tf.logicalAnd(tf.greater(tokenRatio, 1 + config.epsHigh), tf.greater(advantages, 0));

  const kl = inputs.refLogProbs
    ? klPerToken(config.klEstimator, logProbs, inputs.refLogProbs)
    : tf.zerosLike(logProbs);
  const pgLoss = aggregate(pgPerToken, mask, config);
  const klLoss: tf.Scalar = config.beta > 0 ? tf.mul(aggregate(kl, mask, config), config.beta) : tf.scalar(0);

  return {
    loss: tf.add(pgLoss, klLoss) as tf.Scalar,
    pgLoss,
    klLoss,
    kl: maskedMean(kl, mask),
    clipRatioLow: maskedMean(tf.cast(low, 'float32'), mask),
    clipRatioHigh: maskedMean(tf.cast(high, 'float32'), mask),
    clipRatioRegion: maskedMean(tf.cast(tf.logicalOr(low, high), 'float32'), mask),
    dualClipRatio: maskedMean(tf.cast(dualClipped, 'float32'), mask),
    ratioMean: maskedMean(tokenRatio, mask),
  };
}

/** The loss and diagnostics as numbers (no gradient), for reports and tests. */
export function grpoLossValues(
  inputs: GrpoLossInputs,
  config: GrpoLossConfig = DEFAULT_GRPO_LOSS,
): GrpoLossValues {
  const result = tf.tidy(() => grpoLoss(inputs, config) as unknown as Record<string, tf.Scalar>);
  const values = Object.fromEntries(Object.entries(result).map(([k, t]) => [k, t.dataSync()[0]!]));
  tf.dispose(Object.values(result));
  return values as GrpoLossValues;
}
