import * as tf from '@tensorflow/tfjs';
import type { GPT } from '../policy/gpt.ts';

/**
 * Loss and gradients by the model's parameter names: tf.variableGrads keys gradients by tfjs
 * variable name, the optimiser and checkpoints know parameters by model name.
 */
export function lossAndGradients(
  model: GPT,
  loss: () => tf.Scalar,
): { value: tf.Scalar; grads: tf.NamedTensorMap } {
  const { value, grads: byVariable } = tf.variableGrads(loss, model.variables());
  const grads: tf.NamedTensorMap = {};
  for (const [name, variable] of model.params) {
    const g = byVariable[variable.name];
    if (g) grads[name] = g;
  }
  return { value, grads };
}

/**
 * The global norm of the gradients and the factor that brings it down to `max` (1 where it is
 * below, or max is 0: no clipping).
 */
export function globalNormScale(grads: tf.NamedTensorMap, max: number): { norm: number; scale: number } {
  const normTensor = tf.tidy(() => tf.sqrt(tf.addN(Object.values(grads).map((g) => tf.sum(tf.mul(g, g))))));
  const norm = normTensor.dataSync()[0]!;
  normTensor.dispose();
  return { norm, scale: max > 0 && norm > max ? max / (norm + 1e-6) : 1 };
}
